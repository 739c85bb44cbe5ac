"""What the stages of one run share: the store, the resolved run, failures, work counters, progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..executors.base import Executor
from ..plan import WorkUnit
from ..store import Store
from .resolve import ResolvedRun


@dataclass
class Failure:
    stage: str
    unit: str
    item: str
    error: str


def _work() -> dict[str, int]:
    return {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}


def _ignore_failure(stage: str, unit: str, item: str, error: str) -> None:
    pass


@dataclass
class RunContext:
    store: Store
    run_id: str
    res: ResolvedRun
    log: Callable[[str], None]
    progress: bool = True
    failures: list[Failure] = field(default_factory=list)
    work: dict[str, int] = field(default_factory=_work)
    #: called with every failure as it happens (the run log's ``FAILED`` line, :mod:`.runlog`)
    on_failure: Callable[[str, str, str, str], None] = _ignore_failure

    def fail(self, stage: str, unit: str, item: str, error: str) -> None:
        self.failures.append(Failure(stage, unit, item, error))
        self.on_failure(stage, unit, item, error)

    def gather(self, u: WorkUnit, parse: bool = True) -> tuple[list[str], dict[str, Any], dict[str, Any], list[str]]:
        """A unit's prediction keys, stored rows, finished predictions (item id -> prediction, or with ``parse``
        False its stored JSON text, for :func:`~vcmbench.scoring.parse_predictions` when it is needed), failed
        items."""
        items = self.res.datasets[u.dataset].items
        keys = u.prediction_keys()
        preds = self.store.predictions(keys)
        done: dict[str, Any] = {}
        failed: list[str] = []
        for item, key in zip(items, keys, strict=True):
            row = preds.get(key)
            if row is not None and row["status"] == "done":
                done[item.id] = json.loads(row["preds"]) if parse else row["preds"]
            else:
                failed.append(item.id)
        return keys, preds, done, failed

    def needs_evaluation(self, u: WorkUnit, keep: frozenset[str] | None = None, scope: bool = True) -> bool:
        """Not evaluated yet, evaluated with failed items (retried on every run), stored without the rates of
        its groups, or (with ``scope``) scored on other items than it should be now: ``keep`` (the items every
        unit of its table finished), or, when None, all it finished."""
        cached = self.store.evaluation(u.key)
        if cached is None or bool(cached["n_failed"]):
            return True
        # stored before groups had rates of their own: its grouped rows would carry the unit's rate
        grouped = any("/" in m for m in json.loads(cached["metrics"]))
        if grouped and cached["group_rates"] is None and not u.is_reference:
            return True
        if not scope:
            return False
        left_out = set(json.loads(cached["left_out"] or "[]"))
        if keep is None:
            return bool(left_out)
        ids = {it.id for it in self.res.datasets[u.dataset].items}
        return ids - set(json.loads(cached["failed_items"] or "[]")) - left_out != keep


def unit_size(ctx: RunContext, u: WorkUnit) -> int:
    """Images of a unit, or frames of its clips."""
    ds, items, _ = ctx.res.datasets[u.dataset]
    return sum(int(it.meta.get("frames") or 1) for it in items) if ds.media == "video" else len(items)


# ---- progress bars ---------------------------------------------------------------------------------
class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable[Any] | None, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, or the bare iterable (or a no-op bar) when progress is off."""
    if not enabled:
        return _NullBar() if iterable is None else iterable
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, **kw)


def show_status(bar: Any, executor: Executor, failed: int) -> None:
    """Next to a progress bar (done / total, ETA): items failed and what the executor's workers are doing."""
    set_postfix = getattr(bar, "set_postfix", None)
    if set_postfix is not None:
        set_postfix(failed=failed, **executor.status(), refresh=False)
