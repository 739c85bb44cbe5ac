"""YUV pass-through: a clip of an SFU-HW-layout YUV file is coded from the file's original samples.

The bitstream vcmbench writes must equal, byte for byte, the one the encoder writes when it is called
directly on the YUV file (command lines written out here, independently of vcmbench's); the task's RGB
is the decoded YUV converted once, with BT.601 limited range (MPEG's SFU-HW evaluation).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vcmbench.codecs.ffmpeg import VVenCCodec, X265Codec, default_ffmpeg
from vcmbench.codecs.vtm import VTMCodec
from vcmbench.datasets.sfu_hw import SfuHwDataset
from vcmbench.media.clip import Clip
from vcmbench.media.yuv import CTC_RGB, YUVFormat, bytes_to_planes, yuv420_to_rgb

W, H, FPS, TOTAL = 64, 48, 30, 9
QP = 32


def yuv_samples(frames: int = TOTAL) -> bytes:
    """8-bit 4:2:0 samples that no RGB -> YUV conversion gives back (luma below 16 and above 235, noisy
    chroma), on a moving pattern so that inter coding has something to do."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:H, 0:W]
    out = []
    for t in range(frames):
        luma = ((x * 4 + y * 3 + 5 * t) % 256).astype(np.uint8)
        luma[8 + t : 24 + t, 10 + 2 * t : 30 + 2 * t] = rng.integers(0, 256, (16, 20), dtype=np.uint8)
        cb = rng.integers(40, 220, (H // 2, W // 2), dtype=np.uint8)
        cr = ((x[::2, ::2] * 7 + t) % 256).astype(np.uint8)
        out.append(luma.tobytes() + cb.tobytes() + cr.tobytes())
    return b"".join(out)


@pytest.fixture()
def sfu_root(tmp_path: Path) -> Path:
    """One SFU-HW-Objects-v1-layout sequence: ClassC/Clip_64x48_30Hz_8bit_P420.yuv with a label per frame."""
    folder = tmp_path / "ClassC"
    ann = folder / "Annotations" / "Clip"
    ann.mkdir(parents=True)
    (folder / f"Clip_{W}x{H}_{FPS}Hz_8bit_P420.yuv").write_bytes(yuv_samples())
    for f in range(TOTAL):
        (ann / f"Clip_{W}x{H}_{FPS}_seq_{f:03d}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    return tmp_path


def clip_of(root: Path, start: int = 0, frames: int | None = None) -> tuple[Clip, Path]:
    ds = SfuHwDataset(root=root, start_frame=start, num_frames=frames)
    ds.name = "sfu_hw"
    (item,) = ds.all_items()
    return ds.load_image(item), item.path


def ffmpeg_encode(tmp: Path, yuv: Path, codec_args: list[str], fmt: str, start: int, frames: int) -> bytes:
    """The encoder called directly by ffmpeg on the 8-bit file, handed to it at 10 bits (yuv420p10le)."""
    out = tmp / f"direct.{fmt}"
    select = ["-vf", f"select=gte(n\\,{start})"] if start else []
    cmd = [default_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p",
           "-s", f"{W}x{H}", "-r", str(FPS), "-i", str(yuv), *select, "-frames:v", str(frames), "-threads", "1",
           "-pix_fmt", "yuv420p10le", *codec_args, "-f", fmt, str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def decoded_yuv10(tmp: Path, data: bytes, fmt: str) -> bytes:
    src, dst = tmp / f"dec_in.{fmt}", tmp / "dec.yuv"
    src.write_bytes(data)
    subprocess.run([default_ffmpeg(), "-loglevel", "error", "-y", "-f", fmt, "-i", str(src), "-f", "rawvideo",
                    "-pix_fmt", "yuv420p10le", str(dst)], check=True, capture_output=True)  # fmt: skip
    return dst.read_bytes()


VVENC_ARGS = ["-c:v", "libvvenc", "-preset", "faster", "-qp", str(QP), "-qpa", "0", "-period", "1",
              "-vvenc-params", "GOPSize=16:IntraPeriod=32:IntraQPOffset=-3:BIM=0"]  # fmt: skip
X265_ARGS = ["-c:v", "libx265", "-preset", "medium", "-x265-params",
             f"qp={QP}:keyint=32:min-keyint=32:scenecut=0:info=0:pools=1:frame-threads=1:log-level=error"]  # fmt: skip


@pytest.mark.parametrize(("start", "frames"), [(0, TOTAL), (3, 5)])
@pytest.mark.parametrize("name", ["vvenc", "x265"])
def test_bitstream_equals_the_encoder_called_on_the_yuv_file(sfu_root: Path, tmp_path: Path, name: str,
                                                             start: int, frames: int) -> None:  # fmt: skip
    clip, yuv = clip_of(sfu_root, start, frames)
    assert clip.source is not None and (clip.source.start, clip.source.frames) == (start, frames)
    codec = VVenCCodec(preset="faster") if name == "vvenc" else X265Codec(preset="medium")
    assert codec.intra_period(FPS) == 32  # what the direct command lines say
    bs = codec.encode(clip, QP)
    fmt, args = ("vvc", VVENC_ARGS) if name == "vvenc" else ("hevc", X265_ARGS)
    direct = ffmpeg_encode(tmp_path, yuv, args, fmt, start, frames)
    assert len(bs.data) > 100 and bs.data == direct
    assert bs.meta["yuv_source"] == {"bit_depth": 8, "matrix": "bt601", "full_range": False}
    # the old path (the RGB frames converted back to YUV) codes other samples: the pass-through is what ran
    rgb_path = codec.encode(Clip(clip.frames, clip.fps), QP)
    assert rgb_path.data != bs.data


def test_task_rgb_is_the_ctc_conversion_of_the_decoded_yuv(sfu_root: Path, tmp_path: Path) -> None:
    clip, _ = clip_of(sfu_root, 1, 6)
    codec = VVenCCodec(preset="faster")
    bs = codec.encode(clip, QP)
    decoded = codec.decode(bs)
    assert isinstance(decoded, Clip) and decoded.frames.shape == (6, H, W, 3)
    yuv = decoded_yuv10(tmp_path, bs.data, "vvc")
    fmt = YUVFormat(matrix="bt601", full_range=False, bit_depth=10)
    assert (CTC_RGB.matrix, CTC_RGB.full_range) == (fmt.matrix, fmt.full_range)
    for f in range(6):
        want = yuv420_to_rgb(*bytes_to_planes(yuv, W, H, fmt, frame=f), W, H, fmt)
        np.testing.assert_array_equal(decoded.frames[f], want)
    # the codec's own format (BT.601 full range, the image path) would give other pixels
    other = yuv420_to_rgb(*bytes_to_planes(yuv, W, H, codec.fmt, frame=0), W, H, codec.fmt)
    assert not np.array_equal(decoded.frames[0], other)


def test_task_rgb_has_the_matrix_and_range_of_ffmpegs_conversion_the_ctc_runs(tmp_path: Path) -> None:
    """CompressAI-Vision converts SFU-HW YUV to RGB with ffmpeg (`-pix_fmt rgb24`, no range given: BT.601 limited
    range). vcmbench's NumPy conversion (the dataset's default) has the same matrix and range; it differs from
    swscale's integer fast path only in chroma up-sampling and rounding (about 1 level), while BT.709 or full
    range differ by several levels. Smooth content, so that chroma up-sampling matters little."""
    y, x = np.mgrid[0:H, 0:W]
    frame = (40 + x * 2 + y).astype(np.uint8).tobytes() + (100 + x[::2, ::2]).astype(np.uint8).tobytes() + (
        150 - y[::2, ::2]).astype(np.uint8).tobytes()  # fmt: skip
    folder = tmp_path / "ClassC"
    (folder / "Annotations" / "Clip").mkdir(parents=True)
    yuv = folder / f"Clip_{W}x{H}_{FPS}Hz_8bit_P420.yuv"
    yuv.write_bytes(frame * 2)
    (folder / "Annotations" / "Clip" / f"Clip_{W}x{H}_{FPS}_seq_000.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    ref = tmp_path / "ref.rgb"
    subprocess.run([default_ffmpeg(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s",
                    f"{W}x{H}", "-i", str(yuv), "-f", "rawvideo", "-pix_fmt", "rgb24", str(ref)],
                   check=True, capture_output=True)  # fmt: skip
    theirs = np.fromfile(ref, np.uint8).reshape(2, H, W, 3).astype(np.int16)

    def mean_err(**fmt: object) -> float:
        ds = SfuHwDataset(root=tmp_path, **fmt)  # type: ignore[arg-type]
        ds.name = "sfu_hw"
        return float(np.abs(ds.load_image(ds.all_items()[0]).frames.astype(np.int16) - theirs).mean())

    ours = mean_err()  # the dataset's default: CTC_RGB
    assert ours <= 1.5
    assert mean_err(matrix="bt709") > 2 * ours and mean_err(full_range=True) > 2 * ours


@pytest.mark.vtm
@pytest.mark.skipif(not os.environ.get("VCMBENCH_VTM_DIR"), reason="VCMBENCH_VTM_DIR not set: no real VTM build")
def test_vtm_bitstream_equals_encoderapp_on_the_yuv_file(sfu_root: Path, tmp_path: Path) -> None:
    clip, yuv = clip_of(sfu_root, 2, 4)
    codec = VTMCodec(video_config="ld")
    bs = codec.encode(clip, 37)
    out = tmp_path / "direct.vvc"
    subprocess.run([str(codec.encoder), "-c", str(codec.video_cfg()), "-i", str(yuv), "-wdt", str(W), "-hgt", str(H),
                    "-fr", str(FPS), "-f", "4", "-fs", "2", "--InputBitDepth=8", "--InternalBitDepth=10",
                    "--OutputBitDepth=10", "--InputChromaFormat=420", "--ConformanceWindowMode=1", "-q", "37",
                    "-b", str(out), "-o", ""], check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    assert len(bs.data) > 100 and bs.data == out.read_bytes()
    decoded = codec.decode(bs)
    yuv10 = decoded_yuv10(tmp_path, bs.data, "vvc")
    fmt = YUVFormat(matrix="bt601", full_range=False, bit_depth=10)
    np.testing.assert_array_equal(decoded.frames[3], yuv420_to_rgb(*bytes_to_planes(yuv10, W, H, fmt, frame=3),
                                                                   W, H, fmt))  # fmt: skip
