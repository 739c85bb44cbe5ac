"""BD-rate tables against an anchor codec, and the plain RD-point table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import VcmbenchError
from ..metrics.bd import compare_curves
from ..plan import REFERENCE

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
class Curve:
    rate: np.ndarray
    metric: np.ndarray


def curves(df: pd.DataFrame) -> dict[tuple[str, str, str, str], Curve]:
    """(dataset, task, metric, codec) -> the curve sorted by rate (reference point excluded)."""
    out = {}
    coded = df[(df.codec != REFERENCE) & df.bpp.notna() & df.value.notna()]
    for (ds, task, metric, codec), g in coded.groupby(["dataset", "task", "metric", "codec"], sort=False):
        g = g.sort_values("bpp")
        out[(ds, task, metric, codec)] = Curve(g.bpp.to_numpy(float), g.value.to_numpy(float))
    return out


def bd_table(
    df: pd.DataFrame, anchor: str | None = None, method: str = "pchip", metrics: Sequence[str] | None = None
) -> tuple[pd.DataFrame, str]:
    """BD-rate (%) and BD-metric of every codec against ``anchor``, per dataset x task x metric."""
    anchor = pick_anchor(list(dict.fromkeys(df.codec)), anchor)
    cs = curves(df)
    rows = []
    for (ds, task, metric, codec), curve in cs.items():
        if codec == anchor or (metrics and metric not in metrics):
            continue
        ref = cs.get((ds, task, metric, anchor))
        if ref is None:
            continue
        r = compare_curves(ref.rate, ref.metric, curve.rate, curve.metric, method=method)  # type: ignore[arg-type]
        rows.append(
            {
                "dataset": ds, "task": task, "metric": metric, "anchor": anchor, "codec": codec,
                "bd_rate": r.bd_rate, "bd_metric": r.bd_metric, "method": r.method,
                "rate_overlap": r.rate_overlap, "metric_overlap": r.metric_overlap, "warnings": " | ".join(r.warnings),
            }
        )  # fmt: skip
    cols = ["dataset", "task", "metric", "anchor", "codec", "bd_rate", "bd_metric", "method", "rate_overlap",
            "metric_overlap", "warnings"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols), anchor


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
