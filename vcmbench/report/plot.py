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


def plot_rd(
    df: pd.DataFrame, out_dir: Path, logx: bool = False, formats: tuple[str, ...] = ("png", "svg")
) -> list[Path]:
    """Draw one figure per (dataset, task, metric); returns the written files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for (ds, task, metric), g in df.groupby(["dataset", "task", "metric"], sort=False):
        fig, ax = plt.subplots(figsize=(6.4, 4.6))
        coded = g[(g.codec != REFERENCE) & g.bpp.notna()]
        for codec, c in coded.groupby("codec", sort=False):
            c = c.sort_values("bpp")
            ax.plot(c.bpp, c.value, marker="o", label=str(codec))
        ref = g[g.codec == REFERENCE]
        if not ref.empty and pd.notna(ref.value.iloc[0]):
            ax.axhline(float(ref.value.iloc[0]), linestyle="--", color="0.3", label=f"uncompressed ({ref.value.iloc[0]:.3f})")
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(METRIC_LABELS.get(str(metric), str(metric)))
        n = int(g.n_items.max()) if "n_items" in g and g.n_items.notna().any() else None
        ax.set_title(f"{task} on {ds}" + (f" ({n} images)" if n else ""))
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        stem = _slug(f"rd_{ds}_{task}_{metric}")
        for fmt in formats:
            path = out_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=120)
            written.append(path)
        plt.close(fig)
    return written
