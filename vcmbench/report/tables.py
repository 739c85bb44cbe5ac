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


#: what coding a point costs (see docs/codec-cost.md): seconds per megapixel of the encoder and the decoder,
#: measured; parameters and thousands of multiply-accumulates per pixel of learned codecs' networks, counted
COST_COLUMNS = ["enc_s_per_MP", "dec_s_per_MP", "params", "enc_kMAC_px", "dec_kMAC_px"]

BD_COLUMNS = ["dataset", "task", "metric", "better", "anchor", "codec", "bd_rate", "bd_rate_note", "bd_metric",
              "bd_metric_note", "fit", "method", "rate_overlap", "metric_overlap", *COST_COLUMNS, "warnings"]  # fmt: skip


def _numbers(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as numbers; all NaN where the table lacks it (results written before it existed)."""
    if column not in df.columns:
        return pd.Series(np.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce")


def unit_costs(df: pd.DataFrame) -> pd.DataFrame:
    """:data:`COST_COLUMNS` of each row's RD point: its coding times over its pixels (seconds per megapixel)
    and its codec's counted parameters and kMAC/pixel (empty for hand-designed codecs and old results)."""
    mp = _numbers(df, "pixels") / 1e6
    return pd.DataFrame({
        "enc_s_per_MP": _numbers(df, "encode_s") / mp, "dec_s_per_MP": _numbers(df, "decode_s") / mp,
        "params": _numbers(df, "params").round().astype("Int64"), "enc_kMAC_px": _numbers(df, "enc_kMAC_px"),
        "dec_kMAC_px": _numbers(df, "dec_kMAC_px"),
    }, index=df.index)  # fmt: skip


def curve_costs(df: pd.DataFrame) -> dict[tuple[str, str, str], dict[str, float]]:
    """(dataset, task, codec) -> :data:`COST_COLUMNS` of the codec's whole curve: all its points' coding
    seconds over all their pixels, and the largest parameter count and kMAC/pixel among its points."""
    pts = df[df.codec != REFERENCE].drop_duplicates(["dataset", "task", "codec", "quality"])
    pts = pts.assign(_enc=_numbers(pts, "encode_s"), _dec=_numbers(pts, "decode_s"), _pix=_numbers(pts, "pixels"),
                     **{c: _numbers(pts, c) for c in ("params", "enc_kMAC_px", "dec_kMAC_px")})  # fmt: skip
    out = {}
    for (ds, task, codec), g in pts.groupby(["dataset", "task", "codec"], sort=False):
        timed = g[g._pix.notna()]
        mp = timed._pix.sum() / 1e6 if len(timed) else np.nan
        out[(str(ds), str(task), str(codec))] = {
            "enc_s_per_MP": timed._enc.sum(min_count=1) / mp if mp else np.nan,
            "dec_s_per_MP": timed._dec.sum(min_count=1) / mp if mp else np.nan,
            **{c: g[c].max() for c in ("params", "enc_kMAC_px", "dec_kMAC_px")},
        }  # fmt: skip
    return out


def cost_note(df: pd.DataFrame) -> list[str]:
    """What the cost columns of a results table are and where their times were measured, in sentences (for
    the report): the machines named by ``timed_on``, and how the MACs were counted."""
    lines = []
    coded = df[df.codec != REFERENCE]
    if _numbers(coded, "encode_s").notna().any():
        machines = sorted({m for v in coded.get("timed_on", pd.Series(dtype=object)).dropna()
                           for m in str(v).split("; ") if m})  # fmt: skip
        where = ("measured on " + " | ".join(machines)) if machines else (
            "measured on a machine this results file does not name (written before vcmbench recorded it; "
            "see provenance.machine in run.json)")
        lines.append(
            f"Coding time: enc_s_per_MP / dec_s_per_MP are encode / decode seconds per megapixel (a point's "
            f"summed times over its pixels; a curve's over all its points), {where}. Times are of that machine: "
            "an encode reused from the store keeps the time of the machine that encoded it."
            + (" The times come from more than one machine: compare them with care." if len(machines) > 1 else "")
        )
    if _numbers(coded, "params").notna().any():
        sizes = sorted({str(v) for v in coded.get("kMAC_at", pd.Series(dtype=object)).dropna()})
        lines.append(
            "Complexity (learned codecs): params = parameters of the rate point's model; enc_kMAC_px / "
            "dec_kMAC_px = thousands of multiply-accumulates per pixel of the encoder's analysis transforms "
            "(g_a + h_a) and the decoder's synthesis transforms (h_s + g_s), counted with PyTorch's "
            f"torch.utils.flop_counter at {', '.join(sizes) or 'the image size'} (padding included, per pixel of "
            "the unpadded image); context models, entropy-parameter networks and the entropy coder are not "
            "counted. A curve shows the largest value among its points. Empty for hand-designed codecs."
        )
    return lines


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
    costs = curve_costs(df)
    rows = []
    for (ds, task, metric, codec), curve in cs.items():
        ref = cs.get((ds, task, metric, anchor))
        if codec == anchor or (metrics and metric not in metrics) or ref is None:
            continue
        is_lower = str(metric).split("/", 1)[0] in lower
        pair = _units(ds, task, anchor, ref) + _units(ds, task, codec, curve)
        reason = items.mismatch(pair) if items is not None else ""
        rows.append({"dataset": ds, "task": task, "metric": metric, "better": "lower" if is_lower else "higher",
                     "anchor": anchor, "codec": codec, **_bd_row(ref, curve, is_lower, opts, reason),
                     **costs.get((str(ds), str(task), str(codec)), {})})  # fmt: skip
    out = pd.DataFrame(rows, columns=BD_COLUMNS)
    return out.assign(params=pd.to_numeric(out.params).round().astype("Int64")), anchor


def points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per RD point, one column per metric."""
    idx = ["dataset", "task", "codec", "quality"]
    df = df.assign(quality=df.quality.astype("string").fillna(""))
    wide = df.pivot_table(index=idx, columns="metric", values="value", aggfunc="first", sort=False)
    cols = ["bpp", "psnr", "n_items", "n_failed"]
    if "kbps" in df.columns and df.kbps.notna().any():  # clips: the bit rate at their frame rate too
        cols.insert(1, "kbps")
    if "scored_by" in df.columns and df.scored_by.notna().any():  # the model that scored each point
        cols.append("scored_by")
    units = df.drop_duplicates(idx)
    rate = units.set_index(idx)[cols]
    cost = unit_costs(units).set_index(units.set_index(idx).index)
    wide = wide.drop(columns=[c for c in cols if c in wide.columns])  # a metric named like a column (imported psnr)
    return rate.join(wide).join(cost).reset_index()


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


def _cell(v: object, floatfmt: str) -> str:
    """One table cell: floats formatted, missing values (None, NaN, pd.NA) empty."""
    if isinstance(v, float):
        return "" if np.isnan(v) else floatfmt.format(v)
    return "" if v is None or v is pd.NA else str(v)


def format_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A plain-text table (no extra dependency)."""
    if df.empty:
        return "(empty)"
    cells = [[str(c) for c in df.columns]]
    for _, row in df.iterrows():
        cells.append([_cell(v, floatfmt) for v in row])
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = []
    for _, row in df.iterrows():
        vals = [_cell(v, floatfmt) for v in row]
        body.append("| " + " | ".join(vals) + " |")
    return "\n".join([head, sep, *body])
