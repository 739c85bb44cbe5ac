"""Bjontegaard delta (BD) metrics between two rate-metric curves: BD-rate and BD-metric.

Both numbers compare an *anchor* curve with a *test* curve, each given by a few measured points
``(rate, metric)``. Rates go on a log10 axis. :func:`bd_rate` and :func:`bd_metric` return the plain
differences below; :func:`compare_curves` signs them for the metric's direction (see "Metric direction").

* **BD-rate** (:func:`bd_rate`): for each curve, log10(rate) is interpolated as a function of the
  metric; the difference test - anchor is averaged over the metric interval covered by *both* curves, and
  that mean log-rate difference ``d`` is reported in percent, ``100 * (10**d - 1)``. Negative means the
  test needs fewer bits for the same metric.
* **BD-metric** (:func:`bd_metric`; BD-PSNR when the metric is PSNR, BD-accuracy / BD-mAP for task
  metrics): the metric is interpolated as a function of log10(rate) and the difference test - anchor is
  averaged over the shared log-rate interval. Positive means a higher metric at the same rate. (The log
  base does not matter: an average over an interval does not change when the axis is rescaled.)

Each curve's interpolant is integrated in closed form, and only over the interval shared by the two
curves, so nothing is extrapolated. The method was introduced in G. Bjontegaard, "Calculation of average
PSNR differences between RD-curves", ITU-T SG16 Q.6 (VCEG) document VCEG-M33, Austin, TX, USA, April 2001.

Interpolation methods (``method=``)
-----------------------------------
``"cubic"``
    One cubic polynomial per curve, fitted to all of its points (it passes through exactly 4 points and
    is a least-squares fit for more), as in VCEG-M33. Needs at least 4 points, all with different
    abscissae. Known to overshoot badly on some curve shapes.
``"pchip"`` (default)
    Piecewise cubic Hermite interpolation with shape-preserving slopes (F. N. Fritsch and R. E. Carlson,
    "Monotone piecewise cubic interpolation", SIAM J. Numer. Anal. 17(2), 1980; with the end-point
    rule of C. Moler, "Numerical Computing with MATLAB", 2004, ch. 3, i.e. MATLAB's ``pchip``). At an
    interior point the slope is 0 where the neighbouring secant slopes differ in sign or one is 0, and
    otherwise their weighted harmonic mean with weights ``2*h_k + h_(k-1)`` and ``h_k + 2*h_(k-1)``. At
    each end a one-sided three-point formula is used, set to 0 if its sign differs from the end secant's
    and limited to 3 times the end secant if the first two secants differ in sign. Two points give a
    straight line. According to the ``bjontegaard`` package's documentation, this is the interpolation
    of the JCT-VC / JVET common-test-condition spreadsheets (F. Bossen, "Common HM test conditions and
    software reference configurations", JCTVC-L1100, 2013; F. Bossen et al., "VTM common test conditions
    and software reference configurations for SDR video", JVET-T2010, 2020). The authors of the
    ``bjontegaard`` Python package (FAU-LMS) report that their pchip result matches the JVET-T2010
    spreadsheet to at least 10 decimals. Our tests check that our values match that package's to 1e-6
    (in practice to about 1e-11 for pchip and akima). We have not compared against the spreadsheet
    itself.
``"akima"``
    Akima's piecewise cubic (H. Akima, "A new method of interpolation and smooth curve fitting based on
    local procedures", J. ACM 17(4), 1970). The slope at a point is a weighted average of the two
    neighbouring secant slopes, with weights ``|m_(i+1) - m_i|`` and ``|m_(i-1) - m_(i-2)|``. Where both
    weights vanish (below 1e-9 times the largest weight sum of the curve), the plain mean of the two
    secants is used. The secant list is extended by two linearly extrapolated slopes at each end, and two
    points give a straight line. Its use for BD is proposed in C. Herglotz, M. Kraenzler, R. Mons,
    A. Kaup, "Beyond Bjontegaard: Limits of video compression performance comparisons", ICIP 2022.
    The result equals ``bjontegaard.bd_rate(..., method="akima")``, which uses SciPy's
    ``Akima1DInterpolator`` in its default ``"akima"`` (not ``"makima"``) mode.

When a BD value is defined (:func:`compare_curves`)
---------------------------------------------------
VCEG-M33 fits a cubic through 4 points per curve, and the JVET common test conditions (JVET-T2010) code 4
QPs per sequence: the method is defined for curves of at least 4 points that cover much the same range.
:func:`compare_curves` therefore leaves a value empty (``nan``, with a short reason in
:attr:`BDResult.rate_note` / :attr:`BDResult.metric_note`) when a curve has fewer than ``min_points``
(default 4) points, or when the curves overlap on the axis the value is averaged over (the metric axis
for BD-rate, the log-rate axis for BD-metric) by less than ``min_overlap`` (default 0.5) of the range
covered by either curve (the overlap measure of the ``bjontegaard`` package, which warns below 0.75).
Why 0.5: below it, the value averages over a corner of the comparison, not over most of it; two codecs
coded at the same QP ladder spanning L decades of rate, with rates up to 2x apart, still overlap by at
least (L - 0.3) / (L + 0.3), i.e. 0.5 for L = 0.9 decades (a QP 22-37 ladder); the reports quoted before
this rule rested on overlaps of 3-17 %. ``allow_short=True`` computes such values anyway and marks them
in the note. :func:`bd_rate` / :func:`bd_metric` stay the plain computation (as the ``bjontegaard``
package: 2 points suffice for pchip and akima).

Metric direction
----------------
A metric is higher-is-better unless declared lower-is-better (``lower_is_better=True``; tasks declare it
in ``Task.lower_is_better``, e.g. face recall, the privacy metric: fewer faces found again = more
private). :func:`compare_curves` reports both values so that the sign means the same for every metric:

* ``bd_rate`` negative = the test codec is better. For a metric that improves as the rate rises (mAP,
  PSNR; MSE falling) this is the usual BD-rate, test rate relative to anchor rate at equal metric. For a
  metric that worsens as the rate rises (face recall rises with the rate but lower is better), needing
  *more* bits for the same recall is the better result, so the mean log-rate difference is negated:
  the value is the anchor's rate relative to the test's at equal metric.
* ``bd_metric`` positive = the test codec is better: the mean of test - anchor at equal rate for a
  higher-is-better metric, of anchor - test for a lower-is-better one (a privacy gain is positive).

Whether a metric rises or falls with the rate is read from the anchor curve (its value at its highest
rate against its lowest; the test curve's if that is a tie).

Monotone fit (``fit="monotone"``)
---------------------------------
The MPEG VCM common test conditions' reporting scripts (CompressAI-Vision,
``scripts/metrics/curve_fitting.py`` and ``cubic_polynomial.py``, used by ``gen_mpeg_cttc_csv.py
--mode VCM`` for every curve) replace each curve's accuracy values by a constrained least-squares cubic
in log10(rate) before the BD computation: H. Wang et al., "Improvements of the BD-Rate Metrics Using
Monotonic Curve-Fitting Methods", Picture Coding Symposium (PCS) 2024, doi:10.1109/PCS60826.2024.10566370
(MPEG WG 4 contribution m63692). The cubic ``f`` minimises the sum of squared residuals at the measured
points subject to, at every measured log-rate ``x_i``: ``f'(x_i) >= 0`` (rising) and ``f''(x_i) <= 0``
(concave), plus ``f(x_first) >= m_min`` and ``f(x_last) <= m_max`` (the script: 0 and 100, accuracy in
percent). :func:`monotone_fit` solves that same convex problem (to a tight tolerance, in scaled
coordinates; the optimum does not depend on the scaling). Bounds: 0 and 1 for a metric whose values all
lie in [0, 1] (a fraction: the script's percent), 0 and 100 for one within [0, 100] (the script's own),
none otherwise. The fitted points (measured rates, fitted metric) are then interpolated with
``method`` as usual. For a metric that falls with the rate the fit is made on the negated values.
The default, ``fit="measured"``, interpolates the measured points themselves.

Curves that are not monotonic
-----------------------------
Points are sorted by rate internally, so input order never matters. BD-metric interpolates the metric
over log-rate and needs only distinct rates. BD-rate interpolates log-rate over the *metric*, so for it
the points are ordered by metric value instead. On a monotonic curve, which is the usual case for PSNR,
the two orders agree. On a non-monotonic curve (common for mAP at low rates), ordering by metric means
the interpolated rate zig-zags: a point with a lower rate but a higher metric simply comes later in
metric order. No point is dropped. :func:`compare_curves` reports such curves, naming the curve and the
place. For ``"cubic"`` this is exactly what ``bjontegaard`` computes, since a least-squares fit ignores
point order. For ``"pchip"``/``"akima"``, ``bjontegaard`` 1.3.0 refuses such curves (SciPy requires a
monotonic abscissa), so no reference value exists there. Two points of one curve with *equal* metric
values make BD-rate undefined (log-rate would have two values at one metric), and two points with equal
rates make BD-metric undefined. Both raise :class:`ValueError` rather than silently merging points
(the only case where ``bjontegaard``'s cubic returns a value and ours does not).

Use :func:`bd_rate` / :func:`bd_metric` when you want exceptions, and :func:`compare_curves` when
you want a result object with user-facing warnings and ``nan`` for values that cannot be computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from scipy.interpolate import CubicHermiteSpline

__all__ = [
    "BDResult", "DEFAULT_MIN_OVERLAP", "DEFAULT_MIN_POINTS", "FITS", "Fit", "METHODS", "Method", "bd_metric",
    "bd_rate", "compare_curves", "fit_bounds", "min_points", "monotone_fit",
]  # fmt: skip

Method = Literal["pchip", "cubic", "akima"]
METHODS: tuple[str, ...] = get_args(Method)
Fit = Literal["measured", "monotone"]
FITS: tuple[str, ...] = get_args(Fit)

Values = Sequence[float] | np.ndarray

_MIN_POINTS: dict[str, int] = {"pchip": 2, "akima": 2, "cubic": 4}
# Akima weights summing to less than this fraction of the curve's largest weight sum count as zero.
_AKIMA_ZERO = 1e-9
#: points per curve below which compare_curves leaves BD values empty (VCEG-M33; JVET CTC: 4 QPs)
DEFAULT_MIN_POINTS = 4
#: shared share of the range covered by either curve below which compare_curves leaves a value empty
DEFAULT_MIN_OVERLAP = 0.5


def min_points(method: Method) -> int:
    """Smallest number of points per curve that ``method`` accepts (4 for cubic, 2 otherwise)."""
    _check_method(method)
    return _MIN_POINTS[method]


@dataclass(frozen=True)
class BDResult:
    """Outcome of :func:`compare_curves`.

    ``bd_rate`` is in percent and ``bd_metric`` is in metric units, signed so that ``bd_rate < 0`` and
    ``bd_metric > 0`` mean the test codec is better whatever the metric's direction (see the module
    docstring). Each is ``nan`` when it is not computed, and ``rate_note`` / ``metric_note`` then say why
    in a few words ("test: 2 points < 4", "metric overlap 17% < 50%"); a value computed although a rule
    says it should not be (``allow_short``) is kept and its note starts with "allowed:". ``warnings`` are
    the same findings, and others (non-monotonic curves), as sentences. ``bd_rate`` is ``inf`` (with a
    warning) when a wildly overshooting fit, typically cubic, makes 10**(mean log-rate difference)
    overflow. ``rate_overlap`` / ``metric_overlap`` are the length of the interval covered by both curves
    divided by the length of the interval covered by either, on the log-rate and the metric axis
    (0 = disjoint, 1 = same range; ``nan`` if the curve data were unusable). ``fit`` is the curve fit
    (``"measured"`` or ``"monotone"``) and ``lower_is_better`` the metric's declared direction.
    """

    bd_rate: float
    bd_metric: float
    method: str
    rate_overlap: float
    metric_overlap: float
    warnings: tuple[str, ...]
    rate_note: str = ""
    metric_note: str = ""
    fit: str = "measured"
    lower_is_better: bool = False


class _Undefined(ValueError):
    """A BD value the curve data leave undefined; ``short`` is the reason in a few words."""

    def __init__(self, message: str, short: str) -> None:
        super().__init__(message)
        self.short = short


@dataclass(frozen=True)
class _Curve:
    """One validated curve, sorted by rate (ties broken by metric)."""

    name: str
    rate: np.ndarray
    log_rate: np.ndarray
    metric: np.ndarray


@dataclass(frozen=True)
class _Overlap:
    lo: float
    hi: float
    fraction: float


def _check_method(method: str) -> None:
    if method not in _MIN_POINTS:
        raise ValueError(f"unknown BD interpolation method {method!r}; use one of {', '.join(METHODS)}")


def _as_vector(name: str, what: str, values: Values) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the {name} {what} are not numbers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"the {name} {what} must be a flat sequence of numbers, got shape {arr.shape}")
    return arr


def _curve(name: str, rate: Values, metric: Values, method: str) -> _Curve:
    """Validate one curve and sort it by rate; raises ValueError naming the curve and the bad value."""
    r = _as_vector(name, "rates", rate)
    m = _as_vector(name, "metric values", metric)
    if r.size != m.size:
        raise ValueError(f"the {name} curve has {r.size} rates but {m.size} metric values")
    need = _MIN_POINTS[method]
    if r.size < need:
        raise ValueError(
            f"the {name} curve has {r.size} point{'s' if r.size != 1 else ''}, but {method} needs at least "
            f"{need} points per curve"
        )
    for i, v in enumerate(r):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(
                f"the {name} curve has rate {v!r} at point {i + 1}; rates must be finite and > 0 "
                "(they are used on a log scale)"
            )
    for i, v in enumerate(m):
        if not math.isfinite(v):
            raise ValueError(f"the {name} curve has metric value {v!r} at point {i + 1}; it must be finite")
    order = np.lexsort((m, r))
    r, m = r[order], m[order]
    return _Curve(name=name, rate=r, log_rate=np.log10(r), metric=m)


def _overlap(a: np.ndarray, b: np.ndarray) -> _Overlap:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    span = max(a.max(), b.max()) - min(a.min(), b.min())
    fraction = max(hi - lo, 0.0) / span if span > 0 else 0.0
    return _Overlap(lo=float(lo), hi=float(hi), fraction=float(fraction))


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson / Moler shape-preserving slopes at the nodes (x strictly increasing)."""
    h = np.diff(x)
    s = np.diff(y) / h
    n = x.size
    if n == 2:
        return np.array([s[0], s[0]])
    d = np.zeros(n)
    # Interior: weighted harmonic mean of the neighbouring secants when they have the same strict sign.
    for k in range(1, n - 1):
        s0, s1 = s[k - 1], s[k]
        if s0 * s1 > 0:
            w0 = 2.0 * h[k] + h[k - 1]
            w1 = h[k] + 2.0 * h[k - 1]
            d[k] = (w0 + w1) / (w0 / s0 + w1 / s1)
    d[0] = _pchip_end_slope(h[0], h[1], s[0], s[1])
    d[-1] = _pchip_end_slope(h[-1], h[-2], s[-1], s[-2])
    return d


def _pchip_end_slope(h0: float, h1: float, s0: float, s1: float) -> float:
    """One-sided three-point end slope, kept shape preserving (h0, s0: the end interval)."""
    d = ((2.0 * h0 + h1) * s0 - h0 * s1) / (h0 + h1)
    if np.sign(d) != np.sign(s0):
        return 0.0
    if np.sign(s0) != np.sign(s1) and abs(d) > 3.0 * abs(s0):
        return 3.0 * s0
    return float(d)


def _akima_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Akima (1970) slopes at the nodes (x strictly increasing); two points give a straight line."""
    s = np.diff(y) / np.diff(x)
    n = x.size
    if n == 2:
        return np.array([s[0], s[0]])
    # Secants m[2 .. n] plus two linearly extrapolated ones on each side: m has n + 3 entries.
    m = np.empty(n + 3)
    m[2:-2] = s
    m[1] = 2.0 * m[2] - m[3]
    m[0] = 2.0 * m[1] - m[2]
    m[-2] = 2.0 * m[-3] - m[-4]
    m[-1] = 2.0 * m[-2] - m[-3]
    # Node i sits between secants m[i + 1] (left) and m[i + 2] (right).
    w_left = np.abs(m[3:] - m[2:-1])  # |m_(i+1) - m_i| in Akima's notation, weights the left secant
    w_right = np.abs(m[1:-2] - m[:-3])  # |m_(i-1) - m_(i-2)|, weights the right secant
    total = w_left + w_right
    left, right = m[1:-2], m[2:-1]
    d = 0.5 * (left + right)
    defined = total > _AKIMA_ZERO * total.max()
    d[defined] = (w_left[defined] * left[defined] + w_right[defined] * right[defined]) / total[defined]
    return d


def _mean_over(x: np.ndarray, y: np.ndarray, method: str, lo: float, hi: float) -> float:
    """Mean of the interpolant of (x, y) over [lo, hi]; x strictly increasing, lo < hi inside x's range."""
    if method == "cubic":
        # A scaled domain keeps the fit well conditioned; the polynomial itself is the same cubic.
        poly = np.polynomial.Polynomial.fit(x, y, 3)
        antiderivative = poly.integ()
        return float(antiderivative(hi) - antiderivative(lo)) / (hi - lo)
    slopes = _pchip_slopes(x, y) if method == "pchip" else _akima_slopes(x, y)
    spline = CubicHermiteSpline(x, y, slopes, extrapolate=False)
    return float(spline.integrate(lo, hi)) / (hi - lo)


def _log_rate_delta_to_percent(delta: float) -> float:
    """Mean log10-rate difference -> percent rate change; ``inf`` where 10**delta overflows a float."""
    try:
        return (10.0**delta - 1.0) * 100.0
    except OverflowError:
        return math.inf


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _require_distinct(
    name: str, x: np.ndarray, shown: np.ndarray, axis: str, other: str, quantity: str
) -> None:
    """Raise if the sorted abscissae ``x`` of curve ``name`` repeat a value (``shown``: x in user units)."""
    dup = np.nonzero(np.diff(x) <= 0)[0]
    if dup.size:
        raise _Undefined(
            f"{quantity} is undefined: the {name} curve has two points with the same {axis} "
            f"{_fmt(shown[dup[0]])}, so its {other} is not a function of the {axis}; "
            "remove or merge one of them",
            f"{name}: two points with {axis} {_fmt(shown[dup[0]])}",
        )


def _bd_log_rate(anchor: _Curve, test: _Curve, method: str) -> float:
    """Mean log10-rate difference test - anchor over the shared metric interval."""
    ov = _overlap(anchor.metric, test.metric)
    if ov.hi <= ov.lo:
        raise _Undefined(
            "BD-rate is undefined: the curves do not overlap on the metric axis (anchor covers "
            f"{_fmt(anchor.metric.min())} to {_fmt(anchor.metric.max())}, test covers "
            f"{_fmt(test.metric.min())} to {_fmt(test.metric.max())})",
            "no metric overlap",
        )
    means = []
    for c in (anchor, test):
        order = np.lexsort((c.log_rate, c.metric))
        x, y = c.metric[order], c.log_rate[order]
        _require_distinct(c.name, x, x, "metric value", "log-rate", "BD-rate")
        means.append(_mean_over(x, y, method, ov.lo, ov.hi))
    return means[1] - means[0]


def _bd_metric(anchor: _Curve, test: _Curve, method: str) -> float:
    """Mean metric difference test - anchor over the shared log10-rate interval."""
    ov = _overlap(anchor.log_rate, test.log_rate)
    if ov.hi <= ov.lo:
        raise _Undefined(
            "BD-metric is undefined: the curves do not overlap on the rate axis (anchor covers "
            f"{_fmt(anchor.rate.min())} to {_fmt(anchor.rate.max())}, test covers "
            f"{_fmt(test.rate.min())} to {_fmt(test.rate.max())})",
            "no rate overlap",
        )
    means = []
    for c in (anchor, test):
        _require_distinct(c.name, c.log_rate, c.rate, "rate", "metric", "BD-metric")
        means.append(_mean_over(c.log_rate, c.metric, method, ov.lo, ov.hi))
    return means[1] - means[0]


def bd_rate(
    rate_anchor: Values,
    metric_anchor: Values,
    rate_test: Values,
    metric_test: Values,
    method: Method = "pchip",
) -> float:
    """BD-rate in percent (negative = test needs fewer bits for the same metric).

    Points may come in any order and the two curves may have different numbers of points. log10(rate)
    is interpolated over the metric with ``method`` (see the module docstring), and the mean difference
    over the shared metric interval is turned into a percentage. Matches
    ``bjontegaard.bd_rate(..., method=method)`` (version 1.3.0) wherever that package gives a result.

    Raises:
        ValueError: unknown method; a curve with fewer points than the method needs (4 for cubic, 2 for
            pchip/akima), mismatched lengths, a rate that is not finite and > 0, a non-finite metric, two
            points of a curve with the same metric value, or curves that do not overlap on the metric
            axis.
    """
    _check_method(method)
    anchor = _curve("anchor", rate_anchor, metric_anchor, method)
    test = _curve("test", rate_test, metric_test, method)
    return _log_rate_delta_to_percent(_bd_log_rate(anchor, test, method))


def bd_metric(
    rate_anchor: Values,
    metric_anchor: Values,
    rate_test: Values,
    metric_test: Values,
    method: Method = "pchip",
) -> float:
    """BD-metric (e.g. BD-PSNR, or BD-accuracy when the metric is mAP): average metric difference
    test - anchor over the overlapping log-rate interval.

    Points may come in any order. Matches ``bjontegaard.bd_psnr(..., method=method)`` (version 1.3.0),
    which despite its name works for any metric.

    Raises:
        ValueError: as :func:`bd_rate`, except that the checks for equal values and for overlap are on
            the rate axis.
    """
    _check_method(method)
    anchor = _curve("anchor", rate_anchor, metric_anchor, method)
    test = _curve("test", rate_test, metric_test, method)
    return float(_bd_metric(anchor, test, method))


def _trend(anchor: _Curve, test: _Curve) -> int:
    """+1 if the metric rises with the rate, -1 if it falls: the anchor's last point (by rate) against its
    first, the test's if those tie, else +1."""
    for c in (anchor, test):
        step = c.metric[-1] - c.metric[0]
        if step:
            return 1 if step > 0 else -1
    return 1


def _monotonicity_notes(c: _Curve, trend: int, max_places: int = 3) -> list[str]:
    """Plain-English notes on where the metric of curve ``c`` fails to move with the rate the way the
    comparison's ``trend`` says (rise for +1, fall for -1)."""
    dm = np.diff(c.metric)
    dr = np.diff(c.rate)
    bad = np.nonzero((dm * trend <= 0) & (dr > 0))[0]
    if bad.size == 0:
        return []
    places = []
    for k in bad[:max_places]:
        r0, r1, m0, m1 = _fmt(c.rate[k]), _fmt(c.rate[k + 1]), _fmt(c.metric[k]), _fmt(c.metric[k + 1])
        if dm[k] == 0:
            places.append(f"it stays at {m0} from rate {r0} to rate {r1}")
        else:
            places.append(
                f"it {'falls' if dm[k] < 0 else 'rises'} from {m0} at rate {r0} to {m1} at rate {r1}"
            )
    more = f" (and at {bad.size - max_places} more places)" if bad.size > max_places else ""
    return [
        f"The {c.name} curve is not monotonic (its metric does not always {'rise' if trend > 0 else 'fall'} "
        f"with the rate): {'; '.join(places)}{more}. All points are still used (for BD-rate they are taken "
        "in order of metric value; fit='monotone' smooths them first), so treat the BD values for this "
        "curve with care."
    ]


def _direction_notes(trend: int, lower_is_better: bool) -> list[str]:
    """A note when a metric declared higher-is-better falls as the rate rises (an undeclared distortion?)."""
    if trend > 0 or lower_is_better:
        return []
    return [
        "The metric falls as the rate rises although it is taken as higher-is-better, so a better codec "
        "would need more bits for the same value. If lower is better for this metric (e.g. MSE or LPIPS), "
        "declare it (Task.lower_is_better, or --lower-is-better in the report)."
    ]


def fit_bounds(values: Values) -> tuple[float, float]:
    """The monotone fit's bounds for a metric with these values: (0, 1) for a fraction, (0, 100) for a
    metric within [0, 100] (the CTC script's bounds, accuracy in percent), unbounded otherwise."""
    v = np.asarray(values, dtype=float)
    for hi in (1.0, 100.0):
        if v.size and v.min() >= 0.0 and v.max() <= hi:
            return 0.0, hi
    return -math.inf, math.inf


def monotone_fit(rate: Values, metric: Values, bounds: tuple[float, float] = (0.0, 100.0)) -> np.ndarray:
    """The metric values of the MPEG VCM CTC's monotone cubic fit at the given rates (same order).

    Solves the problem of CompressAI-Vision's ``scripts/metrics/cubic_polynomial.py: fit_cubic`` (H. Wang
    et al., PCS 2024, doi:10.1109/PCS60826.2024.10566370): the cubic ``f`` in x = log10(rate) that
    minimises ``sum (f(x_i) - metric_i)**2`` subject to ``f'(x_i) >= 0`` and ``f''(x_i) <= 0`` at every
    point, ``f(x_lowest) >= bounds[0]`` and ``f(x_highest) <= bounds[1]``. The script runs SLSQP from
    (1, 1, 1, 1) on raw values with its default tolerance. SLSQP stops on some curves with "positive
    directional derivative" depending on the BLAS thread count, so here the problem is solved exactly
    instead: it is a strictly convex quadratic programme in 4 coefficients (with 4 or more distinct rates),
    so its optimum is the minimiser of the objective with some set of at most 4 constraints held as
    equalities; :func:`_active_set_optimum` tries every such set and keeps the best feasible point. The
    coordinates are centred and scaled first (the constraints keep their meaning under positive affine
    maps of either axis, so the optimum is the same).

    Raises:
        ValueError: fewer than 4 distinct rates, a non-positive rate, or no feasible cubic (bounds crossed).
    """
    x = np.log10(np.asarray(rate, dtype=float))
    y = np.asarray(metric, dtype=float)
    if np.unique(x).size < 4 or x.size != y.size:
        raise ValueError(f"the monotone fit needs at least 4 points with distinct rates, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"the monotone fit needs finite positive rates and finite metric values, got {list(rate)}, {list(metric)}")
    cx, sx = float(x.mean()), float(x.std())
    cy, sy = float(y.mean()), float(y.std()) or 1.0
    u, v = (x - cx) / sx, (y - cy) / sy
    basis = np.vander(u, 4, increasing=True)  # f(u) = c0 + c1 u + c2 u^2 + c3 u^3
    a, b = _fit_constraints(u, ((bounds[0] - cy) / sy, (bounds[1] - cy) / sy), basis)
    return cy + sy * (basis @ _active_set_optimum(basis, v, a, b))


def _fit_constraints(u: np.ndarray, bounds: tuple[float, float], basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inequality constraints ``a @ c + b >= 0`` of :func:`monotone_fit` in scaled coordinates."""
    zero, one = np.zeros_like(u), np.ones_like(u)
    rows = [np.column_stack([zero, one, 2.0 * u, 3.0 * u**2]),  # f'(u_i) >= 0
            -np.column_stack([zero, zero, 2.0 * one, 6.0 * u])]  # -f''(u_i) >= 0  # fmt: skip
    offsets = [np.zeros(len(u)), np.zeros(len(u))]
    lo_row, hi_row = basis[np.argmin(u)], basis[np.argmax(u)]
    if math.isfinite(bounds[0]):
        rows.append(lo_row[None, :])  # f(u_lowest) - lo >= 0
        offsets.append(np.array([-bounds[0]]))
    if math.isfinite(bounds[1]):
        rows.append(-hi_row[None, :])  # hi - f(u_highest) >= 0
        offsets.append(np.array([bounds[1]]))
    return np.vstack(rows), np.concatenate(offsets)


def _active_set_optimum(basis: np.ndarray, v: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The coefficients ``c`` minimising ``|basis @ c - v|**2`` subject to ``a @ c + b >= 0``.

    For a set S of at most ``n = basis.shape[1]`` constraints, the minimiser with S held as equalities
    solves the KKT system ``[[2 B'B, A_S'], [A_S, 0]] [c, -mu] = [2 B'v, -b_S]``. The problem is convex, so
    a point that is feasible with multipliers ``mu >= 0`` is the optimum; sets are tried smallest first
    (the optimum of a fit has few active constraints) and the search stops at the first size holding
    such a point. Sets whose system is singular (dependent constraints) are skipped: a linearly
    independent subset of them gives the same point. Should rounding hide every multiplier test, the
    feasible point with the smallest objective is returned (the optimum is among them). Deterministic:
    the same arithmetic on any machine and thread count."""
    from itertools import combinations

    n = basis.shape[1]
    gram, rhs = 2.0 * basis.T @ basis, 2.0 * basis.T @ v
    tol = 1e-9 * (1.0 + np.abs(b).max(initial=0.0))
    fallback, fallback_cost = None, math.inf
    for k in range(min(n, len(a)) + 1):
        combos = list(combinations(range(len(a)), k))
        sets = np.array(combos, dtype=int).reshape(len(combos), k)
        kkt = np.zeros((len(sets), n + k, n + k))
        kkt[:, :n, :n] = gram
        kkt[:, :n, n:] = np.transpose(a[sets], (0, 2, 1))
        kkt[:, n:, :n] = a[sets]
        target = np.concatenate([np.broadcast_to(rhs, (len(sets), n)), -b[sets]], axis=1)
        ok = np.abs(np.linalg.det(kkt)) > 1e-12
        if not ok.any():
            continue
        sol = np.linalg.solve(kkt[ok], target[ok][..., None])[..., 0]
        coef, minus_mu = sol[:, :n], sol[:, n:]
        feasible = (coef @ a.T + b >= -tol).all(axis=1)
        if not feasible.any():
            continue
        cost = ((coef @ basis.T - v) ** 2).sum(axis=1)
        optimal = feasible & (minus_mu <= tol).all(axis=1)
        pick = optimal if optimal.any() else feasible
        i = int(np.flatnonzero(pick)[np.argmin(cost[pick])])
        if optimal.any():
            return coef[i]
        if cost[i] < fallback_cost:
            fallback, fallback_cost = coef[i], float(cost[i])
    if fallback is None:
        raise ValueError("the monotone fit has no feasible cubic (the metric bounds exclude every monotone curve)")
    return fallback


def _fit_pair(anchor: _Curve, test: _Curve, trend: int) -> tuple[_Curve, _Curve]:
    """Both curves with their metric replaced by :func:`monotone_fit` (made on ``trend`` x metric)."""
    lo, hi = fit_bounds(np.concatenate([anchor.metric, test.metric]))
    bounds = (lo, hi) if trend > 0 else (-hi, -lo)
    out = []
    for c in (anchor, test):
        try:
            fitted = trend * monotone_fit(c.rate, trend * c.metric, bounds)
        except ValueError as exc:
            raise _Undefined(
                f"the {c.name} curve cannot be given the monotone fit: {exc}", "monotone fit failed"
            ) from None
        out.append(_Curve(c.name, c.rate, c.log_rate, fitted))
    return out[0], out[1]


def _points(n: int) -> str:
    return f"{n} point{'' if n == 1 else 's'}"


def _count_reason(name: str, values: object, need: int) -> str:
    """``"test: 2 points < 4"`` when a curve given as ``values`` has fewer than ``need`` points, else ""."""
    try:
        n = len(values)  # type: ignore[arg-type]
    except TypeError:
        return ""
    return f"{name}: {_points(n)} < {need}" if n < need else ""


def _short_curves(anchor: _Curve, test: _Curve, need: int, allow: bool) -> tuple[list[str], list[str]]:
    """(short reasons, sentences) for curves with fewer than ``need`` points."""
    reasons, notes = [], []
    for c in (anchor, test):
        if c.rate.size < need:
            reasons.append(_count_reason(c.name, c.rate, need))
            notes.append(
                f"The {c.name} curve has {_points(c.rate.size)}; a BD value needs at least {need} per curve "
                "(VCEG-M33; the JVET common test conditions code 4 QPs)"
                + (
                    "; computed anyway (allow_short)."
                    if allow
                    else ", so BD-rate and BD-metric are left empty."
                )
            )
    return reasons, notes


def _thin_overlap(
    fraction: float, need: float, axis: str, value: str, allow: bool
) -> tuple[list[str], list[str]]:
    """(short reason, sentence) when the curves share less than ``need`` of the combined ``axis`` range."""
    if not 0.0 < fraction < need:
        return [], []
    tail = (
        f"; the {value} is computed anyway (allow_short), averaged over that short stretch only."
        if allow
        else f", so the {value} is left empty."
    )
    return [f"{axis} overlap {fraction:.0%} < {need:.0%}"], [
        f"The curves barely overlap on the {axis} axis: {_share(fraction)} of the combined {axis} range is "
        f"shared (minimum {need:.0%}){tail}"
    ]


def _value(compute: Any, anchor: _Curve, test: _Curve, method: str, reasons: list[str], allow: bool,
           notes: list[str]) -> tuple[float, str]:  # fmt: skip
    """One BD value and its note: ``nan`` with the reason when undefined or (unless ``allow``) ruled out."""
    try:
        value = compute(anchor, test, method)
    except _Undefined as exc:
        notes.append(_sentence(str(exc)))
        return math.nan, "; ".join([*reasons, exc.short])
    if reasons and not allow:
        return math.nan, "; ".join(reasons)
    return float(value), ("allowed: " + "; ".join(reasons)) if reasons else ""


def _check_args(method: str, fit: str, min_overlap: float, need: int) -> None:
    _check_method(method)
    if fit not in FITS:
        raise ValueError(f"unknown BD curve fit {fit!r}; use one of {', '.join(FITS)}")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be a fraction between 0 and 1, got {min_overlap!r}")
    if need < 1:
        raise ValueError(f"min_points must be at least 1, got {need!r}")


def _valid_curves(
    named: Sequence[tuple[str, Values, Values]], method: str, need: int, notes: list[str]
) -> tuple[list[_Curve], str]:
    """The curves that pass validation, and the short reason for those that do not (a count below
    ``need`` first: it is the reason a reader can act on)."""
    curves, reasons = [], []
    for name, rate, metric in named:
        try:
            curves.append(_curve(name, rate, metric, method))
        except ValueError as exc:
            notes.append(_sentence(str(exc)))
            reasons.append(_count_reason(name, rate, need) or f"{name}: invalid curve data")
    return curves, "; ".join(reasons)


def compare_curves(
    rate_anchor: Values,
    metric_anchor: Values,
    rate_test: Values,
    metric_test: Values,
    method: Method = "pchip",
    min_overlap: float = DEFAULT_MIN_OVERLAP,
    *,
    min_points: int = DEFAULT_MIN_POINTS,
    allow_short: bool = False,
    fit: Fit = "measured",
    lower_is_better: bool = False,
) -> BDResult:
    """BD-rate and BD-metric where the method defines them; never raises for bad curves.

    Computes the values like :func:`bd_rate` / :func:`bd_metric` (after the monotone fit with
    ``fit="monotone"``), signed for the metric's direction (``bd_rate < 0`` and ``bd_metric > 0``: the
    test is better; see the module docstring). A value is ``nan``, with its reason in the result's note,
    when a curve has fewer than ``min_points`` points or the curves share less than ``min_overlap`` of the
    range covered by either on the axis the value is averaged over (metric axis for BD-rate, log-rate
    axis for BD-metric); ``allow_short=True`` computes it anyway and says so in the note. It is also
    ``nan`` when undefined (no overlap at all, repeated values, invalid curve data). Non-monotonic curves
    are computed from all points, with a warning naming the places.

    Raises:
        ValueError: only for bad arguments that are not curve data: an unknown ``method`` or ``fit``, a
            ``min_overlap`` outside [0, 1] or a ``min_points`` below 1.
    """
    _check_args(method, fit, min_overlap, min_points)
    notes: list[str] = []
    named = (("anchor", rate_anchor, metric_anchor), ("test", rate_test, metric_test))
    curves, invalid = _valid_curves(named, method, min_points, notes)
    if len(curves) < 2:
        notes.append("BD-rate and BD-metric cannot be computed.")
        return BDResult(math.nan, math.nan, method, math.nan, math.nan, tuple(notes), invalid, invalid, fit,
                        lower_is_better)  # fmt: skip
    anchor, test = curves
    trend = _trend(anchor, test)
    for c in curves:
        notes.extend(_monotonicity_notes(c, trend))
    notes.extend(_direction_notes(trend, lower_is_better))
    if fit == "monotone":
        try:
            anchor, test = _fit_pair(anchor, test, trend)
        except _Undefined as exc:
            notes.append(_sentence(str(exc)))
            return BDResult(math.nan, math.nan, method, math.nan, math.nan, tuple(dict.fromkeys(notes)), exc.short,
                            exc.short, fit, lower_is_better)  # fmt: skip
    rate_ov = _overlap(anchor.log_rate, test.log_rate).fraction
    metric_ov = _overlap(anchor.metric, test.metric).fraction
    short, short_notes = _short_curves(anchor, test, min_points, allow_short)
    notes.extend(short_notes)
    values, value_notes = [], []
    for compute, ov, axis, name in (
        (_bd_log_rate, metric_ov, "metric", "BD-rate"),
        (_bd_metric, rate_ov, "rate", "BD-metric"),
    ):
        thin, thin_notes = _thin_overlap(ov, min_overlap, axis, name, allow_short)
        notes.extend(thin_notes)
        value, note = _value(compute, anchor, test, method, short + thin, allow_short, notes)
        values.append(value)
        value_notes.append(note)
    log_rate_delta, metric_delta = values
    if lower_is_better != (trend < 0):  # worse with more bits: more bits for the same value is the gain
        log_rate_delta = -log_rate_delta
    rate_pct = _log_rate_delta_to_percent(log_rate_delta) if math.isfinite(log_rate_delta) else math.nan
    if math.isinf(rate_pct):
        notes.append(_overflow_note(method))
    return BDResult(
        bd_rate=float(rate_pct),
        bd_metric=float(-metric_delta if lower_is_better else metric_delta),
        method=method,
        rate_overlap=rate_ov,
        metric_overlap=metric_ov,
        warnings=tuple(dict.fromkeys(notes)),
        rate_note=value_notes[0],
        metric_note=value_notes[1],
        fit=fit,
        lower_is_better=lower_is_better,
    )


def _overflow_note(method: str) -> str:
    return (
        "The BD-rate is too large to represent (it overflowed to infinity): the interpolated curves are "
        "orders of magnitude apart in rate"
        + (
            ", most likely because the cubic fit overshoots; try pchip or akima."
            if method == "cubic"
            else "."
        )
    )


def _share(fraction: float) -> str:
    """A small overlap fraction in words ("only 12%"), never rounding a non-zero value to "0%"."""
    return "less than 1%" if fraction <= 0.005 else f"only {fraction:.0%}"


def _sentence(text: str) -> str:
    """An exception message as a sentence: capitalised, ending in a full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
