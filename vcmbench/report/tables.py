"""BD-rate tables against an anchor codec, and the plain RD-point table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..errors import VcmbenchError
from ..metrics.bd import DEFAULT_MIN_OVERLAP, DEFAULT_MIN_POINTS, BDResult, compare_curves
from ..plan import REFERENCE
from .items import ItemSets, Unit

#: anchor preference when none is given: the VVC reference encoder, then VVenC
VVC_CODECS = ("vtm", "vvenc")


def pick_anchor(codecs: Sequence[str], anchor: str | None) -> str:
    codecs = [c for c in codecs if c != REFERENCE]
    if anchor is not None:
        if anchor not in codecs:
            raise VcmbenchError(f"anchor codec {anchor!r} is not in the results; codecs present: {', '.join(codecs)}")
        return anchor
    for name in VVC_CODECS:
        if name in codecs:
            return name
    for name in codecs:  # a user card of a VVC adapter, e.g. "vvenc-faster"
        if name.startswith(VVC_CODECS):
            return name
    if not codecs:
        raise VcmbenchError("no coded points in the results: nothing to compare")
    return codecs[0]


@dataclass(frozen=True)
class BDOptions:
    """How BD values are computed (see :mod:`vcmbench.metrics.bd`): interpolation, curve fit, the rules
    that leave a value empty (fewer than ``min_points`` points per curve, overlap below ``min_overlap``,
    curves scored on different items) and whether to compute such values anyway."""

    method: str = "pchip"
    fit: str = "measured"
    min_overlap: float = DEFAULT_MIN_OVERLAP
    min_points: int = DEFAULT_MIN_POINTS
    allow_short: bool = False
    common_items: bool = True

    def caption(self) -> str:
        """How the values were computed, in words (for table captions and plot legends)."""
        fit = "the CTC monotone cubic fit of the points" if self.fit == "monotone" else "the measured points"
        rules = f">= {self.min_points} points per curve, overlap >= {self.min_overlap:.0%}"
        rules += ", same items" if self.common_items else ", items not checked (--no-common-items)"
        if self.allow_short:
            rules += "; values breaking a rule computed anyway (--allow-short) and marked"
        return f"{self.method} through {fit}; {rules}"

    def compare(self, anchor: Curve, test: Curve, lower: bool) -> BDResult:
        """:func:`vcmbench.metrics.bd.compare_curves` of two curves under these options."""
        return compare_curves(anchor.rate, anchor.metric, test.rate, test.metric, method=self.method,  # type: ignore[arg-type]
                              min_overlap=self.min_overlap, min_points=self.min_points, allow_short=self.allow_short,
                              fit=self.fit, lower_is_better=lower)  # type: ignore[arg-type]  # fmt: skip


@dataclass(frozen=True)
class Curve:
    rate: np.ndarray
    metric: np.ndarray
    qualities: tuple[str, ...] = ()


def curves(df: pd.DataFrame) -> dict[tuple[str, str, str, str], Curve]:
    """(dataset, task, metric, codec) -> the curve sorted by rate (reference point excluded)."""
    out = {}
    coded = df[(df.codec != REFERENCE) & df.bpp.notna() & df.value.notna()]
    for (ds, task, metric, codec), g in coded.groupby(["dataset", "task", "metric", "codec"], sort=False):
        g = g.sort_values("bpp")
        q = tuple("" if pd.isna(v) else str(v) for v in g.quality)
        out[(ds, task, metric, codec)] = Curve(g.bpp.to_numpy(float), g.value.to_numpy(float), q)
    return out


def _units(ds: str, task: str, codec: str, curve: Curve) -> list[Unit]:
    return [(str(ds), str(task), str(codec), q) for q in curve.qualities]


def _bd_row(ref: Curve, curve: Curve, lower: bool, opts: BDOptions, items_reason: str) -> dict[str, object]:
    """The BD columns of one codec against the anchor, empty with the reason when the items differ."""
    r = opts.compare(ref, curve, lower)
    row: dict[str, object] = {
        "bd_rate": r.bd_rate, "bd_rate_note": r.rate_note, "bd_metric": r.bd_metric,
        "bd_metric_note": r.metric_note, "fit": r.fit, "method": r.method, "rate_overlap": r.rate_overlap,
        "metric_overlap": r.metric_overlap, "warnings": " | ".join(r.warnings),
    }  # fmt: skip
    if items_reason and opts.common_items:
        row.update(bd_rate=np.nan, bd_metric=np.nan, bd_rate_note=items_reason, bd_metric_note=items_reason)
    elif items_reason:
        for k in ("bd_rate_note", "bd_metric_note"):
            row[k] = "; ".join(filter(None, [str(row[k]), f"{items_reason} (--no-common-items)"]))
    return row


BD_COLUMNS = ["dataset", "task", "metric", "better", "anchor", "codec", "bd_rate", "bd_rate_note", "bd_metric",
              "bd_metric_note", "fit", "method", "rate_overlap", "metric_overlap", "warnings"]  # fmt: skip


def bd_table(
    df: pd.DataFrame,
    anchor: str | None = None,
    method: str | None = None,
    metrics: Sequence[str] | None = None,
    *,
    options: BDOptions | None = None,
    lower: frozenset[str] = frozenset(),
    items: ItemSets | None = None,
) -> tuple[pd.DataFrame, str]:
    """BD-rate (%) and BD-metric of every codec against ``anchor``, per dataset x task x metric.

    ``lower``: metrics (base names) where lower is better; ``items``: the units' item sets (a BD value of
    curves scored on different items is left empty with the reason unless ``options.common_items`` is off).
    Signs: ``bd_rate < 0`` and ``bd_metric > 0`` mean the codec is better than the anchor (see
    :mod:`vcmbench.metrics.bd`); ``better`` says which way the metric is better."""
    opts = options or BDOptions()
    if method is not None:
        opts = replace(opts, method=method)
    anchor = pick_anchor(list(dict.fromkeys(df.codec)), anchor)
    cs = curves(df)
    rows = []
    for (ds, task, metric, codec), curve in cs.items():
        ref = cs.get((ds, task, metric, anchor))
        if codec == anchor or (metrics and metric not in metrics) or ref is None:
            continue
        is_lower = str(metric).split("/", 1)[0] in lower
        pair = _units(ds, task, anchor, ref) + _units(ds, task, codec, curve)
        reason = items.mismatch(pair) if items is not None else ""
        rows.append({"dataset": ds, "task": task, "metric": metric, "better": "lower" if is_lower else "higher",
                     "anchor": anchor, "codec": codec, **_bd_row(ref, curve, is_lower, opts, reason)})  # fmt: skip
    return pd.DataFrame(rows, columns=BD_COLUMNS), anchor


def points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per RD point, one column per metric."""
    idx = ["dataset", "task", "codec", "quality"]
    df = df.assign(quality=df.quality.astype("string").fillna(""))
    wide = df.pivot_table(index=idx, columns="metric", values="value", aggfunc="first", sort=False)
    cols = ["bpp", "psnr", "n_items", "n_failed"]
    if "kbps" in df.columns and df.kbps.notna().any():  # clips: the bit rate at their frame rate too
        cols.insert(1, "kbps")
    rate = df.drop_duplicates(idx).set_index(idx)[cols]
    out = rate.join(wide).reset_index()
    return out


def mark_items(points: pd.DataFrame, items: ItemSets) -> pd.DataFrame:
    """``points`` with an ``items`` column marking each unit scored on fewer items than the others of its
    dataset and task (unchanged when none is)."""
    keys = [(str(r.dataset), str(r.task), str(r.codec), "" if pd.isna(r.quality) else str(r.quality))
            for r in points.itertuples()]  # fmt: skip
    marks = items.marks(keys)
    col = [marks.get(k, "") for k in keys]
    return points.assign(items=col) if any(col) else points


def groups_table(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Per-group scores of clip datasets (``<metric>/<group>``: each sequence, each class), one row per
    (dataset, task, metric, group) and one column per RD point (``codec@quality``), as in the per-sequence
    tables of video-coding-for-machines papers. Empty when the run has no group metrics."""
    g = df[df.metric.astype(str).str.contains("/", regex=False)]
    if g.empty:
        return pd.DataFrame()
    parts = g.metric.astype(str).str.split("/", n=1, expand=True)
    g = g.assign(base=parts[0], group=parts[1])
    if metrics:
        g = g[g.base.isin(metrics)]
    q = g.quality.astype("string").fillna("")
    g = g.assign(point=g.codec.astype(str).where(q == "", g.codec.astype(str) + "@" + q))
    wide = g.pivot_table(index=["dataset", "task", "base", "group"], columns="point", values="value",
                         aggfunc="first", sort=False)  # fmt: skip
    return wide.reset_index().rename(columns={"base": "metric"})


def format_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A plain-text table (no extra dependency)."""
    if df.empty:
        return "(empty)"
    cells = [[str(c) for c in df.columns]]
    for _, row in df.iterrows():
        line = []
        for v in row:
            if isinstance(v, float):
                line.append("" if np.isnan(v) else floatfmt.format(v))
            else:
                line.append("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = []
    for _, row in df.iterrows():
        vals = [("" if np.isnan(v) else floatfmt.format(v)) if isinstance(v, float) else str(v) for v in row]
        body.append("| " + " | ".join(vals) + " |")
    return "\n".join([head, sep, *body])
