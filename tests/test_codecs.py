"""Codecs write real bitstreams: rate is bytes written; failures carry the child's stderr."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.codecs.base import Bitstream, Uncompressed, run_process
from vcmbench.codecs.ffmpeg import VVenCCodec, X265Codec, default_ffmpeg
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.errors import CodecError, QualityError


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
