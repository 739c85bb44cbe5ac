"""Behaviour tests for vcmbench.metrics.bd written against the mutation lane's survivors (issue 20).

Each BD rule's note (fewer than ``min_points`` points, overlap below ``min_overlap``, a non-monotonic curve,
the metric's direction, invalid curve data, overflow) is pinned word for word, since a report shows these
notes to the reader; numbers are checked against the ``bjontegaard`` package (1.3.0) on the curve shapes
where the slope rules branch (pchip's end-slope limit, plateaus, Akima's vanishing weights) and against an
independent solution of the monotone fit's constrained problem.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from tests.test_bd import ref_bd_metric, ref_bd_rate
from vcmbench.metrics.bd import bd_metric, bd_rate, compare_curves, fit_bounds, monotone_fit

STILL_USED = (
    " All points are still used (for BD-rate they are taken in order of metric value; fit='monotone' smooths "
    "them first), so treat the BD values for this curve with care."
)
DIRECTION = (
    "The metric falls as the rate rises although it is taken as higher-is-better, so a better codec would need "
    "more bits for the same value. If lower is better for this metric (e.g. MSE or LPIPS), declare it "
    "(Task.lower_is_better, or --lower-is-better in the report)."
)
RATES = [1.0, 2.0, 4.0, 8.0]
RISING = [0.1, 0.2, 0.3, 0.4]




def monotonic_notes(result) -> list[str]:
    return [w for w in result.warnings if "not monotonic" in w]


# --------------------------------------------------------------------------------------------------
# non-monotonic curves: the note names the curve, the direction and each place


def test_note_for_a_fall_on_a_rising_curve_is_exact() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4, 0.8], [0.10, 0.20, 0.30, 0.40, 0.45]
    rt, mt = [0.05, 0.1, 0.2, 0.4, 0.8], [0.15, 0.12, 0.33, 0.42, 0.47]
    result = compare_curves(ra, ma, rt, mt)
    assert result.warnings == (
        "The test curve is not monotonic (its metric does not always rise with the rate): it falls from 0.15 "
        "at rate 0.05 to 0.12 at rate 0.1." + STILL_USED,
    )


def test_note_for_a_rise_and_a_plateau_on_a_falling_curve_is_exact() -> None:
    # Falling with the rate (a distortion): a rise of less than 1 unit and a plateau go against the trend.
    ra, ma = [1, 2, 3, 4, 5], [0.5, 0.4, 0.45, 0.45, 0.2]
    rt, mt = [1, 2, 3, 4, 5], [0.45, 0.35, 0.3, 0.25, 0.15]
    result = compare_curves(ra, ma, rt, mt, lower_is_better=True)
    assert monotonic_notes(result) == [
        "The anchor curve is not monotonic (its metric does not always fall with the rate): it rises from 0.4 "
        "at rate 2 to 0.45 at rate 3; it stays at 0.45 from rate 3 to rate 4." + STILL_USED,
    ]
    assert result.rate_note == "anchor: two points with metric value 0.45" and math.isfinite(result.bd_metric)
    # Undeclared, the falling metric also gets the direction note, after the curve notes.
    undeclared = compare_curves(ra, ma, rt, mt).warnings
    assert undeclared == (result.warnings[0], DIRECTION, *result.warnings[1:])


def zigzag(falls: int) -> tuple[list[float], list[float]]:
    """A rising curve that falls back ``falls`` times."""
    metric = [0.1]
    for _ in range(falls):
        metric += [metric[-1] + 0.2, metric[-1] + 0.1]
    metric.append(metric[-1] + 0.3)
    return [float(2**i) for i in range(len(metric))], metric


def test_note_lists_three_places_then_counts_the_rest() -> None:
    rate, metric = zigzag(5)
    result = compare_curves(rate, metric, rate, [m + 0.01 for m in metric], method="pchip")
    (anchor, test) = monotonic_notes(result)
    assert anchor == (
        "The anchor curve is not monotonic (its metric does not always rise with the rate): "
        "it falls from 0.3 at rate 2 to 0.2 at rate 4; it falls from 0.4 at rate 8 to 0.3 at rate 16; "
        "it falls from 0.5 at rate 32 to 0.4 at rate 64 (and at 2 more places)." + STILL_USED
    )
    assert test.startswith("The test curve is not monotonic") and "(and at 2 more places)" in test


def test_note_with_exactly_three_places_has_no_count() -> None:
    rate, metric = zigzag(3)
    note = monotonic_notes(compare_curves(rate, metric, rate, [m * 1.01 for m in metric]))[0]
    assert note.count("it falls from") == 3
    assert "more places" not in note and note.endswith("at rate 64." + STILL_USED)


def test_repeated_point_is_no_monotonicity_problem_but_leaves_bd_undefined() -> None:
    result = compare_curves([1, 2, 2, 4], [0.1, 0.2, 0.2, 0.4], RATES, RISING)
    assert result.warnings == (
        "BD-rate is undefined: the anchor curve has two points with the same metric value 0.2, so its log-rate "
        "is not a function of the metric value; remove or merge one of them.",
        "BD-metric is undefined: the anchor curve has two points with the same rate 2, so its metric is not a "
        "function of the rate; remove or merge one of them.",
    )
    assert result.rate_note == "anchor: two points with metric value 0.2"
    assert result.metric_note == "anchor: two points with rate 2"
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)


# --------------------------------------------------------------------------------------------------
# the metric's direction: read from the anchor's last point against its first, else the test's


@pytest.mark.parametrize(
    ("anchor", "direction"),
    [
        ([0.3, 0.28, 0.45, 0.5], "rise"),  # dips after the first point, ends higher
        ([0.3, 0.4, 0.25, 0.5], "rise"),  # dips before the last point
        ([0.5, 0.1, 0.3, 0.45], "fall"),  # ends lower than it starts, although it rises after its dip
    ],
)
def test_direction_is_the_anchors_last_point_against_its_first(anchor: list[float], direction: str) -> None:
    result = compare_curves(RATES, anchor, RATES, RISING, lower_is_better=direction == "fall")
    notes = monotonic_notes(result)
    assert notes and all(f"does not always {direction} with the rate" in n for n in notes)
    assert DIRECTION not in result.warnings


def test_direction_note_is_exact_and_only_for_an_undeclared_falling_metric() -> None:
    falling = [0.4, 0.3, 0.2, 0.1]
    assert compare_curves(RATES, falling, RATES, [0.35, 0.25, 0.15, 0.05]).warnings == (DIRECTION,)
    # A tie at the anchor's ends: the test curve decides.
    tie = compare_curves(RATES, [0.3, 0.4, 0.35, 0.3], RATES, falling)
    assert DIRECTION in tie.warnings
    assert DIRECTION not in compare_curves(RATES, RISING, RATES, falling).warnings


# --------------------------------------------------------------------------------------------------
# the monotone fit: bounds, direction, and the constrained problem itself


def reference_fit(rate, metric, lo: float, hi: float) -> np.ndarray:
    """The monotone fit's problem posed independently: raw cubic coefficients in log10(rate), SLSQP with
    numerical derivatives from several starts, the best feasible optimum."""
    x, y = np.log10(np.asarray(rate, float)), np.asarray(metric, float)

    def f(b, t):
        return b[0] + b[1] * t + b[2] * t**2 + b[3] * t**3

    cons = [
        {"type": "ineq", "fun": lambda b: b[1] + 2 * b[2] * x + 3 * b[3] * x**2},
        {"type": "ineq", "fun": lambda b: -(2 * b[2] + 6 * b[3] * x)},
    ]
    if math.isfinite(lo):
        cons.append({"type": "ineq", "fun": lambda b: f(b, x.min()) - lo})
    if math.isfinite(hi):
        cons.append({"type": "ineq", "fun": lambda b: hi - f(b, x.max())})
    best = None
    for start in (np.zeros(4), np.ones(4), np.polyfit(x, y, 1)[::-1].tolist() + [0.0, 0.0]):
        res = minimize(lambda b: np.sum((f(b, x) - y) ** 2), np.asarray(start, float), method="SLSQP",
                       constraints=cons, options={"ftol": 1e-14, "maxiter": 2000})  # fmt: skip
        if res.success and (best is None or res.fun < best.fun):
            best = res
    assert best is not None
    return f(best.x, x)


FIT_RATE = [0.1, 0.2, 0.4, 0.8, 1.6]
NEAR_ONE = [0.2, 0.6, 0.9, 0.99, 1.0]  # the unbounded fit ends above 1
NEAR_ZERO = [0.0, 0.02, 0.3, 0.5, 0.6]  # the unbounded fit starts below 0


@pytest.mark.parametrize(
    ("rate", "metric", "bounds"),
    [
        (FIT_RATE, NEAR_ONE, (0.0, 1.0)),
        (FIT_RATE, NEAR_ONE, (-math.inf, 1.0)),
        (FIT_RATE[::-1], NEAR_ZERO[::-1], (0.0, 1.0)),  # rates given highest first
        (FIT_RATE, NEAR_ZERO, (0.0, math.inf)),
        (FIT_RATE, NEAR_ONE, (-math.inf, math.inf)),
    ],
)
def test_monotone_fit_respects_its_bounds(rate, metric, bounds) -> None:
    ours = monotone_fit(rate, metric, bounds)
    assert ours == pytest.approx(reference_fit(rate, metric, *bounds), abs=1e-6)
    lowest, highest = int(np.argmin(rate)), int(np.argmax(rate))
    assert ours[lowest] >= bounds[0] - 1e-9 and ours[highest] <= bounds[1] + 1e-9


def test_bounds_change_the_fit_where_they_bind() -> None:
    unbounded = monotone_fit(FIT_RATE, NEAR_ONE, (-math.inf, math.inf))
    assert unbounded[-1] > 1.005
    assert monotone_fit(FIT_RATE, NEAR_ONE, (0.0, 1.0))[-1] == pytest.approx(1.0, abs=1e-9)


def test_fit_bounds_include_their_ends() -> None:
    assert fit_bounds([0.0, 0.5]) == (0.0, 1.0)
    assert fit_bounds([0.2, 1.0]) == (0.0, 1.0)
    assert fit_bounds([0.0, 100.0]) == (0.0, 100.0)
    assert fit_bounds([-0.1, 0.5]) == (-math.inf, math.inf)


def test_monotone_fit_of_a_fraction_uses_its_bounds_in_compare_curves() -> None:
    rt, mt = [0.12, 0.25, 0.5, 1.0, 2.0], [0.25, 0.62, 0.88, 0.97, 0.99]
    result = compare_curves(FIT_RATE, NEAR_ONE, rt, mt, fit="monotone")
    fa, ft = monotone_fit(FIT_RATE, NEAR_ONE, (0, 1)), monotone_fit(rt, mt, (0, 1))
    assert result.bd_metric == pytest.approx(bd_metric(FIT_RATE, fa, rt, ft), abs=1e-9)
    assert result.bd_rate == pytest.approx(bd_rate(FIT_RATE, fa, rt, ft), abs=1e-7)


def test_monotone_fit_of_a_falling_metric_is_made_on_its_negation() -> None:
    # A falling fraction: the fit is made on -metric with bounds (-1, 0), and turned back.
    ra, ma = FIT_RATE, [1 - m for m in NEAR_ONE]
    rt, mt = [0.12, 0.25, 0.5, 1.0, 2.0], [0.8, 0.5, 0.2, 0.08, 0.03]
    result = compare_curves(ra, ma, rt, mt, fit="monotone", lower_is_better=True)
    fa, ft = -monotone_fit(ra, [-m for m in ma], (-1, 0)), -monotone_fit(rt, [-m for m in mt], (-1, 0))
    assert fa[-1] == pytest.approx(0.0, abs=1e-9)  # the bound binds
    assert result.bd_metric == pytest.approx(-bd_metric(ra, fa, rt, ft), abs=1e-9)
    assert result.bd_rate == pytest.approx(bd_rate(ra, fa, rt, ft), abs=1e-7)


def test_monotone_fit_of_curves_with_tied_ends_takes_them_as_rising() -> None:
    # [0.2, 0.35, 0.4, 0.2] is the curve SLSQP (used before the exact solver) failed on under one BLAS thread
    for ma, mt in (([0.3, 0.4, 0.5, 0.3], [0.2, 0.3, 0.4, 0.2]), ([0.3, 0.4, 0.5, 0.3], [0.2, 0.35, 0.4, 0.2])):
        result = compare_curves(RATES, ma, RATES, mt, fit="monotone")
        fa, ft = monotone_fit(RATES, ma, (0, 1)), monotone_fit(RATES, mt, (0, 1))
        assert np.all(np.diff(fa) >= -1e-12) and np.all(np.diff(ft) >= -1e-12)
        assert result.bd_metric == pytest.approx(bd_metric(RATES, fa, RATES, ft), abs=1e-9)


def test_monotone_fit_notes_name_the_curve() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4, 0.8], [0.10, 0.20, 0.30, 0.40, 0.45]
    failed = compare_curves(ra, ma, ra[:3], ma[:3], fit="monotone", allow_short=True)
    assert failed.warnings[-1] == (
        "The test curve cannot be given the monotone fit: the monotone fit needs at least 4 points with "
        "distinct rates, got 3."
    )
    short = compare_curves(ra, ma, ra, [m + 0.01 for m in ma], fit="monotone", min_points=6, allow_short=True)
    assert short.warnings[0].startswith("The anchor curve has 5 points; a BD value needs at least 6")
    assert short.rate_note == "allowed: anchor: 5 points < 6; test: 5 points < 6"


# --------------------------------------------------------------------------------------------------
# the point-count and overlap rules: exact notes, reasons joined with "; "


def test_short_curve_notes_are_exact() -> None:
    rate, metric = [1.0, 2.0, 4.0], [0.1, 0.2, 0.3]
    empty = compare_curves(RATES, RISING, rate, metric, min_overlap=0)
    assert empty.warnings == (
        "The test curve has 3 points; a BD value needs at least 4 per curve (VCEG-M33; the JVET common test "
        "conditions code 4 QPs), so BD-rate and BD-metric are left empty.",
    )
    assert empty.rate_note == empty.metric_note == "test: 3 points < 4"
    allowed = compare_curves(RATES, RISING, rate, metric, min_overlap=0, allow_short=True)
    assert allowed.warnings == (
        "The test curve has 3 points; a BD value needs at least 4 per curve (VCEG-M33; the JVET common test "
        "conditions code 4 QPs); computed anyway (allow_short).",
    )


def test_thin_overlap_notes_are_exact_and_reasons_are_joined() -> None:
    ra, ma = [100, 200, 400], [30.0, 32.0, 34.0]
    rt, mt = [90, 180, 360, 720], [33.5, 37.0, 38.5, 40.0]  # metric ranges share 0.5 dB of 10 dB
    empty = compare_curves(ra, ma, rt, mt, min_overlap=0.2)
    assert empty.rate_note == "anchor: 3 points < 4; metric overlap 5% < 20%"
    assert "The curves barely overlap on the metric axis: only 5% of the combined metric range is shared " \
        "(minimum 20%), so the BD-rate is left empty." in empty.warnings  # fmt: skip
    allowed = compare_curves(ra, ma, rt, mt, min_overlap=0.2, allow_short=True)
    assert allowed.rate_note == "allowed: anchor: 3 points < 4; metric overlap 5% < 20%"
    assert allowed.metric_note == "allowed: anchor: 3 points < 4"
    assert "The curves barely overlap on the metric axis: only 5% of the combined metric range is shared " \
        "(minimum 20%); the BD-rate is computed anyway (allow_short), averaged over that short stretch " \
        "only." in allowed.warnings  # fmt: skip
    assert allowed.bd_rate == pytest.approx(bd_rate(ra, ma, rt, mt), abs=1e-12)


def test_tiny_overlap_is_said_to_be_less_than_one_percent() -> None:
    # The metric ranges 0..top and 198..200 share (top - 198) of 200: 0.1 % and exactly 0.5 % (which the
    # "{:.0%}" format rounds to "0%"); 198..202 shares 2 of 202, 0.99 %.
    for top, share in ((198.2, "less than 1%"), (199.0, "less than 1%"), (200.0, "only 1%")):
        mt = [198.0, 198.5, 199.5, 200.0] if top < 200 else [198.0, 199.0, 200.5, 202.0]
        result = compare_curves(RATES, [0.0, 50.0, 100.0, top], RATES, mt)
        note = next(w for w in result.warnings if "barely overlap on the metric axis" in w)
        assert f"axis: {share} of the combined metric range" in note


def test_overlap_equal_to_the_minimum_is_enough() -> None:
    result = compare_curves(RATES, RISING, RATES[::-1], RISING[::-1], min_overlap=1.0)
    assert result.warnings == () and result.bd_rate == pytest.approx(0.0, abs=1e-12)


def test_no_overlap_is_undefined_not_thin() -> None:
    result = compare_curves(RATES, RISING, RATES, [0.5, 0.6, 0.7, 0.8])
    assert result.rate_note == "no metric overlap"
    assert result.warnings == (
        "BD-rate is undefined: the curves do not overlap on the metric axis (anchor covers 0.1 to 0.4, test "
        "covers 0.5 to 0.8).",
    )
    short = compare_curves(RATES, RISING, RATES[:3], [0.5, 0.6, 0.7], allow_short=True)
    assert short.rate_note == "test: 3 points < 4; no metric overlap"


def test_invalid_curve_reasons() -> None:
    one = compare_curves(RATES, RISING, [1.0], [0.2])
    assert one.rate_note == one.metric_note == "test: 1 point < 4"
    assert one.warnings == (
        "The test curve has 1 point, but pchip needs at least 2 points per curve.",
        "BD-rate and BD-metric cannot be computed.",
    )
    bad = compare_curves([1.0, 0.0, 4.0, 8.0], RISING, [1.0], [0.2])
    assert bad.rate_note == "anchor: invalid curve data; test: 1 point < 4"
    scalar = compare_curves(5.0, 0.3, RATES, RISING)  # type: ignore[arg-type]
    assert scalar.rate_note == "anchor: invalid curve data"
    assert scalar.warnings[0] == "The anchor rates must be a flat sequence of numbers, got shape ()."


def test_messages_become_sentences_without_doubling_the_full_stop() -> None:
    ragged = compare_curves([[1.0, 2.0], [3.0]], RISING, RATES, RISING)  # type: ignore[list-item]
    assert ragged.rate_note == "anchor: 2 points < 4"
    first = ragged.warnings[0]
    assert first.startswith("The anchor rates are not numbers: ") and first.endswith(".")
    assert not first.endswith("..")


@pytest.mark.parametrize(("min_overlap", "ok"), [(1.0, True), (0.0, True), (1.5, False), (-0.1, False)])
def test_min_overlap_must_be_a_fraction(min_overlap: float, ok: bool) -> None:
    if ok:
        assert compare_curves(RATES, RISING, RATES, RISING, min_overlap=min_overlap).bd_rate == 0.0
    else:
        with pytest.raises(
            ValueError, match=rf"min_overlap must be a fraction between 0 and 1, got {min_overlap}"
        ):
            compare_curves(RATES, RISING, RATES, RISING, min_overlap=min_overlap)


def test_min_points_and_fit_arguments() -> None:
    assert compare_curves(RATES, RISING, RATES, RISING, min_points=1).rate_note == ""
    with pytest.raises(ValueError, match="min_points must be at least 1, got 0"):
        compare_curves(RATES, RISING, RATES, RISING, min_points=0)
    with pytest.raises(ValueError, match="unknown BD curve fit 'smooth'; use one of measured, monotone$"):
        compare_curves(RATES, RISING, RATES, RISING, fit="smooth")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# overflow notes


def test_overflow_note_for_pchip_is_exact() -> None:
    far = [r * 1e300 for r in RATES]
    near = [r * 1e-300 for r in RATES]
    result = compare_curves(near, RISING, far, RISING)
    assert result.bd_rate == math.inf and result.rate_note == ""
    assert result.warnings[-1] == (
        "The BD-rate is too large to represent (it overflowed to infinity): the interpolated curves are orders "
        "of magnitude apart in rate."
    )


def test_overflow_note_for_cubic_suggests_another_method() -> None:
    ra = [0.12194488, 0.13627935, 0.29529677, 0.59494584, 0.81750726, 2.00954769]
    ma = [0.16468117, 0.17947728, 0.30967968, 0.41100148, 0.43521409, 0.45649708]
    rt = [0.14822249, 0.50006591, 0.60820512, 2.61278543]
    mt = [0.3444258, 0.44199559, 0.44239249, 0.44254555]
    result = compare_curves(ra, ma, rt, mt, method="cubic", allow_short=True)
    assert result.warnings[-1] == (
        "The BD-rate is too large to represent (it overflowed to infinity): the interpolated curves are orders "
        "of magnitude apart in rate, most likely because the cubic fit overshoots; try pchip or akima."
    )


# --------------------------------------------------------------------------------------------------
# the interpolants' slope rules against the bjontegaard package


def test_pchip_end_slope_limit_matches_package_tightly() -> None:
    # The first secants differ in sign and |s1| > 3 |s0|: the end slope is limited to 3 times the secant.
    ra, ma = [0.1, 0.2, 0.4, 0.8, 1.6], [0.30, 0.28, 0.45, 0.52, 0.55]
    rt, mt = [0.1, 0.2, 0.4, 0.8], [0.32, 0.40, 0.48, 0.50]
    for a, b in (((ra, ma), (rt, mt)), ((rt, mt), (ra, ma))):
        assert bd_metric(*a, *b) == pytest.approx(ref_bd_metric(*a, *b, "pchip"), abs=1e-9)


def test_pchip_on_plateaus_matches_package_without_numpy_warnings() -> None:
    ra, ma = [0.1, 0.2, 0.4, 0.8, 1.6], [0.1, 0.3, 0.3, 0.3, 0.5]
    rt, mt = [0.12, 0.25, 0.5, 1.0, 2.0], [0.15, 0.2, 0.35, 0.35, 0.55]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flat secant must not divide by zero
        ours = bd_metric(ra, ma, rt, mt)
    assert ours == pytest.approx(ref_bd_metric(ra, ma, rt, mt, "pchip"), abs=1e-9)


def test_akima_weight_threshold_matches_package() -> None:
    # At the anchor's third point both Akima weights are tiny (1e-6) against the curve's largest (8e4): below
    # the 1e-9 relative threshold, so the slope there is the mean of the two secants, as in SciPy. (The test
    # curve ends inside the interval after that point: over whole intervals an interior slope cancels out.)
    x = np.arange(6.0)
    ra, ma = 10**x, np.array([0.0, 1e4, 2e4, 7e4, 12e4 + 1e-6, 17e4])
    rt, mt = 10 ** (x / 2), np.array([500.0, 1.3e4, 2.9e4, 7.1e4, 11.9e4, 16.5e4])
    ours = bd_metric(ra, ma, rt, mt, method="akima")
    assert ours == pytest.approx(ref_bd_metric(ra, ma, rt, mt, "akima"), rel=1e-12)


def test_akima_on_a_straight_line_matches_package() -> None:
    # Every weight is 0: all slopes fall back to the mean of the secants (here the line's slope).
    x = np.arange(5.0)
    ra, rt = 10**x, 10**x * 1.5
    y = 3 * x + 1
    assert bd_metric(ra, y, rt, y + 0.5, method="akima") == pytest.approx(
        ref_bd_metric(ra, y, rt, y + 0.5, "akima"), abs=1e-9
    )
    assert bd_rate(ra, y, rt, y + 0.5, method="akima") == pytest.approx(
        ref_bd_rate(ra, y, rt, y + 0.5, "akima"), abs=1e-9
    )


# --------------------------------------------------------------------------------------------------
# the result object on every early exit, and the remaining messages


def test_invalid_curves_give_a_complete_empty_result() -> None:
    result = compare_curves([1.0], [0.2], RATES, RISING, method="akima", fit="monotone", lower_is_better=True)
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert math.isnan(result.rate_overlap) and math.isnan(result.metric_overlap)
    assert result.method == "akima" and result.fit == "monotone" and result.lower_is_better is True
    assert result.rate_note == result.metric_note == "anchor: 1 point < 4"
    assert result.warnings == (
        "The anchor curve has 1 point, but akima needs at least 2 points per curve.",
        "BD-rate and BD-metric cannot be computed.",
    )


def test_failed_monotone_fit_gives_a_complete_empty_result() -> None:
    ra, ma = [0.05, 0.1, 0.2, 0.4, 0.8], [0.45, 0.40, 0.30, 0.20, 0.10]
    result = compare_curves(ra, ma, ra[:3], ma[:3], method="akima", fit="monotone", lower_is_better=True)
    assert math.isnan(result.bd_rate) and math.isnan(result.bd_metric)
    assert math.isnan(result.rate_overlap) and math.isnan(result.metric_overlap)
    assert result.method == "akima" and result.fit == "monotone" and result.lower_is_better is True
    assert result.rate_note == result.metric_note == "monotone fit failed"
    assert isinstance(result.warnings, tuple) and result.warnings[-1].startswith("The test curve cannot be")


def test_monotone_fit_of_non_finite_values_says_why() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match=r"^the monotone fit needs finite positive rates and finite metric values"):
            monotone_fit(RATES, [0.1, math.inf, 0.3, 0.4])
        with pytest.raises(ValueError, match=r"^the monotone fit needs finite positive rates"):
            monotone_fit([0, 2, 4, 8], [0.1, 0.2, 0.3, 0.4])


def test_rate_axis_notes_are_exact() -> None:
    result = compare_curves(RATES, RISING, [6, 12, 24, 48], [0.15, 0.25, 0.35, 0.45])
    assert result.metric_note == "rate overlap 7% < 50%"
    assert result.warnings == (
        "The curves barely overlap on the rate axis: only 7% of the combined rate range is shared (minimum 50%), "
        "so the BD-metric is left empty.",
    )
    apart = compare_curves(RATES, RISING, [16, 32, 64, 128], RISING)
    assert apart.metric_note == "no rate overlap" and apart.rate_overlap == 0.0
    assert apart.warnings == (
        "BD-metric is undefined: the curves do not overlap on the rate axis (anchor covers 1 to 8, test covers "
        "16 to 128).",
    )


def test_constant_curves_have_no_overlap_on_their_axis() -> None:
    result = compare_curves(RATES, [0.3] * 4, RATES, [0.3] * 4)
    assert result.metric_overlap == 0.0 and result.rate_overlap == 1.0
    assert result.rate_note == "no metric overlap" and result.bd_metric == 0.0


def test_bad_values_are_named() -> None:
    words = compare_curves(RATES, RISING, RATES, ["a", "b", "c", "d"])  # type: ignore[list-item]
    assert (
        words.warnings[0] == "The test metric values are not numbers: could not convert string to float: 'a'."
    )
    zero = compare_curves([1.0, 0.0, 4.0, 8.0], RISING, RATES, RISING)
    assert zero.warnings[0] == (
        "The anchor curve has rate 0.0 at point 2; rates must be finite and > 0 (they are used on a log scale)."
    )
    two = compare_curves(RATES, RISING, [1.0, 2.0], [0.1, 0.2], method="cubic")
    assert two.warnings[0] == "The test curve has 2 points, but cubic needs at least 4 points per curve."
    with pytest.raises(
        ValueError, match=r"^unknown BD interpolation method 'spline'; use one of pchip, cubic, akima$"
    ):
        bd_rate(RATES, RISING, RATES, RISING, method="spline")  # type: ignore[arg-type]
