"""Bjontegaard delta (BD) metrics between two rate-metric curves: BD-rate and BD-metric.

Both numbers compare an *anchor* curve with a *test* curve, each given by a few measured points
``(rate, metric)``. Rates go on a log10 axis; the metric (PSNR, mAP, ...) is assumed higher-is-better.

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
from typing import Literal, get_args

import numpy as np
from scipy.interpolate import CubicHermiteSpline

__all__ = ["BDResult", "METHODS", "Method", "bd_metric", "bd_rate", "compare_curves", "min_points"]

Method = Literal["pchip", "cubic", "akima"]
METHODS: tuple[str, ...] = get_args(Method)

Values = Sequence[float] | np.ndarray

_MIN_POINTS: dict[str, int] = {"pchip": 2, "akima": 2, "cubic": 4}
# Akima weights summing to less than this fraction of the curve's largest weight sum count as zero.
_AKIMA_ZERO = 1e-9


def min_points(method: Method) -> int:
    """Smallest number of points per curve that ``method`` accepts (4 for cubic, 2 otherwise)."""
    _check_method(method)
    return _MIN_POINTS[method]


@dataclass(frozen=True)
class BDResult:
    """Outcome of :func:`compare_curves`.

    ``bd_rate`` is in percent and ``bd_metric`` is in metric units; each is ``nan`` when it cannot be
    computed, and ``warnings`` then says why. ``bd_rate`` is ``inf`` (with a warning) when a wildly
    overshooting fit, typically cubic, makes 10**(mean log-rate difference) overflow.
    ``rate_overlap`` / ``metric_overlap`` are the length of the interval covered by both curves divided
    by the length of the interval covered by either, on the log-rate and the metric axis (0 = disjoint,
    1 = same range; ``nan`` if the curve data were unusable).
    """

    bd_rate: float
    bd_metric: float
    method: str
    rate_overlap: float
    metric_overlap: float
    warnings: tuple[str, ...]


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
        raise ValueError(
            f"{quantity} is undefined: the {name} curve has two points with the same {axis} "
            f"{_fmt(shown[dup[0]])}, so its {other} is not a function of the {axis}; "
            "remove or merge one of them"
        )


def _bd_log_rate(anchor: _Curve, test: _Curve, method: str) -> float:
    """Mean log10-rate difference test - anchor over the shared metric interval."""
    ov = _overlap(anchor.metric, test.metric)
    if ov.hi <= ov.lo:
        raise ValueError(
            "BD-rate is undefined: the curves do not overlap on the metric axis (anchor covers "
            f"{_fmt(anchor.metric.min())} to {_fmt(anchor.metric.max())}, test covers "
            f"{_fmt(test.metric.min())} to {_fmt(test.metric.max())})"
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
        raise ValueError(
            "BD-metric is undefined: the curves do not overlap on the rate axis (anchor covers "
            f"{_fmt(anchor.rate.min())} to {_fmt(anchor.rate.max())}, test covers "
            f"{_fmt(test.rate.min())} to {_fmt(test.rate.max())})"
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


def _monotonicity_notes(c: _Curve, max_places: int = 3) -> list[str]:
    """Plain-English notes on where the metric of curve ``c`` fails to rise with rate."""
    dm = np.diff(c.metric)
    dr = np.diff(c.rate)
    bad = np.nonzero((dm <= 0) & (dr > 0))[0]
    if bad.size == 0:
        return []
    if bad.size == dm.size and np.all(dm < 0):
        return [
            f"The {c.name} curve's metric falls at every step as the rate rises. BD values assume a "
            "higher-is-better metric: if lower is better for this metric (e.g. MSE or LPIPS), "
            "negate it first."
        ]
    places = []
    for k in bad[:max_places]:
        r0, r1, m0, m1 = _fmt(c.rate[k]), _fmt(c.rate[k + 1]), _fmt(c.metric[k]), _fmt(c.metric[k + 1])
        if dm[k] < 0:
            places.append(f"it falls from {m0} at rate {r0} to {m1} at rate {r1}")
        else:
            places.append(f"it stays at {m0} from rate {r0} to rate {r1}")
    more = f" (and at {bad.size - max_places} more places)" if bad.size > max_places else ""
    return [
        f"The {c.name} curve is not monotonic (its metric does not always rise with the rate): "
        f"{'; '.join(places)}"
        f"{more}. All points are still used (for BD-rate they are taken in order of metric value), so "
        "treat the BD values for this curve with care."
    ]


def compare_curves(
    rate_anchor: Values,
    metric_anchor: Values,
    rate_test: Values,
    metric_test: Values,
    method: Method = "pchip",
    min_overlap: float = 0.2,
) -> BDResult:
    """Never raises for bad curves: fills warnings and uses nan when not computable.

    Computes BD-rate and BD-metric like :func:`bd_rate` / :func:`bd_metric` and adds user-facing warnings
    for curves that do not overlap (the affected value becomes ``nan``), for overlaps smaller than
    ``min_overlap`` (fraction of the combined range, on either axis; the value is still computed), for
    non-monotonic curves (still computed from all points), and for invalid curve data (both values
    ``nan``).

    Raises:
        ValueError: only for bad arguments that are not curve data: an unknown ``method`` or a
            ``min_overlap`` outside [0, 1].
    """
    _check_method(method)
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap must be a fraction between 0 and 1, got {min_overlap!r}")

    notes: list[str] = []
    curves: list[_Curve] = []
    for name, rate, metric in (("anchor", rate_anchor, metric_anchor), ("test", rate_test, metric_test)):
        try:
            curves.append(_curve(name, rate, metric, method))
        except ValueError as exc:
            notes.append(_sentence(str(exc)))
    if len(curves) < 2:
        notes.append("BD-rate and BD-metric cannot be computed.")
        return BDResult(math.nan, math.nan, method, math.nan, math.nan, tuple(notes))

    anchor, test = curves
    rate_ov = _overlap(anchor.log_rate, test.log_rate).fraction
    metric_ov = _overlap(anchor.metric, test.metric).fraction
    for c in curves:
        notes.extend(_monotonicity_notes(c))
    for axis, fraction, value in (("metric", metric_ov, "BD-rate"), ("rate", rate_ov, "BD-metric")):
        if 0.0 < fraction < min_overlap:
            notes.append(
                f"The curves barely overlap on the {axis} axis: {_share(fraction)} of the combined {axis} "
                f"range is shared (minimum {min_overlap:.0%}). The {value} is averaged over that short "
                "stretch only and rests on few points of each curve."
            )

    values: list[float] = []
    for compute in (_bd_log_rate, _bd_metric):
        try:
            values.append(compute(anchor, test, method))
        except ValueError as exc:
            values.append(math.nan)
            notes.append(_sentence(str(exc)))
    log_rate_delta, metric_delta = values
    rate_pct = _log_rate_delta_to_percent(log_rate_delta) if math.isfinite(log_rate_delta) else math.nan
    if math.isinf(rate_pct):
        notes.append(
            "The BD-rate is too large to represent (it overflowed to infinity): the interpolated curves are "
            "orders of magnitude apart in rate"
            + (
                ", most likely because the cubic fit overshoots; try pchip or akima."
                if method == "cubic"
                else "."
            )
        )
    return BDResult(
        bd_rate=float(rate_pct),
        bd_metric=float(metric_delta),
        method=method,
        rate_overlap=rate_ov,
        metric_overlap=metric_ov,
        warnings=tuple(dict.fromkeys(notes)),
    )


def _share(fraction: float) -> str:
    """A small overlap fraction in words ("only 12%"), never rounding a non-zero value to "0%"."""
    return "less than 1%" if fraction < 0.005 else f"only {fraction:.0%}"


def _sentence(text: str) -> str:
    """An exception message as a sentence: capitalised, ending in a full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."
