"""Accuracy-vs-bpp RD curves: one line per codec, the uncompressed accuracy as a dashed line."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..plan import REFERENCE

METRIC_LABELS = {
    "map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75", "psnr": "PSNR (dB, RGB)",
    "segm_map": "mask mAP@[.5:.95]", "pq": "PQ",
}  # fmt: skip


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _bd_labels(bd: pd.DataFrame | None, ds: str, task: str, metric: str) -> dict[str, str]:
    """Legend text per codec: its BD-rate against the anchor, or why it has none."""
    if bd is None or bd.empty:
        return {}
    rows = bd[(bd.dataset == ds) & (bd.task == task) & (bd.metric == metric)]
    out = {str(a): f"{a} (anchor)" for a in rows.anchor}
    for r in rows.itertuples():
        note = str(r.bd_rate_note) if pd.notna(r.bd_rate_note) else ""
        value = f"BD-rate {r.bd_rate:+.1f} %" if pd.notna(r.bd_rate) else "BD-rate none"
        out[str(r.codec)] = f"{r.codec}: {value}" + (f" ({note})" if note else "")
    return out


def _ylabel(metric: str, lower: frozenset[str]) -> str:
    label = METRIC_LABELS.get(metric, metric)
    return label + (" (lower is better)" if metric.split("/", 1)[0] in lower else "")


def plot_rd(
    df: pd.DataFrame,
    out_dir: Path,
    logx: bool = False,
    formats: tuple[str, ...] = ("png", "svg"),
    *,
    bd: pd.DataFrame | None = None,
    caption: str = "",
    lower: frozenset[str] = frozenset(),
) -> list[Path]:
    """Draw one figure per (dataset, task, metric); returns the written files.

    With ``bd`` (a :func:`vcmbench.report.tables.bd_table`), each codec's legend entry carries its BD-rate
    against the anchor or the reason it has none, and ``caption`` (how it was computed) titles the legend;
    a lower-is-better metric (``lower``) says so on its axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (ds, task, metric), g in df.groupby(["dataset", "task", "metric"], sort=False):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        labels = _bd_labels(bd, str(ds), str(task), str(metric))
        coded = g[(g.codec != REFERENCE) & g.bpp.notna()]
        for codec, c in coded.groupby("codec", sort=False):
            c = c.sort_values("bpp")
            ax.plot(c.bpp, c.value, marker="o", label=labels.get(str(codec), str(codec)))
        ref = g[g.codec == REFERENCE]
        if not ref.empty and pd.notna(ref.value.iloc[0]):
            ax.axhline(float(ref.value.iloc[0]), linestyle="--", color="0.3", label=f"uncompressed ({ref.value.iloc[0]:.3f})")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(_ylabel(str(metric), lower))
        n = int(g.n_items.max()) if "n_items" in g and g.n_items.notna().any() else None
        ax.set_title(f"{task} on {ds}" + (f" ({n} images)" if n else ""))
        ax.grid(True, alpha=0.3)
        legend = ax.legend(loc="best", fontsize="small", title=f"BD: {caption}" if labels and caption else None)
        if legend.get_title():
            legend.get_title().set_fontsize("x-small")
        fig.tight_layout()
        stem = _slug(f"rd_{ds}_{task}_{metric}")
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
