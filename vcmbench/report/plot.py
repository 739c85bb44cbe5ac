"""Accuracy-vs-bpp RD curves: one line per codec, the uncompressed accuracy as a dashed line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from ..plan import REFERENCE

METRIC_LABELS = {
    "map": "mAP@[.5:.95]", "map50": "mAP@.5", "map75": "mAP@.75", "psnr": "PSNR (dB, RGB)",
    "segm_map": "mask mAP@[.5:.95]", "pq": "PQ",
}  # fmt: skip


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``_``, ``.``, ``-``; runs of others become ``-``)."""
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


def reference_scorer(ref: pd.DataFrame) -> str | None:
    """The model that scored the uncompressed point (the plain task's), or None when not recorded."""
    if ref.empty or "scored_by" not in ref.columns or pd.isna(ref.scored_by.iloc[0]):
        return None
    return str(ref.scored_by.iloc[0])


def rate_column(g: pd.DataFrame, rate: str) -> str:
    """The x axis of one figure: ``bpp``, or ``kbps`` where ``rate`` is "auto" and the points are of clips
    (a video dataset's rows carry their bit rate at the clips' frame rate)."""
    if rate == "auto":
        coded = g[g.codec != REFERENCE]
        return "kbps" if "kbps" in g.columns and not coded.empty and coded.kbps.notna().all() else "bpp"
    return rate


RATE_LABELS = {"bpp": "bits per pixel", "kbps": "kbit/s (at the clips' frame rate)"}


def rd_figures(
    df: pd.DataFrame,
    logx: bool = False,
    *,
    bd: pd.DataFrame | None = None,
    caption: str = "",
    lower: frozenset[str] = frozenset(),
    rate: str = "bpp",
) -> Iterator[tuple[tuple[str, str, str], Any]]:
    """One matplotlib figure per (dataset, task, metric), with that key; the caller closes it.

    ``rate``: the x axis, ``bpp``, ``kbps`` or ``auto`` (kbps for clips, bpp for images); BD values in the
    legend are those of ``bd`` whatever the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for (ds, task, metric), g in df.groupby(["dataset", "task", "metric"], sort=False):
        x = rate_column(g, rate)
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        labels = _bd_labels(bd, str(ds), str(task), str(metric))
        coded = g[(g.codec != REFERENCE) & g[x].notna()]
        ref = g[g.codec == REFERENCE]
        plain = reference_scorer(ref)
        for codec, c in coded.groupby("codec", sort=False):
            c = c.sort_values(x)
            label = labels.get(str(codec), str(codec))
            by = sorted({str(v) for v in c.get("scored_by", pd.Series(dtype=object)).dropna()} - {plain or ""})
            ax.plot(c[x], c.value, marker="o", label=label + (f" [scored by {', '.join(by)}]" if by else ""))
            if by:  # codec-paired scoring: name the model at each point it scored
                for _, row in c[c.scored_by.astype(str) != str(plain)].iterrows():
                    ax.annotate(str(row.scored_by).split(" (")[0], (row[x], row.value), fontsize="xx-small",
                                xytext=(3, -9), textcoords="offset points")  # fmt: skip
        if not ref.empty and pd.notna(ref.value.iloc[0]):
            ax.axhline(float(ref.value.iloc[0]), linestyle="--", color="0.3", label=f"uncompressed ({ref.value.iloc[0]:.3f})")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(RATE_LABELS.get(x, x))
        ax.set_ylabel(_ylabel(str(metric), lower))
        n = int(g.n_items.max()) if "n_items" in g and g.n_items.notna().any() else None
        ax.set_title(f"{task} on {ds}" + (f" ({n} images)" if n else ""))
        ax.grid(True, alpha=0.3)
        legend = ax.legend(loc="best", fontsize="small", title=f"BD: {caption}" if labels and caption else None)
        if legend.get_title():
            legend.get_title().set_fontsize("x-small")
        fig.tight_layout()
        yield (str(ds), str(task), str(metric)), fig


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
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (ds, task, metric), fig in rd_figures(df, logx, bd=bd, caption=caption, lower=lower):
        for fmt in formats:
            path = out_dir / f"{slug(f'rd_{ds}_{task}_{metric}')}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written


def rd_svgs(
    df: pd.DataFrame,
    logx: bool = False,
    *,
    bd: pd.DataFrame | None = None,
    caption: str = "",
    lower: frozenset[str] = frozenset(),
    rate: str = "auto",
) -> dict[tuple[str, str, str], str]:
    """The figures of :func:`rd_figures` as SVG text (no file written), by (dataset, task, metric)."""
    import io

    import matplotlib.pyplot as plt

    out: dict[tuple[str, str, str], str] = {}
    for key, fig in rd_figures(df, logx, bd=bd, caption=caption, lower=lower, rate=rate):
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        plt.close(fig)
        out[key] = buf.getvalue()
    return out
