"""VTM adapter: binary lookup, command lines, YUV files; a real run when VCMBENCH_VTM_DIR is set.

VTM is not packaged anywhere, so CI has no VTM. Besides the real-binary test,
the adapter is driven end to end through *fake VTM binaries* (named as such):
small scripts that accept VTM's command-line syntax, check the YUV file they get
has exactly the size the arguments announce, and encode/decode with VVenC and
ffmpeg's VVC decoder instead.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from vcmbench.codecs.ffmpeg import CTC_INTRA_QP_OFFSET, default_ffmpeg, slice_qps
from vcmbench.codecs.vtm import VTMCodec
from vcmbench.errors import BinaryNotFoundError, CodecError
from vcmbench.media.clip import Clip

FAKE_ENCODER = r'''#!{python}
"""FAKE VTM EncoderApp for tests: VTM's argument syntax, VVenC underneath."""
import json, os, subprocess, sys
args = sys.argv[1:]
open(os.environ["FAKE_VTM_LOG"], "a").write(json.dumps(["enc"] + args) + "\n")
def opt(name):
    return args[args.index(name) + 1]
kv = dict(a.split("=", 1) for a in args if a.startswith("--"))
w, h, q = int(opt("-wdt")), int(opt("-hgt")), int(opt("-q"))
assert os.path.isfile(opt("-c")), "cfg missing"
size = os.path.getsize(opt("-i"))
expect = (w * h + 2 * (w // 2) * (h // 2)) * 2
if size != expect or kv["--InputBitDepth"] != "10" or kv["--InputChromaFormat"] != "420":
    print(f"ERROR: input {{size}} bytes, expected {{expect}}", file=sys.stderr); sys.exit(1)
if q == 63:
    print("ERROR: fake VTM refuses QP 63 (simulated crash)", file=sys.stderr); sys.exit(134)
r = subprocess.run(["{ffmpeg}", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "yuv420p10le",
    "-s", f"{{w}}x{{h}}", "-r", "1", "-i", opt("-i"), "-c:v", "libvvenc", "-preset", "faster", "-qp", str(q),
    "-qpa", "0", "-threads", "1", "-f", "vvc", opt("-b")])
sys.exit(r.returncode)
'''

FAKE_DECODER = r'''#!{python}
"""FAKE VTM DecoderApp for tests: ffmpeg's VVC decoder underneath."""
import json, os, subprocess, sys
args = sys.argv[1:]
open(os.environ["FAKE_VTM_LOG"], "a").write(json.dumps(["dec"] + args) + "\n")
i = args.index
r = subprocess.run(["{ffmpeg}", "-loglevel", "error", "-y", "-i", args[i("-b") + 1], "-f", "rawvideo",
    "-pix_fmt", "yuv420p10le", args[i("-o") + 1]])
sys.exit(r.returncode)
'''


@pytest.fixture()
def fake_vtm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A VTM-like tree (bin/ + cfg/) holding the fake binaries."""
    root = tmp_path / "VVCSoftware_VTM"
    (root / "bin").mkdir(parents=True)
    (root / "cfg").mkdir()
    (root / "cfg" / "encoder_intra_vtm.cfg").write_text("# fake cfg\nIntraPeriod : 1\n")
    for name, text in (("EncoderAppStatic", FAKE_ENCODER), ("DecoderAppStatic", FAKE_DECODER)):
        p = root / "bin" / name
        p.write_text(text.format(python=sys.executable, ffmpeg=default_ffmpeg()))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FAKE_VTM_LOG", str(tmp_path / "calls.jsonl"))
    return root


def _calls(root: Path) -> list[list[str]]:
    return [json.loads(x) for x in (root.parent / "calls.jsonl").read_text().splitlines()]


def _image(h: int = 45, w: int = 67) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 5 % 256, (x + y) * 2 % 256], -1).astype(np.uint8)


def test_missing_binaries_are_named_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCMBENCH_VTM_DIR", raising=False)
    codec = VTMCodec()
    codec.name = "vtm"
    with pytest.raises(BinaryNotFoundError) as exc:
        codec.identity()
    assert "EncoderAppStatic or EncoderApp" in str(exc.value) and "VCMBENCH_VTM_DIR" in str(exc.value)
    codec = VTMCodec(vtm_dir=str(tmp_path))
    codec.name = "vtm"
    with pytest.raises(BinaryNotFoundError, match=f"not found under {tmp_path}"):
        codec.encode(_image(), 32)
    codec = VTMCodec(encoder=str(tmp_path / "EncoderApp"))
    codec.name = "vtm"
    with pytest.raises(BinaryNotFoundError, match="EncoderApp not found or not executable"):
        _ = codec.encoder


def test_binaries_found_through_env_and_command_lines(fake_vtm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCMBENCH_VTM_DIR", str(fake_vtm))
    codec = VTMCodec()
    codec.name = "vtm"
    assert codec.encoder == fake_vtm / "bin" / "EncoderAppStatic"
    assert codec.cfg == fake_vtm / "cfg" / "encoder_intra_vtm.cfg"
    cmd = codec.encode_command(Path("in.yuv"), Path("out.vvc"), 68, 46, 37)
    assert cmd[:3] == [str(codec.encoder), "-c", str(codec.cfg)]
    for flag in ("-wdt", "-hgt", "-q", "-b", "-fr", "-f"):
        assert flag in cmd
    assert cmd[cmd.index("-wdt") + 1] == "68" and cmd[cmd.index("-hgt") + 1] == "46"
    assert cmd[cmd.index("-q") + 1] == "37" and cmd[cmd.index("-f") + 1] == "1"
    assert "--InputBitDepth=10" in cmd and "--InputChromaFormat=420" in cmd
    # VTM 8-12 default to ConformanceWindowMode 0 and refuse sizes that are not multiples of 8
    assert "--ConformanceWindowMode=1" in cmd and cmd.index("--ConformanceWindowMode=1") < len(cmd) - len(codec.extra_args)
    assert codec.decode_command(Path("b.vvc"), Path("d.yuv"), 68, 46) == [
        str(codec.decoder), "-b", "b.vvc", "-o", "d.yuv", "-d", "10"
    ]


def test_round_trip_through_vtm_command_lines_with_fake_binaries(fake_vtm: Path) -> None:
    codec = VTMCodec(vtm_dir=str(fake_vtm))
    codec.name = "vtm"
    img = _image()  # 67x45: odd, padded to 68x46 for 4:2:0 and cropped back
    bs = codec.encode(img, 32)
    assert (bs.width, bs.height) == (67, 45) and len(bs.data) > 0
    dec = codec.decode(bs)
    assert dec.shape == img.shape
    assert np.mean(np.abs(dec.astype(int) - img)) < 12
    enc_call, dec_call = _calls(fake_vtm)
    assert enc_call[0] == "enc" and enc_call[enc_call.index("-wdt") + 1] == "68"
    assert dec_call[0] == "dec"


def test_crashing_vtm_is_reported_with_its_stderr(fake_vtm: Path) -> None:
    codec = VTMCodec(vtm_dir=str(fake_vtm))
    codec.name = "vtm"
    with pytest.raises(CodecError) as exc:
        codec.encode(_image(), 63)
    assert "exited with code 134" in str(exc.value) and "simulated crash" in str(exc.value)


def test_version_changes_when_the_binary_changes(fake_vtm: Path) -> None:
    codec = VTMCodec(vtm_dir=str(fake_vtm))
    before = codec.version()
    enc = fake_vtm / "bin" / "EncoderAppStatic"
    enc.write_text(enc.read_text() + "\n# rebuilt\n")
    assert codec.version() != before


@pytest.mark.vtm
@pytest.mark.skipif(not os.environ.get("VCMBENCH_VTM_DIR"), reason="VCMBENCH_VTM_DIR not set: no real VTM build")
def test_real_vtm_round_trip_matches_ffmpeg_vvc_decoder() -> None:
    import subprocess
    import tempfile

    codec = VTMCodec()
    codec.name = "vtm"
    img = _image(64, 96)
    lo, hi = codec.encode(img, 42), codec.encode(img, 27)
    assert 0 < len(lo.data) < len(hi.data)
    dec = codec.decode(hi)
    assert dec.shape == img.shape
    # the same bitstream decoded by ffmpeg's native VVC decoder gives the same picture
    with tempfile.TemporaryDirectory() as tmp:
        b, y = Path(tmp) / "b.vvc", Path(tmp) / "d.yuv"
        b.write_bytes(hi.data)
        subprocess.run([default_ffmpeg(), "-loglevel", "error", "-i", str(b), "-f", "rawvideo", "-pix_fmt",
                        "yuv420p10le", str(y)], check=True)  # fmt: skip
        from vcmbench.media.yuv import yuv_bytes_to_rgb

        assert np.array_equal(yuv_bytes_to_rgb(y.read_bytes(), 96, 64), dec)


@pytest.mark.vtm
@pytest.mark.skipif(not os.environ.get("VCMBENCH_VTM_DIR"), reason="VCMBENCH_VTM_DIR not set: no real VTM build")
def test_real_vtm_slice_qp_is_the_qp_label() -> None:
    """The slice QP read back from VTM's bitstream (ffmpeg's trace_headers): the label for images (also at a
    size that is not a multiple of 8: --ConformanceWindowMode=1) and all-intra clips, as for VVenC and x265
    (tests/test_codecs.py); random access and low delay: the intra picture at QP - 3 and QP - 1, the
    IntraQPOffset of VTM's cfgs, which vvenc and x265 follow (CTC_INTRA_QP_OFFSET)."""
    codec = VTMCodec()
    codec.name = "vtm"
    for q in (22, 37):
        assert slice_qps(codec.encode(_image(45, 67), q).data, "vvc") == [("I", q)]
    frames = np.stack([np.roll(_image(48, 64), 3 * i, axis=1) for i in range(3)])
    ai = VTMCodec(video_config="ai")
    ai.name = "vtm-ai"
    bs = ai.encode(Clip(frames, 25.0), 32)
    assert slice_qps(bs.data, "vvc") == [("I", 32)] * 3 and bs.meta["slice_qp"] == {"I": [32]}
    for config in ("ra", "ld"):
        clip_codec = VTMCodec(video_config=config)
        clip_codec.name = f"vtm-{config}"
        bs = clip_codec.encode(Clip(frames, 25.0), 32)
        qps = slice_qps(bs.data, "vvc")
        intra = 32 + CTC_INTRA_QP_OFFSET[config]
        assert len(qps) == 3 and qps[0] == ("I", intra) and bs.meta["slice_qp"]["I"] == [intra], (config, qps)
