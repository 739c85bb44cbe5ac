"""What each rate point costs, beside its scores in ``results.csv`` (see ``docs/codec-cost.md``).

Two kinds of figure, added to every coded unit's rows when the run writes its tables:

- ``timed_on``: the machine(s) its ``encode_s`` / ``decode_s`` were measured on. An encode found in the
  store keeps the time of the run that encoded it, so this names the machine of *that* run (from its
  provenance), which may not be the machine of this run;
- the codec's :meth:`~vcmbench.codecs.base.Codec.complexity` (learned codecs only): ``params``,
  ``enc_kMAC_px``, ``dec_kMAC_px``, counted at ``kMAC_at``, the unit's most common image size.

The report reads them from ``results.csv`` alone; a results file written before they existed lacks the
columns and its cells stay empty.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..codecs.base import Codec, Complexity
from ..errors import VcmbenchError
from ..plan import WorkUnit, quality_label
from ..provenance import machine_label
from ..store import Store
from .resolve import ResolvedRun

#: columns a run adds to the store's tidy rows in results.csv
COST_COLUMNS = ["timed_on", "params", "enc_kMAC_px", "dec_kMAC_px", "kMAC_at"]


class CostCounter:
    """The cost columns of a run's units; each (codec, quality, size) is counted once."""

    def __init__(self, store: Store, res: ResolvedRun, log: Callable[[str], None]) -> None:
        self.store = store
        self.res = res
        self.log = log
        self._labels: dict[str | None, str] = {}
        self._counted: dict[tuple[str, str, int, int], Complexity | None] = {}

    def machine(self, run_id: str | None) -> str:
        """The label of the machine a run worked on (``unknown machine`` for an encode without its run)."""
        if run_id not in self._labels:
            info = self.store.run_info(run_id) if run_id else None
            prov = json.loads(info["provenance"] or "{}") if info else {}
            self._labels[run_id] = machine_label(prov["machine"]) if prov.get("machine") else "unknown machine"
        return self._labels[run_id]

    def complexity(self, codec: Codec, name: str, quality: Any, size: tuple[int, int]) -> Complexity | None:
        key = (name, str(quality), *size)
        if key not in self._counted:
            try:
                self._counted[key] = codec.complexity(quality, *size)
            except (VcmbenchError, RuntimeError, ValueError) as exc:  # a figure left empty, never a failed run
                self.log(f"warning: {name}@{quality}: complexity not counted ({exc}); its params/kMAC cells stay empty")
                self._counted[key] = None
        return self._counted[key]

    def unit_columns(self, u: WorkUnit) -> dict[str, Any]:
        """The cost columns of one unit (empty for the uncompressed reference and a unit with no encodes)."""
        out: dict[str, Any] = dict.fromkeys(COST_COLUMNS)
        if u.is_reference:
            return out
        origins = self.store.encode_origins(u.prediction_keys())
        if not origins:
            return out
        out["timed_on"] = "; ".join(sorted({self.machine(run) for _, _, run in origins}))
        sizes = Counter((w, h) for w, h, _ in origins if w and h)
        if sizes:
            size = max(sizes, key=lambda s: sizes[s])  # the most common size (the first seen on a tie)
            counted = self.complexity(self.res.codecs[u.codec].codec, u.codec, u.quality, size)
            if counted is not None:
                out.update(counted.columns())
        return out


def with_cost(store: Store, res: ResolvedRun, units: Sequence[WorkUnit], rows: list[dict[str, Any]],
              log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    """``rows`` (the run's tidy rows) with the :data:`COST_COLUMNS` of their units."""
    counter = CostCounter(store, res, log)
    by_unit = {(u.dataset, u.task, u.codec, quality_label(u.quality)): u for u in units}
    cache: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        u = by_unit.get((row["dataset"], row["task"], row["codec"], row["quality"]))
        if u is None:
            out.append({**dict.fromkeys(COST_COLUMNS), **row})
            continue
        if u.key not in cache:
            cache[u.key] = counter.unit_columns(u)
        out.append({**row, **cache[u.key]})
    return out
