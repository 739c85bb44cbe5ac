"""vcmbench.run.rates on hand-made encode records (the mutation lane's tests for rates.py): every rate
column checked against the value computed by hand from the bytes, sizes, frames, times and frame rates."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vcmbench.datasets.base import Item
from vcmbench.run.rates import RATE_FIELDS, group_rates, kbps, no_rate, unit_rate
from vcmbench.store import EncodeRecord


def _rec(nbytes: int | None, w: int, h: int, frames: int | None = None, psnr: float | None = None,
         enc: float | None = None, dec: float | None = None, fps: float | None = None) -> EncodeRecord:  # fmt: skip
    meta = {"fps": fps} if fps is not None else {}
    return EncodeRecord("k", "ok", None, "blob", nbytes, w, h, frames, meta, enc, dec, psnr)


def _item(name: str, fps: float | None = None) -> Item:
    return Item(name, Path(name), {"fps": fps} if fps is not None else {})


def test_no_rate_is_every_rate_column_none() -> None:
    assert RATE_FIELDS == ("nbytes", "pixels", "bpp", "bpp_mean", "psnr", "encode_s", "decode_s", "kbps")
    assert no_rate() == dict.fromkeys(RATE_FIELDS) and all(v is None for v in no_rate().values())
    assert unit_rate([]) == no_rate()


def test_unit_rate_of_images() -> None:
    coded = [
        (_item("a"), _rec(100, 10, 20, psnr=30.0, enc=0.5, dec=0.25)),
        (_item("b"), _rec(300, 20, 20, psnr=40.0, enc=1.5, dec=0.75)),
    ]
    got = unit_rate(coded)
    assert got["nbytes"] == 400
    assert got["pixels"] == 200 + 400
    assert got["bpp"] == pytest.approx(8 * 400 / 600)
    assert got["bpp_mean"] == pytest.approx((8 * 100 / 200 + 8 * 300 / 400) / 2)
    assert got["psnr"] == pytest.approx(35.0)
    assert got["encode_s"] == pytest.approx(2.0) and got["decode_s"] == pytest.approx(1.0)
    assert got["kbps"] is None
    assert set(got) == set(RATE_FIELDS)
    assert isinstance(got["bpp_mean"], float) and isinstance(got["psnr"], float)


def test_unit_rate_counts_frames_and_skips_missing_values() -> None:
    coded = [
        (_item("a"), _rec(None, 4, 4, frames=None, psnr=math.inf)),
        (_item("b"), _rec(64, 4, 4, frames=3, psnr=None, enc=None, dec=None)),
        (_item("c"), _rec(32, 4, 4, frames=1, psnr=20.0, enc=0.5, dec=None)),
    ]
    got = unit_rate(coded)
    assert got["pixels"] == 16 + 48 + 16
    assert got["nbytes"] == 96
    assert got["bpp"] == pytest.approx(8 * 96 / 80)
    assert got["bpp_mean"] == pytest.approx((0.0 + 8 * 64 / 48 + 8 * 32 / 16) / 3)
    assert got["psnr"] == pytest.approx(20.0)  # the infinite PSNR (lossless item) and the missing one left out
    assert got["encode_s"] == pytest.approx(0.5) and got["decode_s"] == 0.0


def test_unit_rate_psnr_none_when_no_finite_value() -> None:
    got = unit_rate([(_item("a"), _rec(10, 2, 2, psnr=math.inf)), (_item("b"), _rec(10, 2, 2, psnr=None))])
    assert got["psnr"] is None
    assert unit_rate([(_item("a"), _rec(10, 2, 2, psnr=math.nan))])["psnr"] is None


def test_kbps_of_clips() -> None:
    coded = [(_item("a", fps=30.0), _rec(3000, 8, 8, frames=60)), (_item("b", fps=25.0), _rec(1000, 8, 8, frames=50))]
    seconds = 60 / 30.0 + 50 / 25.0
    assert kbps(coded) == pytest.approx(8 * 4000 / seconds / 1000)
    assert unit_rate(coded)["kbps"] == pytest.approx(8 * 4000 / seconds / 1000)


def test_kbps_takes_the_datasets_fps_before_the_bitstreams() -> None:
    both = [(_item("a", fps=20.0), _rec(1000, 8, 8, frames=10, fps=50.0))]
    assert kbps(both) == pytest.approx(8 * 1000 / (10 / 20.0) / 1000)
    bitstream_only = [(_item("a"), _rec(1000, 8, 8, frames=10, fps=50.0))]
    assert kbps(bitstream_only) == pytest.approx(8 * 1000 / (10 / 50.0) / 1000)
    one_frame = [(_item("a", fps=4.0), _rec(500, 8, 8, frames=None))]
    assert kbps(one_frame) == pytest.approx(8 * 500 / (1 / 4.0) / 1000)
    missing_bytes = [(_item("a", fps=4.0), _rec(None, 8, 8, frames=2)), (_item("b", fps=4.0), _rec(100, 8, 8, frames=2))]
    assert kbps(missing_bytes) == pytest.approx(8 * 100 / 1.0 / 1000)


def test_kbps_is_none_for_images_or_when_any_fps_is_missing() -> None:
    assert kbps([]) is None
    assert kbps([(_item("a"), _rec(10, 2, 2))]) is None
    assert kbps([(_item("a", fps=30.0), _rec(10, 2, 2, frames=3)), (_item("b"), _rec(10, 2, 2, frames=3))]) is None
    assert kbps([(_item("a", fps=0.0), _rec(10, 2, 2, frames=3))]) is None


def test_group_rates_use_each_groups_own_bits_and_count() -> None:
    a, b, c = (_item("a", fps=10.0), _rec(100, 4, 4, frames=10, psnr=30.0)), (_item("b", fps=10.0), _rec(300, 4, 4, frames=10, psnr=40.0)), (_item("c", fps=10.0), _rec(50, 8, 8, frames=5, psnr=20.0))  # fmt: skip
    coded = [a, b, c]
    got = group_rates({"seqAB": ["a", "b"], "seqC": ["c", "zz"], "none": ["zz"]}, coded)
    assert set(got) == {"seqAB", "seqC"}  # a group with no coded item has no rate
    assert got["seqAB"] == {**unit_rate([a, b]), "n_items": 2}
    assert got["seqC"] == {**unit_rate([c]), "n_items": 1}
    assert got["seqAB"]["bpp"] == pytest.approx(8 * 400 / 320)
    assert got["seqC"]["kbps"] == pytest.approx(8 * 50 / 0.5 / 1000)
    assert group_rates({}, coded) == {}
