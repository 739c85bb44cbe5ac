"""Codecs write real bitstreams: rate is bytes written; failures carry the child's stderr."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.codecs.base import Bitstream, Uncompressed, run_process
from vcmbench.codecs.ffmpeg import (
    CTC_INTRA_QP_OFFSET,
    VVenCCodec,
    X265Codec,
    default_ffmpeg,
    slice_qp_summary,
    slice_qps,
    slice_qps_from_trace,
)
from vcmbench.codecs.jpeg import SUBSAMPLING, JpegCodec
from vcmbench.errors import CodecError, QualityError
from vcmbench.media.clip import Clip
from vcmbench.media.image import FD_MIN_PIXELS, save_to_bytes


def _image(h: int = 97, w: int = 131, seed: int = 1) -> np.ndarray:
    """A deterministic natural-ish test picture (odd size on purpose)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([120 + 90 * np.sin(x / 6.0), 120 + 90 * np.cos(y / 5.0), 120 + 60 * np.sin((x * y) / 300.0)], -1)
    img[20:60, 30:90] = [200, 40, 40]
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def _card_codec(name: str, **settings: object):
    card = CardSet().get("codec", name)
    return build(card.with_settings(**settings))


@pytest.mark.parametrize("name, qualities", [("jpeg", (10, 70)), ("vvenc", (42, 27)), ("x265", (42, 27))])
def test_round_trip_rate_is_bytes_written_and_quality_orders_rate(name: str, qualities: tuple[int, int]) -> None:
    codec = _card_codec(name, **({"preset": "faster"} if name == "vvenc" else {}))
    img = _image()
    low, high = (codec.encode(img, q) for q in qualities)
    for bs in (low, high):
        assert isinstance(bs, Bitstream) and bs.width == 131 and bs.height == 97
        assert bs.bpp == pytest.approx(8 * len(bs.data) / (131 * 97))
        dec = codec.decode(bs)
        assert dec.shape == img.shape and dec.dtype == np.uint8
    assert len(low.data) < len(high.data)
    assert _psnr(img, codec.decode(low)) < _psnr(img, codec.decode(high))
    assert _psnr(img, codec.decode(high)) > 25


def test_jpeg_bitstream_is_a_real_jpeg_file() -> None:
    bs = JpegCodec().encode(_image(), 50)
    assert bs.data[:2] == b"\xff\xd8" and bs.data[-2:] == b"\xff\xd9"


@pytest.mark.parametrize("settings", [{}, {"subsampling": "4:4:4"}, {"optimize": True}, {"progressive": True},
                                      {"subsampling": "4:2:2", "optimize": True, "progressive": True}])
def test_jpeg_bytes_are_those_pillow_writes_into_a_bytesio(settings: dict[str, object]) -> None:
    """The adapter encodes through a file descriptor (save_to_bytes: encode threads then run in parallel); the
    bitstream is byte for byte Pillow's save into a BytesIO, also where it outgrows Pillow's write buffer."""
    codec = JpegCodec(**settings)  # type: ignore[arg-type]
    rng = np.random.default_rng(7)
    for img in (_image(), _image(1, 1), rng.integers(0, 256, (1200, 1700, 3), dtype=np.uint8)):
        for q in (1, 37, 100):
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=q, optimize=codec.optimize,
                                             subsampling=SUBSAMPLING[codec.subsampling], progressive=codec.progressive)
            assert codec.encode(img, q).data == buf.getvalue()
    assert len(buf.getvalue()) > 1 << 20  # the noise image at q100: larger than Pillow's 64 KiB blocks


def test_save_to_bytes_writes_the_same_bytes_by_either_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small images go through a BytesIO, larger ones through a file descriptor where there is memfd_create."""
    opened: list[str] = []
    real = os.memfd_create
    monkeypatch.setattr(os, "memfd_create", lambda name, flags=0: opened.append(name) or real(name, flags))
    big = Image.fromarray(np.random.default_rng(3).integers(0, 256, (256, 300, 3), dtype=np.uint8), "RGB")
    small = big.crop((0, 0, 255, 256))  # one column short of FD_MIN_PIXELS
    assert small.width * small.height < FD_MIN_PIXELS <= big.width * big.height
    by_fd = [save_to_bytes(im, format="PNG") for im in (big, small)]
    assert len(opened) == 1  # the big one
    monkeypatch.delattr(os, "memfd_create")
    assert [save_to_bytes(im, format="PNG") for im in (big, small)] == by_fd
    assert all(b[:8] == b"\x89PNG\r\n\x1a\n" for b in by_fd)


@pytest.mark.parametrize("cls", [VVenCCodec, X265Codec])
def test_external_encodes_are_deterministic(cls: type) -> None:
    codec = cls(preset="faster") if cls is VVenCCodec else cls()
    img = _image(64, 80)
    assert codec.encode(img, 32).data == codec.encode(img, 32).data


def test_vvc_bitstream_starts_with_an_annexb_start_code_and_x265_has_no_info_sei() -> None:
    vvc = VVenCCodec(preset="faster").encode(_image(), 37).data
    hevc = X265Codec().encode(_image(), 37).data
    assert vvc[:4] in (b"\x00\x00\x00\x01", b"\x00\x00\x01\x00") and hevc[:4] == b"\x00\x00\x00\x01"
    assert b"x265 (build" not in hevc  # info=0: no ~2 kB encoder-info SEI counted as rate


@pytest.mark.parametrize(
    "codec, bad", [(JpegCodec(), 0), (JpegCodec(), 101), (VVenCCodec(), 64), (X265Codec(), -1), (JpegCodec(), 7.5)]
)
def test_quality_outside_range_is_refused_with_the_range(codec, bad) -> None:
    codec.name = type(codec).__name__
    with pytest.raises(QualityError) as exc:
        codec.encode(_image(16, 16), bad)
    text = str(exc.value)
    assert repr(bad) in text
    if bad != 7.5:
        lo, hi = codec.quality_range
        assert f"{lo:g}..{hi:g}" in text


def test_identity_depends_on_settings_not_on_binary_location() -> None:
    a = _card_codec("vvenc")
    b = _card_codec("vvenc", ffmpeg=default_ffmpeg())
    c = _card_codec("vvenc", preset="faster")
    assert a.identity() == b.identity() != c.identity()


def test_uncompressed_reference_never_encodes() -> None:
    with pytest.raises(CodecError):
        Uncompressed().encode(_image(8, 8), 0)


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_child_process_failure_reports_exit_code_and_stderr_tail(tmp_path: Path) -> None:
    # A named fake: an "encoder" that prints to stderr and dies, standing in for a crashing binary.
    crash = _script(tmp_path / "crashing-encoder", "echo 'line one' >&2\necho 'fatal: out of cheese' >&2\nexit 3\n")
    with pytest.raises(CodecError) as exc:
        run_process([str(crash)], "test encode")
    text = str(exc.value)
    assert "exited with code 3" in text and "fatal: out of cheese" in text and "test encode" in text
    killed = _script(tmp_path / "killed-encoder", "kill -9 $$\n")
    with pytest.raises(CodecError, match="killed by signal 9"):
        run_process([str(killed)], "test encode")


def test_encoder_that_exits_zero_without_output_is_an_error_not_a_zero_rate(tmp_path: Path) -> None:
    # Named fake ffmpeg that "succeeds" but writes nothing.
    silent = _script(tmp_path / "silent-ffmpeg", 'case "$1" in -version) echo "ffmpeg version fake";; esac\nexit 0\n')
    codec = VVenCCodec(ffmpeg=str(silent))
    codec.name = "vvenc"
    with pytest.raises(CodecError, match="wrote no file"):
        codec.encode(_image(16, 16), 32)


def test_crashing_ffmpeg_names_the_codec_and_quality(tmp_path: Path) -> None:
    real = default_ffmpeg()
    # Named fake: wraps the real ffmpeg but crashes on every encode, like a broken encoder build.
    fake = _script(
        tmp_path / "crashing-ffmpeg",
        f'for a in "$@"; do [ "$a" = "libx265" ] && {{ echo "x265 [error]: segfault in fake build" >&2; exit 139; }}; done\n'
        f'exec "{real}" "$@"\n',
    )
    codec = X265Codec(ffmpeg=str(fake))
    codec.name = "x265"
    with pytest.raises(CodecError) as exc:
        codec.encode(_image(16, 16), 30)
    text = str(exc.value)
    assert "x265 encode (QP 30, 16x16)" in text and "exited with code 139" in text and "segfault in fake build" in text


def test_missing_ffmpeg_binary_is_named(tmp_path: Path) -> None:
    from vcmbench.errors import BinaryNotFoundError

    codec = VVenCCodec(ffmpeg=str(tmp_path / "nope" / "ffmpeg"))
    codec.name = "vvenc"
    with pytest.raises(BinaryNotFoundError, match="nope/ffmpeg not found"):
        codec.identity()


def test_env_var_selects_ffmpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VCMBENCH_FFMPEG", "/opt/my/ffmpeg")
    assert default_ffmpeg() == "/opt/my/ffmpeg"
    monkeypatch.delenv("VCMBENCH_FFMPEG")
    assert os.path.isfile(default_ffmpeg())


# ---- what a QP means: the slice QP read back from the bitstream ------------------------------------------
LADDER = (22, 27, 32, 37, 42, 47)


def _qp_codec(name: str, **settings: object):
    return _card_codec(name, **({"preset": "faster"} if name == "vvenc" else {}), **settings)


def _clip(frames: int = 3, h: int = 48, w: int = 64) -> Clip:
    img = _image(h, w)
    return Clip(np.stack([np.roll(img, 3 * i, axis=1) for i in range(frames)]), 25.0)


@pytest.mark.parametrize("name", ["vvenc", "x265"])
def test_slice_qp_of_images_and_all_intra_clips_is_the_qp_label(name: str) -> None:
    """Parsed from the headers (ffmpeg's trace_headers): 26 + init_qp_minus26 + the slice's delta. With the
    version-1 cards both encoders coded a QP-32 image at 29: VVenC's IntraQPOffset -3 and x265's ipratio 1.4
    (x265's --qp is the P-slice QP)."""
    codec = _qp_codec(name)
    img = _image()
    parsed = {q: slice_qps(codec.encode(img, q).data, codec.bitstream_format) for q in LADDER}
    assert parsed == {q: [("I", q)] for q in LADDER}
    ai = _qp_codec(name, video_config="ai")
    bs = ai.encode(_clip(3), 37)
    assert slice_qps(bs.data, ai.bitstream_format) == [("I", 37)] * 3
    assert bs.meta["slice_qp"] == {"I": [37]}


@pytest.mark.parametrize("name", ["vvenc", "x265"])
@pytest.mark.parametrize("config", ["ra", "ld"])
def test_clip_qp_is_the_ctc_base_qp_and_the_slice_qps_are_recorded(name: str, config: str) -> None:
    """Random access and low delay: the intra picture at QP - 3 and QP - 1, the IntraQPOffset of VTM's RA and
    LD configurations (VVenC: IntraQPOffset, x265: ipratio 1.4 and 1.12), inter pictures at QP or above;
    what was used is in the bitstream's meta."""
    codec = _qp_codec(name, video_config=config)
    bs = codec.encode(_clip(9), 32)
    qps = slice_qps(bs.data, codec.bitstream_format)
    intra = 32 + CTC_INTRA_QP_OFFSET[config]
    assert intra == {"ra": 29, "ld": 31}[config]
    assert len(qps) == 9 and qps[0] == ("I", intra)
    assert all(qp >= 32 for kind, qp in qps if kind != "I"), qps
    assert bs.meta["slice_qp"] == slice_qp_summary(qps) and bs.meta["slice_qp"]["I"] == [intra]


_T = "[trace_headers @ 0x55d0] "


def test_slice_qp_parser_follows_the_pps_and_the_picture_header() -> None:
    """VVC carries the QP delta in the picture header when pps_qp_delta_info_in_ph_flag is set, else in each
    slice header; HEVC in the slice segment header. Every slice uses the init QP of its own PPS."""
    vvc = "\n".join([
        _T + "Picture Parameter Set",
        _T + "16          pps_pic_parameter_set_id                                  000001 = 1",
        _T + "71          pps_init_qp_minus26                                          011 = -1",
        _T + "90          pps_qp_delta_info_in_ph_flag                                   1 = 1",
        _T + "Picture Parameter Set",
        _T + "16          pps_pic_parameter_set_id                                  000010 = 2",
        _T + "71          pps_init_qp_minus26                                        00100 = 2",
        _T + "Picture Header",
        _T + "20          ph_pic_parameter_set_id                                      010 = 1",
        _T + "48          ph_qp_delta                                                00111 = -3",
        _T + "Slice Header",
        _T + "30          sh_slice_type                                                  1 = 0",
        _T + "40          sh_qp_delta                                                  011 = -1",
        _T + "Slice Header",
        _T + "30          sh_slice_type                                                010 = 1",
        _T + "Slice Header",  # picture header in the slice header, PPS 2: the delta is the slice's
        _T + "10          ph_pic_parameter_set_id                                      011 = 2",
        _T + "48          sh_qp_delta                                                00100 = 2",
        "[vvc @ 0x1] unrelated line 12 = 3",
    ])
    assert slice_qps_from_trace(vvc) == [("B", 22), ("P", 22), ("I", 30)]
    hevc = "\n".join([
        _T + "Picture Parameter Set",
        _T + "16          pps_pic_parameter_set_id                                       1 = 0",
        _T + "27          init_qp_minus26                                            00111 = -3",
        _T + "Slice Segment Header",
        _T + "19          slice_type                                                   011 = 2",
        _T + "24          slice_qp_delta                                             00110 = 3",
        _T + "Slice Segment Header",  # a dependent slice segment carries no QP of its own
        _T + "16          first_slice_segment_in_pic_flag                                0 = 0",
    ])
    assert slice_qps_from_trace(hevc) == [("I", 26)]
