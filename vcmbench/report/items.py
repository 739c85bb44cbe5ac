"""Which items each unit was scored on, so that a BD value compares codecs on the same images.

A unit keeps the items that succeeded (the others are listed in ``failed_items`` and counted in
``n_failed``), so two codecs of one table can be scored on different image sets. The report reads the
run's ``items.csv`` (one row per unit and item, ``status`` ``done`` or ``failed``; written by every run
beside ``results.csv``) and, without it, the counts of ``results.csv``: units of one run share their
dataset's item list, so equal ``n_items`` with no failed item prove equal sets, anything else cannot be
proved equal.

Re-scoring a unit on the items every codec finished would need the task's metric (pycocotools, the face
detector for face recall), the dataset's ground truth and the run's cards; the report stays a reader of
tables, so it refuses instead: a BD value whose curves were scored on different items is left empty with
the reason (``--no-common-items`` computes it anyway and marks it), and the RD table marks each unit
scored on fewer items than the others of its dataset and task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

#: a unit: dataset, task, codec, quality ("" for the uncompressed reference)
Unit = tuple[str, str, str, str]


def unit_label(u: Unit) -> str:
    return f"{u[2]}@{u[3]}" if u[3] else u[2]


@dataclass(frozen=True)
class ItemSets:
    """Item sets (from ``items.csv``) and counts (``n_items``, ``n_failed`` from ``results.csv``) of units."""

    sets: Mapping[Unit, frozenset[str]] = field(default_factory=dict)
    counts: Mapping[Unit, tuple[int, int]] = field(default_factory=dict)

    def mismatch(self, units: Iterable[Unit]) -> str:
        """Empty when the units were provably scored on the same items, else the reason in a few words."""
        units = list(units)
        if units and all(u in self.sets for u in units):
            return self._set_mismatch(units)
        counts = {u: self.counts.get(u) for u in units}
        sizes = {c[0] for c in counts.values() if c is not None}
        if all(c is not None and c[1] == 0 for c in counts.values()) and len(sizes) <= 1:
            return ""
        u = next(u for u, c in counts.items() if c is None or c[1] or c[0] != max(sizes))
        c = counts[u]
        what = "no item counts" if c is None else f"{c[0]} items, {c[1]} failed"
        return f"items may differ: {unit_label(u)} has {what} (no items.csv)"

    def _set_mismatch(self, units: list[Unit]) -> str:
        union = frozenset().union(*(self.sets[u] for u in units))
        fewer = [u for u in units if self.sets[u] != union]
        if not fewer:
            return ""
        more = f" (and {len(fewer) - 1} more units)" if len(fewer) > 1 else ""
        return (
            f"items differ: {unit_label(fewer[0])} scored on {len(self.sets[fewer[0]])} of {len(union)}{more}"
        )

    def marks(self, units: Iterable[Unit]) -> dict[Unit, str]:
        """For each unit scored on fewer items than the union of its dataset and task's units: how many."""
        groups: dict[tuple[str, str], list[Unit]] = {}
        for u in units:
            groups.setdefault(u[:2], []).append(u)
        out: dict[Unit, str] = {}
        for members in groups.values():
            for u in members:
                out[u] = self._mark(u, members)
        return out

    def _mark(self, u: Unit, members: list[Unit]) -> str:
        if all(m in self.sets for m in members):
            total = len(frozenset().union(*(self.sets[m] for m in members)))
            n = len(self.sets[u])
            return f"fewer items: {n} of {total}" if n < total else ""
        c, most = self.counts.get(u), max((self.counts[m][0] for m in members if m in self.counts), default=0)
        if c is None:
            return ""
        return f"fewer items: {c[0]} of {most}" if c[0] < most else (f"{c[1]} items failed" if c[1] else "")


def _unit(dataset: object, task: object, codec: object, quality: object) -> Unit:
    q = "" if quality is None or pd.isna(quality) else str(quality)  # type: ignore[arg-type]
    return (str(dataset), str(task), str(codec), q)


def _counts(df: pd.DataFrame) -> dict[Unit, tuple[int, int]]:
    if not {"n_items", "n_failed"} <= set(df.columns):
        return {}
    units = df.drop_duplicates(["dataset", "task", "codec", "quality"])
    return {
        _unit(r.dataset, r.task, r.codec, r.quality): (int(r.n_items), int(r.n_failed))
        for r in units.itertuples()
        if pd.notna(r.n_items) and pd.notna(r.n_failed)
    }


def _sets(path: Path) -> dict[Unit, frozenset[str]]:
    try:
        items = pd.read_csv(path, dtype={"quality": "string", "item_id": "string"})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}
    if not {"dataset", "task", "codec", "quality", "item_id", "status"} <= set(items.columns):
        return {}
    out: dict[Unit, set[str]] = {}
    for r in items.itertuples():
        s = out.setdefault(_unit(r.dataset, r.task, r.codec, r.quality), set())
        if r.status == "done":
            s.add(str(r.item_id))
    return {u: frozenset(s) for u, s in out.items()}


def load_item_sets(df: pd.DataFrame, run_dir: Path | None) -> ItemSets:
    """The item sets of ``run_dir/items.csv`` (when there) and the counts of the results table ``df``."""
    path = run_dir / "items.csv" if run_dir is not None else None
    sets = _sets(path) if path is not None and path.is_file() else {}
    return ItemSets(sets=sets, counts=_counts(df))
