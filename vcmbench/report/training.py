"""The training-set check of a run as reports show it.

A run records, in the provenance of its ``run.json``, every unit of a learned codec checked against the
training images its checkpoint records (``training_overlap``, written by
:mod:`vcmbench.run.training_overlap`). The report repeats each unit's warning (scored on training images)
or note (training set unknown) and marks those units in the RD table's ``training_images`` column.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["load_training_overlap", "mark_training", "training_messages"]


def load_training_overlap(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's training-set check (empty for a run without ``run.json`` or written before the check)."""
    path = run_dir / "run.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return []
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    records = (info.get("provenance") or {}).get("training_overlap") or []
    return [r for r in records if isinstance(r, dict)]


def training_messages(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per unit scored on training images (warnings first), then per unit of unknown training set."""
    order = {"overlap": 0, "unknown": 1}
    flagged = sorted((r for r in records if r.get("status") in order), key=lambda r: order[r["status"]])
    return [str(r["message"]) for r in flagged if r.get("message")]


def _mark(record: dict[str, Any]) -> str:
    if record.get("status") == "overlap":
        return f"{record['overlap']} of {record['items']} ({100 * record['fraction']:.0f}%)"
    return "unknown" if record.get("status") == "unknown" else ""


def mark_training(points: pd.DataFrame, records: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``points`` with a ``training_images`` column (how many of a unit's images its codec was trained on,
    or "unknown") when any unit overlaps its training set or cannot be checked; else unchanged."""
    marks = {(str(r["dataset"]), str(r["task"]), str(r["codec"]), str(r["quality"])): _mark(r) for r in records}
    if not any(marks.values()):
        return points
    keys = [(str(r.dataset), str(r.task), str(r.codec), "" if pd.isna(r.quality) else str(r.quality))
            for r in points.itertuples()]  # fmt: skip
    return points.assign(training_images=[marks.get(k, "") for k in keys])
