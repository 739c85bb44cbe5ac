"""The regression gate: compare a new results table with a baseline under explicit failure rules.

Rules (``--fail``), in the spirit of asv's ``compare``:

- ``bd_rate:+1.0`` fails when a codec's BD-rate of NEW against BASELINE (same
  dataset, task, metric) is above +1.0 % (more bits for the same accuracy);
- ``<metric>:-0.01`` (e.g. ``map:-0.01``) fails when a point's metric gets worse by
  more than 0.01 (same dataset, task, codec, quality; the uncompressed point included):
  drops for a higher-is-better metric, rises for a lower-is-better one (``face_recall``);
- ``bpp:+2.0`` fails when a point's bpp rises by more than 2 %.

A curve or point of the baseline missing from NEW also fails. BD values follow
:mod:`vcmbench.metrics.bd` (empty, with the reason, for curves of fewer than 4 points or
overlapping too little, unless ``allow_short``), signed so that a positive BD-rate is a
regression whatever the metric's direction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pandas as pd

from ..errors import VcmbenchError
from .tables import BDOptions, curves, format_table


@dataclass(frozen=True)
class Rule:
    key: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Rule:
        if ":" not in text:
            raise VcmbenchError(f"--fail {text!r}: expected KEY:THRESHOLD, e.g. bd_rate:+1.0 or map:-0.01")
        key, value = text.split(":", 1)
        try:
            threshold = float(value)
        except ValueError:
            raise VcmbenchError(f"--fail {text!r}: threshold {value!r} is not a number") from None
        if key == "bd_rate" and threshold < 0:
            raise VcmbenchError(f"--fail {text!r}: a bd_rate threshold is the allowed increase, e.g. bd_rate:+1.0")
        if key not in ("bd_rate", "bpp") and threshold > 0:
            raise VcmbenchError(f"--fail {text!r}: a metric threshold is the allowed drop, e.g. {key}:-0.01")
        return cls(key, threshold)


@dataclass
class Comparison:
    points: pd.DataFrame
    curves: pd.DataFrame
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def render(self) -> str:
        parts = []
        if not self.points.empty:
            parts.append("Per point (new - baseline):\n" + format_table(self.points))
        if not self.curves.empty:
            parts.append("Per curve (BD of new against baseline):\n" + format_table(self.curves))
        parts += [f"note: {n}" for n in self.notes]
        if self.violations:
            parts.append("REGRESSION:\n  " + "\n  ".join(self.violations))
        else:
            parts.append("OK: no rule violated")
        return "\n\n".join(parts)


def _is_lower(metric: str, lower: frozenset[str]) -> bool:
    """Whether lower is better for ``metric`` (a grouped ``map/ClassA`` goes by ``map``)."""
    return str(metric).split("/", 1)[0] in lower


def _point_violation(label: str, old: float, new: float, threshold: float, lower: bool) -> str:
    if not lower:
        return f"{label}: {old:.4f} -> {new:.4f} ({new - old:+.4f} < {threshold:+g})"
    return f"{label}: {old:.4f} -> {new:.4f} ({new - old:+.4f}; lower is better: a loss of {new - old:.4f} > {-threshold:g})"


def compare(
    baseline: pd.DataFrame,
    new: pd.DataFrame,
    rules: Sequence[Rule],
    method: str | None = None,
    *,
    options: BDOptions | None = None,
    lower: frozenset[str] = frozenset(),
) -> Comparison:
    """Check NEW against BASELINE under ``rules``; ``lower``: metrics (base names) where lower is better."""
    opts = options or BDOptions()
    if method is not None:
        opts = replace(opts, method=method)
    idx = ["dataset", "task", "codec", "quality", "metric"]
    b = baseline.assign(quality=baseline.quality.fillna("")).set_index(idx)
    n = new.assign(quality=new.quality.fillna("")).set_index(idx)
    result = Comparison(pd.DataFrame(), pd.DataFrame())
    metric_rules = {r.key: r.threshold for r in rules if r.key not in ("bd_rate", "bpp")}
    bpp_rule = next((r.threshold for r in rules if r.key == "bpp"), None)
    bd_rule = next((r.threshold for r in rules if r.key == "bd_rate"), None)
    known_metrics = set(baseline.metric) | set(new.metric)
    for key in metric_rules:
        if key not in known_metrics:
            raise VcmbenchError(f"--fail {key}:…: no metric {key!r} in the tables; metrics: {sorted(known_metrics)}")

    rows = []
    for key, brow in b.iterrows():
        ds, task, codec, q, metric = key
        label = f"{ds}/{task}/{codec}" + (f"@{q}" if q else "") + f" {metric}"
        if key not in n.index:
            result.violations.append(f"{label}: present in the baseline, missing in the new results")
            continue
        nrow = n.loc[key]
        dv = float(nrow.value) - float(brow.value)
        dbpp = (
            100.0 * (float(nrow.bpp) / float(brow.bpp) - 1.0)
            if pd.notna(brow.bpp) and pd.notna(nrow.bpp) and float(brow.bpp) > 0
            else math.nan
        )
        status = "ok"
        gain = -dv if _is_lower(metric, lower) else dv
        if metric in metric_rules and gain < metric_rules[metric] - 1e-12:
            status = "FAIL"
            result.violations.append(_point_violation(label, float(brow.value), float(nrow.value),
                                                      metric_rules[metric], _is_lower(metric, lower)))  # fmt: skip
        if bpp_rule is not None and not math.isnan(dbpp) and dbpp > bpp_rule + 1e-12:
            status = "FAIL"
            result.violations.append(f"{label}: bpp {float(brow.bpp):.4f} -> {float(nrow.bpp):.4f} ({dbpp:+.2f} % > {bpp_rule:+g} %)")
        rows.append(
            {"point": label, "base": float(brow.value), "new": float(nrow.value), "delta": dv,
             "base_bpp": brow.bpp, "new_bpp": nrow.bpp, "bpp_%": dbpp, "status": status}
        )  # fmt: skip
    extra = [k for k in n.index if k not in b.index]
    if extra:
        result.notes.append(f"{len(extra)} point(s) only in the new results (not gated), e.g. {'/'.join(map(str, extra[0]))}")
    result.points = pd.DataFrame(rows)

    crow = []
    bc, nc = curves(baseline), curves(new)
    for key, bcur in bc.items():
        ncur = nc.get(key)
        ds, task, metric, codec = key
        label = f"{ds}/{task}/{codec} {metric}"
        if ncur is None:
            continue  # already reported per point
        r = opts.compare(bcur, ncur, _is_lower(metric, lower))
        status = "ok"
        if bd_rule is not None and not math.isnan(r.bd_rate) and r.bd_rate > bd_rule + 1e-9:
            status = "FAIL"
            result.violations.append(f"{label}: BD-rate of new vs baseline {r.bd_rate:+.2f} % > {bd_rule:+g} %")
        if bd_rule is not None and math.isnan(r.bd_rate):
            result.notes.append(f"{label}: BD-rate not computable ({r.rate_note}: {'; '.join(r.warnings)}); "
                                "point rules still apply")  # fmt: skip
        crow.append({"curve": label, "bd_rate_%": r.bd_rate, "bd_metric": r.bd_metric,
                     "note": "; ".join(dict.fromkeys(filter(None, (r.rate_note, r.metric_note)))), "status": status})  # fmt: skip
    result.curves = pd.DataFrame(crow)
    return result
