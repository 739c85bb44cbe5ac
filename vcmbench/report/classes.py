"""Per-class results of clip datasets the way the MPEG FCM/VCM common test conditions report them.

The rule, as CompressAI-Vision's ``scripts/metrics/gen_mpeg_cttc_csv.py`` (``compute_per_class_results``,
``compute_per_class_mAP``) builds the class rows of the MPEG reporting template:

* **rate**: the i-th rate point of a class joins the i-th rate point of each of its sequences; each rate
  column (``bitrate (kbps)``) is the mean of the sequences' values weighted by their durations
  (coded frames / frame rate). For kbps that is all the class's bits over its total duration.
* **accuracy**: mAP of one COCO evaluation over all frames of the class's sequences pooled together (not a
  mean of per-sequence mAPs).
* **BD-rate**: per class, from the class's own curve (its kbps, its pooled mAP) against the anchor's.
* **overall**: the arithmetic mean of the per-class BD-rates, each class counting once (the template's
  summary; the script itself stops at the class rows).

vcmbench's class rows (``<metric>/Class<X>``, see :func:`vcmbench.run.rates.group_rates` and
:func:`vcmbench.scoring.score_unit`) already follow it: the class's rate point is the unit at the same quality
for every sequence, its kbps is the class's bits over the class's duration and its mAP is scored on the
class's frames pooled. :func:`ctc_class_kbps` states the template's rule so tests can hold the two equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .items import ItemSets
from .tables import BDOptions, bd_table

#: the prefix of class groups of clip datasets (``map/ClassC``)
CLASS_PREFIX = "Class"

CLASS_BD_COLUMNS = ["dataset", "task", "metric", "class", "anchor", "codec", "bd_rate", "bd_metric",
                    "bd_rate_note", "rate_overlap"]  # fmt: skip


def ctc_class_kbps(kbps: Sequence[float], seconds: Sequence[float]) -> float:
    """A class's kbps at one rate point by the CTC template: its sequences' kbps weighted by their durations."""
    k, s = np.asarray(kbps, float), np.asarray(seconds, float)
    return float((k * s).sum() / s.sum())


def class_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The tidy rows of class groups (``<metric>/Class<X>``) with ``base`` and ``class`` columns, their
    rate axis set to the class's kbps (the CTC's rate; ``bpp`` keeps the bits over pixels as ``bpp_pooled``)."""
    metric = df.metric.astype(str)
    parts = metric.str.split("/", n=1, expand=True)
    if parts.shape[1] < 2 or "kbps" not in df.columns:  # no groups, or images (no kbps)
        return df.iloc[0:0]
    mine = parts[1].fillna("").str.startswith(CLASS_PREFIX)
    rows = df[mine]
    return rows.assign(base=parts[0][mine], **{"class": parts[1][mine]}, bpp_pooled=rows.bpp, bpp=rows.kbps)


def class_bd_table(
    df: pd.DataFrame,
    anchor: str | None = None,
    *,
    options: BDOptions | None = None,
    lower: frozenset[str] = frozenset(),
    items: ItemSets | None = None,
) -> pd.DataFrame:
    """BD-rate of every codec against ``anchor`` per class, on each class's own (kbps, pooled accuracy)
    curve, then one ``overall`` row per (dataset, task, metric, codec): the mean of its classes' BD-rates
    (empty, with the reason, when a class has none). Empty when the results have no class rows with a kbps,
    or ``anchor`` has none."""
    rows = class_rows(df)
    rows = rows[rows.kbps.notna()] if not rows.empty else rows
    if rows.empty or (anchor is not None and anchor not in set(rows.codec)):  # e.g. an imported per-sequence table
        return pd.DataFrame(columns=CLASS_BD_COLUMNS)
    bd, _ = bd_table(rows.drop(columns=["base", "class"]), anchor=anchor, options=options, lower=lower, items=items)
    if bd.empty:
        return pd.DataFrame(columns=CLASS_BD_COLUMNS)
    parts = bd.metric.astype(str).str.split("/", n=1, expand=True)
    per_class = bd.assign(metric=parts[0], **{"class": parts[1]})[CLASS_BD_COLUMNS]
    return pd.concat([per_class, overall_rows(per_class)], ignore_index=True)


def overall_rows(per_class: pd.DataFrame) -> pd.DataFrame:
    """The CTC's overall figure of each (dataset, task, metric, anchor, codec): the arithmetic mean of its
    per-class BD-rates and BD-metrics, each class counting once; empty when a class has no BD-rate."""
    out = []
    for (ds, task, metric, anchor, codec), g in per_class.groupby(["dataset", "task", "metric", "anchor", "codec"],
                                                                  sort=False):  # fmt: skip
        missing = sorted(g["class"][g.bd_rate.isna()])
        out.append({
            "dataset": ds, "task": task, "metric": metric, "class": f"overall (mean of {len(g)} classes)",
            "anchor": anchor, "codec": codec, "bd_rate": np.nan if missing else float(g.bd_rate.mean()),
            "bd_metric": float(g.bd_metric.mean()) if g.bd_metric.notna().all() else np.nan,
            "bd_rate_note": f"no BD-rate for {', '.join(missing)}" if missing else "",
            "rate_overlap": np.nan,
        })  # fmt: skip
    return pd.DataFrame(out, columns=CLASS_BD_COLUMNS)
