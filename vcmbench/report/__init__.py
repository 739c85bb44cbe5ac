"""Reports read only the store's tidy tables: RD plots, BD-rate tables, the regression gate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..errors import VcmbenchError
from ..plan import REFERENCE


def resolve_run_dir(source: str | Path, run: str | None = None) -> Path:
    """A run folder from: a results.csv, a run folder, or an output root (its latest or named run)."""
    p = Path(source)
    if p.is_file():
        return p.parent
    if (p / "results.csv").is_file() and run is None:
        return p
    if (p / "vcmbench.db").is_file():
        from ..store import Store

        store = Store(p)
        try:
            run_id = run or store.latest_run()
        finally:
            store.close()
        if run_id is None:
            raise VcmbenchError(f"{p} holds no runs yet; start one with `vcmbench run`")
        d = p / "runs" / run_id
        if not (d / "results.csv").is_file():
            raise VcmbenchError(f"run {run_id} in {p} has no results.csv (was it interrupted?); rerun it to finish")
        return d
    raise VcmbenchError(
        f"{p}: not a results.csv, a run folder (runs/<id>/) or an output folder holding vcmbench.db"
    )


def load_results(source: str | Path, run: str | None = None) -> pd.DataFrame:
    """The tidy results table (one row per dataset, task, codec, quality, metric)."""
    p = Path(source)
    path = p if p.is_file() else resolve_run_dir(p, run) / "results.csv"
    try:
        df = pd.read_csv(path, dtype={"quality": "string"})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise VcmbenchError(f"cannot read results table {path}: {exc}") from None
    required = {"dataset", "task", "codec", "quality", "metric", "value", "bpp"}
    missing = required - set(df.columns)
    if missing:
        raise VcmbenchError(f"{path} is not a vcmbench results table: missing columns {sorted(missing)}")
    return df


def with_psnr_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Add PSNR as one more 'metric' per RD point (so BD-rate on PSNR comes for free)."""
    if "psnr" not in df.columns:
        return df
    keys = ["dataset", "task", "codec", "quality"]
    have = set(df[df.metric == "psnr"].set_index(keys).index)  # points with a psnr row already (imported)
    pts = df[(df.codec != REFERENCE) & df.psnr.notna()].drop_duplicates(keys)
    pts = pts[[k not in have for k in pts.set_index(keys).index]]
    if pts.empty:
        return df
    extra = pts.assign(metric="psnr", value=pts.psnr)
    if "lower_is_better" in extra.columns:
        extra = extra.assign(lower_is_better=False)
    return pd.concat([df, extra], ignore_index=True)


def lower_is_better(df: pd.DataFrame, declared: Sequence[str] = ()) -> frozenset[str]:
    """Metrics (base names: ``map`` for ``map/ClassA``) where lower is better: those the table marks in its
    ``lower_is_better`` column (written from each task's ``Task.lower_is_better``) plus ``declared`` (e.g.
    ``--lower-is-better face_recall``, for tables written before that column existed). Every other metric
    is higher-is-better."""
    marked: set[str] = set(declared)
    if "lower_is_better" in df.columns:
        flags = df.lower_is_better.astype(str).str.lower().isin(["true", "1"])
        marked |= {str(m).split("/", 1)[0] for m in df.metric[flags]}
    return frozenset(marked)


def direction_note(df: pd.DataFrame, declared: Sequence[str] = ()) -> str | None:
    """A note for tables that do not record every metric's direction (no ``lower_is_better`` column, or
    empty cells: units scored before it was recorded); such metrics count as higher-is-better unless
    declared or marked on another row."""
    if "lower_is_better" in df.columns and df.lower_is_better.notna().all():
        return None
    where = "has no lower_is_better column" if "lower_is_better" not in df.columns else "leaves lower_is_better empty on some rows"
    also = f" except {', '.join(declared)} (--lower-is-better)" if declared else ""
    return (f"this results table {where} (written before metric directions were recorded): those metrics are "
            f"taken as higher-is-better{also}")  # fmt: skip


def headline(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Rows of the given metrics, or of each task's headline metrics (plus PSNR) when none are given."""
    if metrics:
        unknown = sorted(set(metrics) - set(df.metric))
        if unknown:
            raise VcmbenchError(f"no metric(s) {unknown} in the results; metrics: {sorted(set(df.metric))}")
        return df[df.metric.isin(metrics)]
    if "headline" not in df.columns:
        return df
    keep = df.headline.astype(str).str.lower().isin(["true", "1"]) | (df.metric == "psnr")
    return df[keep]
