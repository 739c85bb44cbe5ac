"""Tests of vcmbench.metrics.bd against the reference `bjontegaard` package and known closed-form cases."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import warnings

import bjontegaard
import numpy as np
import pytest
from scipy.optimize import LinearConstraint, minimize

from vcmbench.metrics.bd import (
    METHODS,
    BDResult,
    bd_metric,
    bd_rate,
    compare_curves,
    fit_bounds,
    min_points,
    monotone_fit,
)

# Example from the README of the bjontegaard package (libx265 presets, rate in kbps, PSNR in dB).
RATE_ANCHOR = [9487.76, 4593.6, 2486.44, 1358.24]
PSNR_ANCHOR = [40.037, 38.615, 36.845, 34.851]
RATE_TEST = [9787.8, 4469.0, 2451.52, 1356.24]
PSNR_TEST = [40.121, 38.651, 36.97, 34.987]


def ref_bd_rate(ra, ma, rt, mt, method: str) -> float:
    """The bjontegaard package's BD-rate, without its overlap warning and point-count restriction."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bjontegaard.bd_rate(ra, ma, rt, mt, method, require_matching_points=False, min_overlap=0)


def ref_bd_metric(ra, ma, rt, mt, method: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bjontegaard.bd_psnr(ra, ma, rt, mt, method, require_matching_points=False, min_overlap=0)


def assert_bd_rate_close(ours: float, ref: float) -> None:
    """Equal to 1e-6 (absolute, in percent) for any sensible BD-rate.

    Cubic fits to saturating mAP curves can overshoot to BD-rates like 1e20 %, where float rounding of
    the two implementations' fits alone exceeds 1e-6 %. Beyond +1000 % we therefore compare what the
    integration actually produces, the mean log10-rate difference, to 1e-9.
    """
    if math.isinf(ref) or abs(ref) <= 1000.0:
        assert ours == pytest.approx(ref, abs=1e-6)
    else:
        assert math.log10(1.0 + ours / 100.0) == pytest.approx(math.log10(1.0 + ref / 100.0), abs=1e-9)


def shuffled(rng: np.random.Generator, rate, metric) -> tuple[list[float], list[float]]:
    order = rng.permutation(len(rate))
    return [float(rate[i]) for i in order], [float(metric[i]) for i in order]


# --------------------------------------------------------------------------------------------------
# (1) the README example


def test_readme_example_pchip_matches_package_and_published_value() -> None:
    ours = bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method="pchip")
    ref = bjontegaard.bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method="pchip")
    assert ours == pytest.approx(ref, abs=1e-6)
    assert ours == pytest.approx(-4.4175, abs=1e-3)


def test_default_method_is_pchip() -> None:
    assert bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST) == bd_rate(
        RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method="pchip"
    )
    result = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    assert result.method == "pchip"


@pytest.mark.parametrize("method", METHODS)
def test_readme_example_all_methods_match_package(method: str) -> None:
    ours_rate = bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method)
    ours_psnr = bd_metric(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method)
    assert ours_rate == pytest.approx(
        bjontegaard.bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method), abs=1e-6
    )
    assert ours_psnr == pytest.approx(
        bjontegaard.bd_psnr(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method), abs=1e-6
    )

    result = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method)
    assert result.bd_rate == pytest.approx(ours_rate, abs=1e-12)
    assert result.bd_metric == pytest.approx(ours_psnr, abs=1e-12)
    assert result.warnings == ()
    assert 0.9 < result.rate_overlap <= 1.0
    assert 0.9 < result.metric_overlap <= 1.0


@pytest.mark.parametrize("method", METHODS)
def test_input_order_does_not_matter(method: str) -> None:
    rng = np.random.default_rng(7)
    expected = bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method)
    expected_metric = bd_metric(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method)
    for _ in range(5):
        ra, ma = shuffled(rng, RATE_ANCHOR, PSNR_ANCHOR)
        rt, mt = shuffled(rng, RATE_TEST, PSNR_TEST)
        assert bd_rate(ra, ma, rt, mt, method=method) == pytest.approx(expected, abs=1e-9)
        assert bd_metric(ra, ma, rt, mt, method=method) == pytest.approx(expected_metric, abs=1e-9)


# --------------------------------------------------------------------------------------------------
# (2) many made-up curves against the package


def psnr_like_curve(
    rng: np.random.Generator, n: int, log_lo: float, log_hi: float
) -> tuple[np.ndarray, np.ndarray]:
    """Monotone PSNR-like curve: rates in kbps (log-uniform, distinct), PSNR rising with diminishing steps."""
    log_rate = np.sort(rng.uniform(log_lo, log_hi, n))
    log_rate += np.arange(n) * 0.02  # keep the points apart
    steps = np.diff(log_rate, prepend=log_rate[0] - 0.3) * rng.uniform(4.0, 12.0, n)
    psnr = rng.uniform(26.0, 32.0) + np.cumsum(steps)
    return 10.0**log_rate, psnr


def map_like_curve(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Monotone accuracy curve: bpp in 0.05..3, mAP saturating towards at most 0.6."""
    bpp = np.sort(np.exp(rng.uniform(np.log(0.05), np.log(3.0), n)))
    bpp *= 1.0 + 0.03 * np.arange(n)  # distinct rates
    bpp = np.clip(bpp, 0.05, 3.0)
    bpp = np.unique(bpp)
    while bpp.size < n:  # clipping merged points: fill in a fresh one
        bpp = np.unique(np.append(bpp, np.exp(rng.uniform(np.log(0.05), np.log(3.0)))))
    top = rng.uniform(0.3, 0.55)
    scale = rng.uniform(0.05, 1.5)
    ideal = top * (1.0 - np.exp(-bpp / scale))
    # Jittered steps, at least 0.003 so that saturation never produces two equal mAP values.
    steps = np.maximum(np.diff(ideal, prepend=0.0) * rng.uniform(0.6, 1.4, n), 0.003)
    return bpp, np.cumsum(steps)


def make_pairs(kind: str, count: int, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        na, nt = (int(v) for v in rng.integers(4, 7, size=2))
        if kind == "psnr":
            lo = rng.uniform(2.5, 3.0)
            anchor = psnr_like_curve(rng, na, lo, lo + rng.uniform(0.6, 1.4))
            shift = rng.uniform(-0.5, 0.5)
            test = psnr_like_curve(rng, nt, lo + shift, lo + shift + rng.uniform(0.6, 1.4))
        else:
            anchor = map_like_curve(rng, na)
            test = map_like_curve(rng, nt)
        yield rng, anchor, test


@pytest.mark.parametrize("kind", ["psnr", "map"])
@pytest.mark.parametrize("method", METHODS)
def test_random_curves_match_package(method: str, kind: str) -> None:
    compared_rate = compared_metric = 0
    for rng, (ra, ma), (rt, mt) in make_pairs(kind, 150, seed=10 * METHODS.index(method) + (kind == "map")):
        # The package needs points ordered by rate (either direction); ours takes any order.
        ref_rate = ref_bd_rate(ra[::-1], ma[::-1], rt, mt, method)
        ref_metric = ref_bd_metric(ra, ma, rt[::-1], mt[::-1], method)
        sra, sma = shuffled(rng, ra, ma)
        srt, smt = shuffled(rng, rt, mt)
        # allow_short: the guards (4 points, 50 % overlap) are tested on their own below; here every value
        # the package computes must match.
        result = compare_curves(sra, sma, srt, smt, method=method, allow_short=True)
        guarded = compare_curves(sra, sma, srt, smt, method=method)
        for value, note, allowed in ((guarded.bd_rate, guarded.rate_note, result.bd_rate),
                                     (guarded.bd_metric, guarded.metric_note, result.bd_metric)):  # fmt: skip
            assert (math.isnan(value) and note) or value == allowed

        if math.isnan(ref_rate):  # the package found no overlap on the metric axis
            assert math.isnan(result.bd_rate)
            with pytest.raises(ValueError, match="do not overlap on the metric axis"):
                bd_rate(sra, sma, srt, smt, method=method)
        else:
            assert_bd_rate_close(bd_rate(sra, sma, srt, smt, method=method), ref_rate)
            assert_bd_rate_close(result.bd_rate, ref_rate)
            compared_rate += 1
        if math.isnan(ref_metric):
            assert math.isnan(result.bd_metric)
        else:
            assert bd_metric(sra, sma, srt, smt, method=method) == pytest.approx(ref_metric, abs=1e-6)
            assert result.bd_metric == pytest.approx(ref_metric, abs=1e-6)
            compared_metric += 1
    # The generators are meant to produce mostly overlapping curves; make sure we compared plenty.
    assert compared_rate > 100
    assert compared_metric > 100


def dipping_map_curve(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A saturating mAP curve whose first or last point (or both) dips against the trend, as mAP does at the
    lowest rates and where a high rate adds only noise."""
    bpp, m = map_like_curve(rng, n)
    m = m.copy()
    ends = {0: [0], 1: [-1], 2: [0, -1]}[int(rng.integers(0, 3))]
    for end in ends:
        nxt = m[1] if end == 0 else m[-2]
        m[end] = nxt - (1 if end == -1 else -1) * rng.uniform(0.001, 0.03)  # the dip: against the rise
    return bpp, m


def pchip_end_clamped(rate: np.ndarray, metric: np.ndarray) -> bool:
    """Whether an end slope of the pchip interpolant of metric over log10-rate needs the 3x-secant limit of the
    Fritsch-Carlson / Moler rule: the secants next to that end differ in sign and the three-point slope is
    steeper than 3 times the end secant."""
    x, y = np.log10(rate), metric
    for h0, h1, s0, s1 in (
        (x[1] - x[0], x[2] - x[1], (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])),
        (x[-1] - x[-2], x[-2] - x[-3], (y[-1] - y[-2]) / (x[-1] - x[-2]), (y[-2] - y[-3]) / (x[-2] - x[-3])),
    ):
        d = ((2 * h0 + h1) * s0 - h0 * s1) / (h0 + h1)
        if np.sign(s0) != np.sign(s1) and np.sign(d) == np.sign(s0) and abs(d) > 3 * abs(s0):
            return True
    return False


@pytest.mark.parametrize("method", ["pchip", "akima"])
def test_non_monotonic_curves_match_package_bd_metric(method: str) -> None:
    """BD-metric on curves that dip at an end (interpolating the metric over log-rate needs only distinct
    rates, so the package computes these for pchip and akima too). With pchip, many of them need the end-slope
    limit, which monotone curves never reach."""
    rng = np.random.default_rng(2024 + METHODS.index(method))
    compared = clamped = 0
    for _ in range(150):
        na, nt = (int(v) for v in rng.integers(4, 7, size=2))
        (ra, ma), (rt, mt) = dipping_map_curve(rng, na), dipping_map_curve(rng, nt)
        ref = ref_bd_metric(ra, ma, rt, mt, method)
        if math.isnan(ref):
            continue
        assert bd_metric(ra, ma, rt, mt, method=method) == pytest.approx(ref, abs=1e-6)
        compared += 1
        clamped += pchip_end_clamped(ra, ma) or pchip_end_clamped(rt, mt)
    assert compared > 120
    assert clamped > 75  # (the same curves for akima, where the limit does not apply)


@pytest.mark.parametrize("method", ["pchip", "akima"])
def test_two_point_curves_match_package(method: str) -> None:
    ra, ma = [0.1, 1.0], [0.2, 0.5]
    rt, mt = [0.08, 0.7, 2.0], [0.25, 0.45, 0.55]
    assert bd_rate(ra, ma, rt, mt, method=method) == pytest.approx(
        ref_bd_rate(ra, ma, rt, mt, method), abs=1e-6
    )
    assert bd_metric(ra, ma, rt, mt, method=method) == pytest.approx(
        ref_bd_metric(ra, ma, rt, mt, method), abs=1e-6
    )


def test_akima_with_collinear_points_matches_package() -> None:
    # Equal secant slopes make Akima's weights vanish; the fallback (mean of the secants) must agree.
    ra = [1.0, 10.0, 100.0, 1000.0, 10000.0]
    ma = [30.0, 32.0, 34.0, 36.0, 40.0]
    rt = [2.0, 20.0, 200.0, 2000.0]
    mt = [31.0, 33.0, 35.0, 38.0]
    for f, ref in ((bd_rate, ref_bd_rate), (bd_metric, ref_bd_metric)):
        assert f(ra, ma, rt, mt, method="akima") == pytest.approx(ref(ra, ma, rt, mt, "akima"), abs=1e-6)


def test_cubic_on_non_monotonic_curve_matches_package() -> None:
    # A least-squares cubic does not depend on point order, so the package gives a value here too.
    ra, ma = [0.1, 0.2, 0.4, 0.8, 1.6], [0.30, 0.28, 0.45, 0.52, 0.55]
    rt, mt = [0.1, 0.2, 0.4, 0.8], [0.32, 0.40, 0.48, 0.56]
    assert bd_rate(ra, ma, rt, mt, method="cubic") == pytest.approx(
        ref_bd_rate(ra, ma, rt, mt, "cubic"), abs=1e-6
    )
    assert bd_metric(ra, ma, rt, mt, method="cubic") == pytest.approx(
        ref_bd_metric(ra, ma, rt, mt, "cubic"), abs=1e-6
    )


def test_cubic_overshoot_to_infinity_matches_package_and_warns() -> None:
    # A test mAP curve that saturates: the cubic through log-rate over mAP explodes on the plateau.
    ra = [0.12194488, 0.13627935, 0.29529677, 0.59494584, 0.81750726, 2.00954769]
    ma = [0.16468117, 0.17947728, 0.30967968, 0.41100148, 0.43521409, 0.45649708]
    rt = [0.14822249, 0.50006591, 0.60820512, 2.61278543]
    mt = [0.3444258, 0.44199559, 0.44239249, 0.44254555]
    assert ref_bd_rate(ra, ma, rt, mt, "cubic") == math.inf
    assert bd_rate(ra, ma, rt, mt, method="cubic") == math.inf
    # The metric ranges share 34 % (< 50 %): only allow_short reports it (issue 14: marked as allowed).
    assert math.isnan(compare_curves(ra, ma, rt, mt, method="cubic").bd_rate)
    result = compare_curves(ra, ma, rt, mt, method="cubic", allow_short=True)
    assert result.bd_rate == math.inf
    assert result.rate_note == "allowed: metric overlap 34% < 50%"
    assert any("overflowed" in w and "cubic" in w for w in result.warnings)
    assert math.isfinite(compare_curves(ra, ma, rt, mt, method="pchip", allow_short=True).bd_rate)


# --------------------------------------------------------------------------------------------------
# (3) identical curves, (4) half the rate


@pytest.mark.parametrize("method", METHODS)
def test_identical_curves_give_zero(method: str) -> None:
    assert bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_ANCHOR, PSNR_ANCHOR, method=method) == pytest.approx(
        0.0, abs=1e-12
    )
    assert bd_metric(RATE_ANCHOR, PSNR_ANCHOR, RATE_ANCHOR, PSNR_ANCHOR, method=method) == pytest.approx(
        0.0, abs=1e-12
    )
    result = compare_curves(
        RATE_ANCHOR, PSNR_ANCHOR, list(reversed(RATE_ANCHOR)), list(reversed(PSNR_ANCHOR)), method
    )
    assert result.bd_rate == pytest.approx(0.0, abs=1e-12)
    assert result.bd_metric == pytest.approx(0.0, abs=1e-12)
    assert result.rate_overlap == 1.0
    assert result.metric_overlap == 1.0
    assert result.warnings == ()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("rate", "metric"),
    [
        (RATE_ANCHOR, PSNR_ANCHOR),
        ([0.05, 0.12, 0.3, 0.7, 1.5, 3.0], [0.02, 0.11, 0.27, 0.41, 0.5, 0.55]),  # mAP-like
    ],
)
def test_half_the_rate_gives_minus_fifty_percent(method: str, rate: list[float], metric: list[float]) -> None:
    half = [r / 2 for r in rate]
    assert bd_rate(rate, metric, half, metric, method=method) == pytest.approx(-50.0, abs=1e-9)
    assert bd_rate(half, metric, rate, metric, method=method) == pytest.approx(100.0, abs=1e-9)
    assert compare_curves(rate, metric, half, metric, method=method).bd_rate == pytest.approx(-50.0, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_rate_unit_does_not_matter(method: str) -> None:
    # kbps -> bits per second scales every rate by the same factor: BD values must not change.
    scaled_a = [r * 1000 for r in RATE_ANCHOR]
    scaled_t = [r * 1000 for r in RATE_TEST]
    assert bd_rate(scaled_a, PSNR_ANCHOR, scaled_t, PSNR_TEST, method=method) == pytest.approx(
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method), abs=1e-9
    )
    assert bd_metric(scaled_a, PSNR_ANCHOR, scaled_t, PSNR_TEST, method=method) == pytest.approx(
        bd_metric(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method=method), abs=1e-9
    )


# --------------------------------------------------------------------------------------------------
# (5) no overlap, (6) non-monotonic, (7) barely overlapping


def test_no_metric_overlap_gives_nan_and_warning() -> None:
    ra, ma = [100, 200, 400, 800], [30.0, 31.0, 32.0, 33.0]
    rt, mt = [100, 200, 400, 800], [35.0, 36.0, 37.0, 38.0]
    result = compare_curves(ra, ma, rt, mt)
    assert math.isnan(result.bd_rate)
    assert result.metric_overlap == 0.0
    assert result.rate_overlap == 1.0
    assert result.bd_metric == pytest.approx(5.0, abs=1e-12)  # BD-metric is still defined
    assert any("do not overlap on the metric axis" in w and "BD-rate" in w for w in result.warnings)
    with pytest.raises(ValueError, match="do not overlap on the metric axis"):
        bd_rate(ra, ma, rt, mt)


def test_no_overlap_on_either_axis_gives_two_nans() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.3], [0.10, 0.20, 0.25, 0.28]
    rt, mt = [0.5, 1.0, 2.0, 3.0], [0.40, 0.50, 0.55, 0.58]
    for method in METHODS:
        result = compare_curves(ra, ma, rt, mt, method=method)
        assert math.isnan(result.bd_rate)
        assert math.isnan(result.bd_metric)
        assert result.rate_overlap == 0.0
        assert result.metric_overlap == 0.0
        assert any("metric axis" in w for w in result.warnings)
        assert any("rate axis" in w and "BD-metric" in w for w in result.warnings)
        with pytest.raises(ValueError, match="do not overlap on the rate axis"):
            bd_metric(ra, ma, rt, mt, method=method)


def test_curves_touching_at_one_point_do_not_overlap() -> None:
    result = compare_curves([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], [4, 5, 6, 7], [4.0, 5.0, 6.0, 7.0])
    assert math.isnan(result.bd_rate)
    assert math.isnan(result.bd_metric)


def test_non_monotonic_curve_is_named_in_a_warning() -> None:
    # Typical detection curve: at the lowest rates mAP dips before it rises.
    ra, ma = [0.05, 0.1, 0.2, 0.4, 0.8], [0.10, 0.20, 0.30, 0.40, 0.45]
    rt, mt = [0.05, 0.1, 0.2, 0.4, 0.8], [0.15, 0.12, 0.33, 0.42, 0.47]
    for method in ("pchip", "akima"):
        result = compare_curves(ra, ma, rt, mt, method=method)
        assert math.isfinite(result.bd_rate)
        assert math.isfinite(result.bd_metric)
        (note,) = [w for w in result.warnings if "not monotonic" in w]
        assert "test curve" in note
        assert "anchor" not in note
        assert "0.15 at rate 0.05" in note and "0.12 at rate 0.1" in note
        # the plain functions compute without complaint
        assert bd_rate(ra, ma, rt, mt, method=method) == pytest.approx(result.bd_rate, abs=1e-12)


def test_non_monotonic_anchor_is_named() -> None:
    ra, ma = [1, 2, 3, 4, 5, 6], [0.3, 0.35, 0.34, 0.33, 0.5, 0.55]
    rt, mt = [1, 2, 3, 4], [0.32, 0.4, 0.45, 0.5]
    result = compare_curves(ra, ma, rt, mt)
    notes = [w for w in result.warnings if "not monotonic" in w]
    assert len(notes) == 1
    assert notes[0].startswith("The anchor curve")
    assert "from 0.35 at rate 2 to 0.34 at rate 3" in notes[0]


def test_metric_falling_with_rate_suggests_declaring_it_lower_is_better() -> None:
    # Issue 14: the old advice ("negate it first") was wrong: negating a metric does not change BD-rate.
    ra, ma, rt, mt = [1, 2, 4, 8], [0.4, 0.3, 0.2, 0.1], [1, 2, 4, 8], [0.35, 0.25, 0.15, 0.05]
    result = compare_curves(ra, ma, rt, mt)
    (note,) = result.warnings
    assert "falls as the rate rises" in note and "lower_is_better" in note
    declared = compare_curves(ra, ma, rt, mt, lower_is_better=True)
    assert declared.warnings == ()
    # The test has the lower values at every rate: for a lower-is-better distortion it is better.
    assert declared.bd_metric == pytest.approx(0.05) and declared.bd_rate < 0


def test_equal_metric_values_make_bd_rate_undefined_but_not_bd_metric() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4], [0.0, 0.0, 0.2, 0.3]
    rt, mt = [0.05, 0.1, 0.2, 0.4], [0.05, 0.1, 0.25, 0.35]
    result = compare_curves(ra, ma, rt, mt)
    assert math.isnan(result.bd_rate)
    assert math.isfinite(result.bd_metric)
    assert any("stays at 0 from rate 0.05 to rate 0.1" in w for w in result.warnings)
    assert any("BD-rate is undefined" in w and "same metric value 0" in w for w in result.warnings)
    with pytest.raises(ValueError, match="same metric value"):
        bd_rate(ra, ma, rt, mt)


def test_barely_overlapping_curves_leave_bd_rate_empty() -> None:
    ra, ma = [100, 200, 400, 800], [30.0, 32.0, 34.0, 36.0]
    rt, mt = [90, 180, 360, 720], [35.5, 37.0, 38.5, 40.0]  # metric ranges share 0.5 dB of 10 dB
    result = compare_curves(ra, ma, rt, mt, min_overlap=0.2)
    assert result.metric_overlap == pytest.approx(0.05)
    # Issue 14: no longer a number with a warning nobody reads, but empty with the reason.
    assert math.isnan(result.bd_rate) and result.rate_note == "metric overlap 5% < 20%"
    assert math.isfinite(result.bd_metric) and result.metric_note == ""  # the rate ranges overlap by 90 %
    (note,) = [w for w in result.warnings if "barely overlap" in w]
    assert "metric axis" in note and "5%" in note and "left empty" in note
    # allow_short computes it and marks it.
    allowed = compare_curves(ra, ma, rt, mt, min_overlap=0.2, allow_short=True)
    assert allowed.bd_rate == pytest.approx(bd_rate(ra, ma, rt, mt), abs=1e-12)
    assert allowed.rate_note == "allowed: metric overlap 5% < 20%"
    # Lowering the threshold silences it.
    low = compare_curves(ra, ma, rt, mt, min_overlap=0.01)
    assert not any("barely" in w for w in low.warnings) and math.isfinite(low.bd_rate) and low.rate_note == ""


def test_barely_overlapping_on_rate_axis_warns() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4], [0.1, 0.2, 0.3, 0.4]
    rt, mt = [0.35, 0.7, 1.4, 2.8], [0.3, 0.35, 0.45, 0.55]
    result = compare_curves(ra, ma, rt, mt)
    assert 0 < result.rate_overlap < 0.2
    assert any("barely overlap on the rate axis" in w for w in result.warnings)


# --------------------------------------------------------------------------------------------------
# (7b) issue 14: BD only where the method defines it (4 points, real overlap), the monotone fit, direction


@pytest.mark.parametrize("n", [2, 3])
def test_fewer_than_four_points_leave_bd_empty_unless_allowed(n: int) -> None:
    rate, metric = RATE_TEST[:n], PSNR_TEST[:n]
    result = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, rate, metric)
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert result.rate_note.startswith(f"test: {n} points < 4")
    assert result.metric_note.startswith(f"test: {n} points < 4")
    assert any(f"has {n} points; a BD value needs at least 4" in w for w in result.warnings)
    allowed = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, rate, metric, allow_short=True)
    assert allowed.bd_rate == pytest.approx(bd_rate(RATE_ANCHOR, PSNR_ANCHOR, rate, metric), abs=1e-12)
    assert allowed.rate_note.startswith(f"allowed: test: {n} points < 4")
    # min_points is an option too
    assert compare_curves(RATE_ANCHOR, PSNR_ANCHOR, rate, metric, min_points=n, min_overlap=0).rate_note == ""


def ctc_fit_cubic(log_rate: np.ndarray, accuracy_percent: np.ndarray) -> np.ndarray:
    """The MPEG VCM CTC's fit as CompressAI-Vision's scripts/metrics/cubic_polynomial.py poses it (raw
    coefficients, SLSQP from (1, 1, 1, 1), bounds 0 and 100 on accuracy in percent), written anew here."""
    x, y = log_rate, accuracy_percent

    def f(b: np.ndarray, t: np.ndarray) -> np.ndarray:
        return b[0] * t**3 + b[1] * t**2 + b[2] * t + b[3]

    cons = (
        {"type": "ineq", "fun": lambda b: 3 * b[0] * x**2 + 2 * b[1] * x + b[2]},
        {"type": "ineq", "fun": lambda b: -6 * b[0] * x - 2 * b[1]},
        {"type": "ineq", "fun": lambda b: f(b, x[0])},
        {"type": "ineq", "fun": lambda b: 100 - f(b, x[-1])},
    )
    res = minimize(lambda b: np.sum((f(b, x) - y) ** 2), np.ones(4), method="SLSQP", constraints=cons)
    assert res.success
    return f(res.x, x)


@pytest.mark.parametrize(
    ("rate", "metric"),
    [
        ([0.05, 0.1, 0.2, 0.4, 0.8, 1.6], [0.10, 0.20, 0.30, 0.40, 0.45, 0.44]),  # mAP dips at the top
        ([0.2185, 0.4078, 0.5314, 0.8279, 1.3372], [0.08, 0.13, 0.23, 0.30, 0.31]),
        ([100, 200, 400, 800, 1600, 3200], [20.1, 25.3, 24.9, 33.0, 36.2, 37.0]),
    ],
)
def test_monotone_fit_solves_the_ctc_problem(rate: list[float], metric: list[float]) -> None:
    m = np.array(metric)
    percent = 100.0 if m.max() <= 1 else 1.0  # the script works on accuracy in percent
    ours = monotone_fit(rate, m, fit_bounds(m)) * percent
    ref = ctc_fit_cubic(np.log10(rate), m * percent)
    assert ours == pytest.approx(ref, abs=1e-3)  # the script's SLSQP stops at its default tolerance
    assert np.sum((ours - m * percent) ** 2) <= np.sum((ref - m * percent) ** 2) + 1e-9
    assert np.all(np.diff(ours) > 0)  # rising (and concave: every step no larger per decade than the last)
    slopes = np.diff(ours) / np.diff(np.log10(rate))
    assert np.all(np.diff(slopes) <= 1e-9)


def qp_reference(rate: np.ndarray, metric: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """The same constrained least-squares problem solved by another method (scipy's trust-constr, an
    interior-point solver) in raw log-rate coordinates, written anew here as an independent check."""
    x = np.log10(rate)
    basis = np.vander(x, 4, increasing=True)
    rows = [np.column_stack([0 * x, 1 + 0 * x, 2 * x, 3 * x**2]), -np.column_stack([0 * x, 0 * x, 2 + 0 * x, 6 * x])]
    lo, hi = basis[np.argmin(x)], basis[np.argmax(x)]
    a = np.vstack([*rows, lo, -hi])
    lb = np.concatenate([np.zeros(2 * len(x)), [bounds[0], -bounds[1]]])
    cons = LinearConstraint(a, lb, np.inf)
    res = minimize(lambda c: np.sum((basis @ c - metric) ** 2), np.linalg.lstsq(basis, metric, rcond=None)[0],
                   jac=lambda c: 2 * basis.T @ (basis @ c - metric), hess=lambda c: 2 * basis.T @ basis,
                   method="trust-constr", constraints=[cons], options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000})
    return basis @ res.x


@pytest.mark.parametrize("seed", range(6))
def test_monotone_fit_is_the_optimum_of_the_ctc_problem_on_curves_of_every_shape(seed: int) -> None:
    """Random curves (4 to 9 points; rising, dipping, flat or falling): the exact active-set solution has
    an objective no larger than an interior-point solver's and the same fitted values, and obeys every
    constraint (rising, concave, within bounds)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 10))
    rate = np.sort(rng.uniform(0.02, 2.0, n) * np.linspace(1, 3, n))
    metric = np.clip(0.3 + 0.1 * np.log(rate) * rng.choice([1.0, 0.2, -0.5]) + rng.normal(0, 0.05, n), 0.01, 0.99)
    ours = monotone_fit(rate, metric, (0.0, 1.0))
    ref = qp_reference(rate, metric, (0.0, 1.0))
    assert np.sum((ours - metric) ** 2) <= np.sum((ref - metric) ** 2) + 1e-9
    assert ours == pytest.approx(ref, abs=2e-4)
    slopes = np.diff(ours) / np.diff(np.log10(rate))
    assert np.all(slopes >= -1e-9) and np.all(np.diff(slopes) <= 1e-9)
    assert ours[0] >= -1e-9 and ours[-1] <= 1 + 1e-9


def test_monotone_fit_does_not_depend_on_the_blas_thread_count() -> None:
    """SLSQP (used before) stopped on this curve with 'positive directional derivative' under one BLAS
    thread and converged under two; the exact solution is the same bytes with 1 and 2 threads."""
    code = ("import numpy as np; from vcmbench.metrics.bd import monotone_fit; "
            "print(monotone_fit([0.1, 0.2, 0.4, 0.8], [0.2, 0.35, 0.4, 0.2], (0, 1)).tobytes().hex())")
    out = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        out.append(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)
    assert out[0] == out[1]
    fitted = np.frombuffer(bytes.fromhex(out[0].strip()))
    assert fitted == pytest.approx(qp_reference(np.array([0.1, 0.2, 0.4, 0.8]), np.array([0.2, 0.35, 0.4, 0.2]), (0, 1)), abs=2e-4)


def test_monotone_fit_needs_four_rates_and_keeps_order() -> None:
    with pytest.raises(ValueError, match="at least 4 points"):
        monotone_fit([1, 2, 4], [0.1, 0.2, 0.3])
    rate, metric = [0.8, 0.1, 0.4, 0.2], [0.4, 0.1, 0.35, 0.2]
    fitted = monotone_fit(rate, metric, (0, 1))
    assert list(np.argsort(fitted)) == list(np.argsort(rate))
    assert fit_bounds([0.2, 0.9]) == (0.0, 1.0) and fit_bounds([31.0, 38.0]) == (0.0, 100.0)
    assert fit_bounds([-1.0, 300.0]) == (-math.inf, math.inf)


def test_compare_curves_with_monotone_fit_uses_the_fitted_points() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6], [0.10, 0.20, 0.30, 0.40, 0.45, 0.44]
    rt, mt = [0.04, 0.08, 0.16, 0.3, 0.6, 1.2], [0.12, 0.22, 0.31, 0.40, 0.43, 0.45]
    measured = compare_curves(ra, ma, rt, mt)
    assert any("not monotonic" in w for w in measured.warnings) and measured.fit == "measured"
    fitted = compare_curves(ra, ma, rt, mt, fit="monotone")
    assert fitted.fit == "monotone" and fitted.rate_note == ""
    fa, ft = monotone_fit(ra, ma, (0, 1)), monotone_fit(rt, mt, (0, 1))
    assert fitted.bd_rate == pytest.approx(bd_rate(ra, fa, rt, ft), abs=1e-12)
    assert fitted.bd_metric == pytest.approx(bd_metric(ra, fa, rt, ft), abs=1e-12)
    assert fitted.bd_rate != pytest.approx(measured.bd_rate, abs=1e-3)
    short = compare_curves(ra, ma, rt[:3], mt[:3], fit="monotone", allow_short=True)
    assert math.isnan(short.bd_rate) and short.rate_note == "monotone fit failed"
    with pytest.raises(ValueError, match="unknown BD curve fit"):
        compare_curves(ra, ma, rt, mt, fit="isotonic")  # type: ignore[arg-type]


# Face recall (lower = more private) rises with the rate; the test codec keeps the anchor's recall only at
# 1.5 times the anchor's rate, i.e. it finds fewer faces at every rate: a privacy gain.
RECALL = [0.14, 0.27, 0.37, 0.57, 0.67]
RECALL_RATE = [0.24, 0.35, 0.53, 0.83, 1.34]


def test_lower_is_better_metric_gives_a_better_codec_a_negative_bd_rate() -> None:
    more = [1.5 * r for r in RECALL_RATE]
    result = compare_curves(RECALL_RATE, RECALL, more, RECALL, lower_is_better=True)
    assert result.lower_is_better and result.warnings == ()
    assert result.bd_rate == pytest.approx(100 * (1 / 1.5 - 1), abs=1e-9)  # anchor's rate relative to test's
    assert result.bd_metric > 0  # a privacy gain is positive: anchor recall - test recall at equal rate
    raw = bd_metric(RECALL_RATE, RECALL, more, RECALL)
    assert raw < 0 and result.bd_metric == pytest.approx(-raw, abs=1e-12)
    # The same curves read as higher-is-better: the test is worse, and says so.
    plain = compare_curves(RECALL_RATE, RECALL, more, RECALL)
    assert plain.bd_rate == pytest.approx(50.0, abs=1e-9) and plain.bd_metric == pytest.approx(raw)
    # Swapping the codecs swaps the verdict.
    swapped = compare_curves(more, RECALL, RECALL_RATE, RECALL, lower_is_better=True)
    assert swapped.bd_rate == pytest.approx(50.0, abs=1e-9) and swapped.bd_metric < 0


# --------------------------------------------------------------------------------------------------
# (8) bad input


def test_min_points() -> None:
    assert min_points("cubic") == 4
    assert min_points("pchip") == 2
    assert min_points("akima") == 2


@pytest.mark.parametrize(("method", "n"), [("cubic", 3), ("pchip", 1), ("akima", 1)])
def test_too_few_points_raise(method: str, n: int) -> None:
    rate, metric = RATE_ANCHOR[:n], PSNR_ANCHOR[:n]
    need = min_points(method)
    with pytest.raises(ValueError, match=rf"test curve has {n} points?, but {method} needs at least {need}"):
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR, rate, metric, method=method)
    with pytest.raises(
        ValueError, match=rf"anchor curve has {n} points?, but {method} needs at least {need}"
    ):
        bd_metric(rate, metric, RATE_TEST, PSNR_TEST, method=method)
    result = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, rate, metric, method=method)
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert any(f"needs at least {need}" in w for w in result.warnings)


@pytest.mark.parametrize("bad", [0.0, -12.5, float("nan"), float("inf")])
def test_bad_rate_raises_naming_the_value(bad: float) -> None:
    rates = [9487.76, bad, 2486.44, 1358.24]
    with pytest.raises(ValueError, match=rf"anchor curve has rate {bad!r} at point 2"):
        bd_rate(rates, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    with pytest.raises(ValueError, match=rf"test curve has rate {bad!r} at point 2.*finite and > 0"):
        bd_metric(RATE_ANCHOR, PSNR_ANCHOR, rates, PSNR_TEST)
    result = compare_curves(rates, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert math.isnan(result.rate_overlap) and math.isnan(result.metric_overlap)
    assert any(repr(bad) in w for w in result.warnings)


def test_other_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="anchor curve has 4 rates but 3 metric values"):
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR[:3], RATE_TEST, PSNR_TEST)
    with pytest.raises(ValueError, match="metric value nan at point 1"):
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, [float("nan"), 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="unknown BD interpolation method 'linear'"):
        bd_rate(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, method="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown BD interpolation method"):
        compare_curves(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, "spline")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_overlap"):
        compare_curves(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST, min_overlap=20)
    with pytest.raises(ValueError, match="same rate 1500"):
        bd_metric([1500, 1500, 3000, 6000], [30, 31, 32, 33], RATE_TEST, PSNR_TEST)


def test_compare_curves_never_raises_on_junk_curves() -> None:
    result = compare_curves(["a", "b"], [1, 2], [], [])  # type: ignore[list-item]
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert len(result.warnings) >= 2


def test_result_is_frozen() -> None:
    result = compare_curves(RATE_ANCHOR, PSNR_ANCHOR, RATE_TEST, PSNR_TEST)
    assert isinstance(result, BDResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.bd_rate = 0.0  # type: ignore[misc]
