"""Long sequences in bounded memory: clips read on demand and gone through a segment at a time.

A clip's frames are read from its YUV file when asked (``YUVFrames``); encoding, decode PSNR and prediction
hold one segment of them. Segments change nothing but memory: the YUV codecs' bitstreams are byte for byte
those of the whole clip held in memory, and so are the decoded frames, PSNRs, predictions and scores. NeRV's
``segment: N`` trains one network per N frames and packs their streams in one container.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vcmbench.cards import Card
from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.ffmpeg import VVenCCodec, X265Codec
from vcmbench.codecs.nerv import NeRVCodec
from vcmbench.codecs.nerv_pipeline import decode_clip, parse_header, unpack_segments
from vcmbench.datasets.sfu_hw import SfuHwDataset
from vcmbench.errors import CodecError
from vcmbench.executors.base import DecodeJob, predict_batch, run_decode
from vcmbench.media.clip import Clip, FrameSource, YUVFrames, clip_to_yuv_bytes, psnr_clip, read_yuv_clip
from vcmbench.media.yuv import YUVFormat
from vcmbench.run.runner import RunConfig, run

W, H, FPS, TOTAL = 64, 48, 30, 10
FMT8 = YUVFormat(matrix="bt601", full_range=False, bit_depth=8)


def moving_rgb(frames: int = TOTAL, height: int = H, width: int = W) -> np.ndarray:
    """A textured pattern moving a few pixels per frame, with a noisy box (inter coding has work to do)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        out[t, ..., 0] = (x * 3 + 4 * t) % 256
        out[t, ..., 1] = (y * 5 + 2 * t) % 256
        out[t, ..., 2] = ((x + y) * 2) % 256
        out[t, 8 + t : 20 + t, 10 + 2 * t : 26 + 2 * t] = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return out


@pytest.fixture()
def sfu_root(tmp_path: Path) -> Path:
    """One SFU-HW-layout sequence (ClassC/Clip_64x48_30Hz_8bit_P420.yuv, 10 frames), a label per frame."""
    folder = tmp_path / "ClassC"
    ann = folder / "Annotations" / "Clip"
    ann.mkdir(parents=True)
    (folder / f"Clip_{W}x{H}_{FPS}Hz_8bit_P420.yuv").write_bytes(clip_to_yuv_bytes(moving_rgb(), FMT8))
    for f in range(TOTAL):
        (ann / f"Clip_{W}x{H}_{FPS}_seq_{f:03d}.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    return tmp_path


def dataset(root: Path, segment: int | None) -> SfuHwDataset:
    ds = SfuHwDataset(root=root, segment=segment)
    ds.name = "sfu_hw"
    return ds


class CountingFrames(FrameSource):
    """A frame source that records how many frames each read asks for."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames
        self.num_frames, self.height, self.width = frames.shape[:3]
        self.reads: list[int] = []

    def read(self, start: int, stop: int) -> np.ndarray:
        self.reads.append(stop - start)
        return self.frames[start:stop].copy()


class MeanTask:
    """A frame-level task (the mean of each frame's channels), recording the batch sizes it is given."""

    name = "mean"
    batch_size = 3

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images: list[np.ndarray]) -> list[list[float]]:
        self.calls.append(len(images))
        return [im.reshape(-1, 3).mean(axis=0).tolist() for im in images]


# ---- clips read on demand ------------------------------------------------------------------------------
def test_lazy_clip_reads_the_file_a_segment_at_a_time(sfu_root: Path) -> None:
    ds = dataset(sfu_root, segment=4)
    (item,) = ds.all_items()
    clip = ds.load_image(item)
    assert clip.lazy and clip.shape == (TOTAL, H, W, 3) and clip.segment == 4
    whole = read_yuv_clip(item.path, W, H, FMT8)
    assert [s for s, _ in clip.segments()] == [0, 4, 8]
    assert np.array_equal(np.concatenate([f for _, f in clip.segments()]), whole)
    assert np.array_equal(clip.read(5, 7), whole[5:7]) and np.array_equal(clip.read(3, 6), whole[3:6])
    assert clip.lazy  # reading parts keeps the frames on demand
    assert np.array_equal(clip.frames, whole) and not clip.lazy  # asking for every frame holds them
    part = YUVFrames(item.path, W, H, FMT8, start=6, frames=3)
    assert np.array_equal(part.read(0, 3), whole[6:9])
    with pytest.raises(ValueError, match=r"frames 8\.\.11 asked, the file has 10"):
        YUVFrames(item.path, W, H, FMT8, start=8, frames=4)
    with pytest.raises(ValueError, match="segment must be a number of frames"):
        dataset(sfu_root, segment=-2)


def test_consumers_hold_one_segment() -> None:
    """Prediction and PSNR read a counting source in segments; a whole clip (segment None) in one read."""
    frames = moving_rgb()
    for segment, most in ((4, 4), (None, TOTAL)):
        src = CountingFrames(frames)
        task = MeanTask()
        (preds,), (err,), _ = predict_batch(task, [Clip(src, FPS, segment=segment)])
        assert err is None and max(src.reads) == most and sum(src.reads) == TOTAL
        assert preds == [f.reshape(-1, 3).mean(axis=0).tolist() for f in frames]
        assert task.calls == [3, 3, 3, 1]  # the task's batches are those of the whole clip, whatever the segment
        a, b = CountingFrames(frames), CountingFrames(np.ascontiguousarray(frames[:, ::-1]))
        value = psnr_clip(Clip(a, FPS, segment=segment), Clip(b, FPS, segment=segment))
        assert value == pytest.approx(psnr_clip(Clip(frames, FPS), Clip(frames[:, ::-1], FPS)), abs=1e-12)
        assert max(a.reads) == max(b.reads) == most



def test_the_first_frame_of_a_decoded_clip_reads_one_segment() -> None:
    """`vcmbench decode` shows a clip's first frame: one segment is read, not the sequence."""
    from vcmbench.report.decoded import first_frame

    frames = moving_rgb()
    src = CountingFrames(frames)
    clip = Clip(src, FPS, segment=4)
    assert np.array_equal(first_frame(clip), frames[0]) and src.reads == [4] and clip.lazy

def test_a_decoded_clip_travels_with_its_frames_read() -> None:
    """A clip reading a temporary file (a decoder's output) is pickled with its frames; one reading the
    dataset's file is pickled as it is (path and range)."""
    x265 = X265Codec(preset="ultrafast", video_config="ld")
    frames = moving_rgb(6)
    dec = x265.decode(x265.encode(Clip(frames, FPS), 32))
    assert isinstance(dec, Clip) and dec.lazy
    tmp_file = dec.frame_source.path  # type: ignore[union-attr]
    assert tmp_file.is_file()
    copy = pickle.loads(pickle.dumps(dec))
    assert not copy.lazy and np.array_equal(copy.frames, dec.read(0, 6))
    del dec
    assert not tmp_file.exists()  # the decoder's folder goes with the clip


# ---- bitstreams, frames, predictions: the same as the whole clip's ---------------------------------------
@pytest.mark.parametrize("codec", [X265Codec(preset="ultrafast", intra_period=4),
                                   VVenCCodec(preset="faster", intra_period=16)], ids=["x265", "vvenc"])  # fmt: skip
def test_segmented_clip_codes_to_the_same_bytes(sfu_root: Path, codec) -> None:  # type: ignore[no-untyped-def]
    ds_seg, ds_whole = dataset(sfu_root, 3), dataset(sfu_root, None)
    (item,) = ds_seg.all_items()
    seg, whole = ds_seg.load_image(item), ds_whole.load_image(item)
    a, b = codec.encode(seg, 32), codec.encode(whole, 32)
    assert a.data == b.data and a.meta == b.meta and a.frames == TOTAL
    assert seg.lazy  # YUV pass-through never read the RGB frames
    # an RGB clip (no YUV source): its YUV input file is written a segment at a time, the same bytes
    rgb = Clip(whole.frames, FPS)
    lazy_rgb = Clip(CountingFrames(whole.frames), FPS, segment=4)
    c, d = codec.encode(rgb, 32), codec.encode(lazy_rgb, 32)
    assert c.data == d.data and max(lazy_rgb.frame_source.reads) == 4  # type: ignore[union-attr]
    assert c.data != a.data  # the RGB round trip is not the file's samples
    dec = codec.decode(a)
    assert isinstance(dec, Clip) and dec.lazy and dec.shape == whole.shape
    dec.segment = 3
    assert np.array_equal(np.concatenate([f for _, f in dec.segments()]), codec.decode(b).frames)


def test_decode_job_stats_and_predictions_equal_the_whole_clip(sfu_root: Path) -> None:
    x265 = X265Codec(preset="ultrafast", intra_period=4)
    codec_card = Card("codec", "x265", "x265", "1", {"preset": "ultrafast", "intra_period": 4})
    out = {}
    for segment in (3, 0):
        ds_card = Card("dataset", f"sfu_seg{segment}", "sfu_hw", "1", {"root": str(sfu_root), "segment": segment})
        ds = dataset(sfu_root, segment)
        (item,) = ds.all_items()
        bs = x265.encode(ds.load_image(item), 32)
        dec = run_decode(DecodeJob("k", ds_card, item, codec_card, Bitstream(bs.data, W, H, TOTAL, bs.meta),
                                   "e", want_stats=True))  # fmt: skip
        assert dec.image.segment == (segment or None)
        (preds,), (err,), _ = predict_batch(MeanTask(), [dec.image])
        assert err is None
        out[segment] = (bs.data, dec.psnr, preds)
    assert out[3][0] == out[0][0]
    assert out[3][1] == out[0][1] and 20 < out[3][1] < 60  # the decode PSNR against the source
    assert out[3][2] == out[0][2] and len(out[3][2]) == TOTAL


def test_run_scores_equal_with_and_without_segments(tmp_path: Path) -> None:
    """The synth clips through the runner in segments of 5 frames and whole: same bytes, PSNR and scores."""
    tables = {}
    for segment in (5, 0):
        cfg = RunConfig(codecs=["x265"], tasks=["synth_det"], datasets=["synth_clips"], qualities={"x265": [32]},
                        out=str(tmp_path / f"o{segment}"), progress=False,
                        overrides={"x265": {"preset": "ultrafast", "intra_period": 8},
                                   "synth_clips": {"num_frames": 12, "segment": segment}})  # fmt: skip
        report = run(cfg)
        assert report.ok, report.failures
        items = pd.read_csv(report.run_dir / "items.csv")
        tables[segment] = (sorted((r["codec"], r["metric"], r["value"]) for r in report.rows),
                           items.sort_values(["codec", "item_id"]).reset_index(drop=True))  # fmt: skip
    assert tables[5][0] == tables[0][0] and any(m == "map50" and v > 0 for _, m, v in tables[5][0])
    cols = [c for c in ("codec", "item_id", "nbytes", "psnr") if c in tables[5][1].columns]
    assert {"nbytes", "psnr"} <= set(cols)
    pd.testing.assert_frame_equal(tables[5][1][cols], tables[0][1][cols])


# ---- NeRV in segments ---------------------------------------------------------------------------------------
TINY = {"size": "S", "width": 0.125, "prune": 0.4, "bits": 8}
FAST = {"epochs": 3, "finetune_epochs": 1, "device": "cpu", "threads": 1}


def test_nerv_segments_round_trip() -> None:
    frames = moving_rgb(7, 36, 48)
    whole = NeRVCodec([TINY], **FAST)
    seg = NeRVCodec([TINY], **FAST, segment=4)
    assert "segment" not in whole.identity_fields() and whole.identity() != seg.identity()
    bs = seg.encode(Clip(frames, 25.0), 1)
    streams = unpack_segments(bs.data)
    assert streams is not None and [parse_header(s).frames for s in streams] == [4, 3]
    assert bs.meta["segments"] == [4, 3] and bs.frames == 7
    assert len(bs.data) > sum(len(s) for s in streams)  # the rate counts every segment's bytes (and the container)
    dec = seg.decode(bs)
    assert dec.shape == (7, 36, 48, 3) and dec.fps == 25.0 and dec.lazy
    expect = np.concatenate([decode_clip(s).frames for s in streams])
    assert np.array_equal(np.concatenate([f for _, f in dec.segments()]), expect)
    assert np.array_equal(dec.read(3, 5), expect[3:5])  # across the segments' boundary
    assert abs(psnr_clip(Clip(frames, 25.0), dec) - bs.meta["psnr"]) < 1e-3
    one = whole.encode(Clip(frames, 25.0), 1)
    assert unpack_segments(one.data) is None and whole.decode(one).num_frames == 7
    assert bs.meta["parameters"] == 2 * one.meta["parameters"]  # two networks of the same architecture
    with pytest.raises(CodecError, match="segment must be a number of frames"):
        NeRVCodec([TINY], **FAST, segment=-1)
    bad = bytearray(bs.data)
    bad[-6] ^= 0xFF
    with pytest.raises(CodecError, match="CRC-32"):
        seg.decode(Bitstream(bytes(bad), 48, 36, 7, {}))
