"""Stage 3: score every unit that needs it from its stored predictions, with its rate, and store the row.

A unit scored in the background meanwhile is taken from the scorer; otherwise (or if that failed) it is
scored here. Unless background scoring is off, the scoring process also takes units from the back of the
list while the driver scores from the front (:func:`two_ended`). Units evaluated with failed items are
evaluated again on every run.

**Same items for every codec.** By default every unit of a (dataset, task) -- each codec at each quality,
and the uncompressed reference -- is scored on the items that all of them finished (units that finished
none are left out of that intersection), so the points of one RD table and BD-rate are measured on the same
images. A unit scored on fewer items than it finished records those it left out, and the run says so;
``RunConfig.common_items = False`` (``vcmbench run --no-common-items``) scores each unit on all of its own.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..contracts import ClipFrames
from ..plan import WorkUnit, quality_label
from ..scoring import BackgroundScorer, parse_predictions, score_unit
from .background import BACKGROUND_MIN_ITEMS
from .context import RunContext, progress, unit_size
from .rates import group_rates, no_rate, unit_rate


def evaluate_stage(ctx: RunContext, units: Sequence[WorkUnit], scorer: BackgroundScorer,
                   common_items: bool = True, share: Callable[[WorkUnit], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Evaluate the units that need it; the run's tidy table (read back from the store: one code path for
    fresh and cached units).

    With ``share`` (which submits a unit to ``scorer``), the units are scored from both ends at once
    (:func:`two_ended`): the driver takes them from the front, the scoring process from the back."""
    scope = common_scope(ctx, units) if common_items else {}
    todo = [u for u in units if ctx.needs_evaluation(u, scope.get(u.key))]
    order: Iterable[WorkUnit] = todo
    if share is not None and shares(ctx, todo):
        prepare(ctx, todo[-1], scorer)
        order = two_ended(ctx, todo, scorer, share)
    bar = progress(None, ctx.progress, total=len(todo), desc="evaluate")
    for u in order:
        evaluate_unit(ctx, u, scorer, scope.get(u.key))
        bar.update(1)
    bar.close()
    return ctx.store.tidy_rows(ctx.run_id)


def prepare(ctx: RunContext, u: WorkUnit, scorer: BackgroundScorer) -> None:
    """Have the scoring process get ready for units like ``u`` (started if need be; it runs at idle priority)."""
    scorer.prepare(ctx.res.cards[u.scoring_task], ctx.res.cards[u.dataset], ctx.res.datasets[u.dataset].items)


def prepare_early(ctx: RunContext, units: Sequence[WorkUnit], scorer: BackgroundScorer) -> None:
    """At the run's start, have the scoring process get ready for the last unit that the evaluate stage could
    share with it (:func:`shares`): started then, at idle priority,
    it imports and reads the ground truth on CPU time the encode and infer stages leave idle, and is ready
    when the evaluate stage begins (started there, it took 7-10 s here, a 160-px unit's scoring three times)."""
    todo = [u for u in units if ctx.needs_evaluation(u, scope=False)]
    if shares(ctx, todo):
        prepare(ctx, todo[-1], scorer)


def shares(ctx: RunContext, todo: Sequence[WorkUnit]) -> bool:
    """Whether the evaluate stage shares the units ``todo`` with the scoring process: two or more, the last
    :func:`shareable` (the process takes units from the back)."""
    return len(todo) >= 2 and shareable(ctx, todo[-1])


def shareable(ctx: RunContext, u: WorkUnit) -> bool:
    """Whether the scoring process may take ``u`` after inference: its task allows background scoring, and it
    has :data:`~.background.BACKGROUND_MIN_ITEMS` items or more (smaller units score in well under the
    process's start)."""
    return bool(ctx.res.task(u.scoring_task).background_scoring) and unit_size(ctx, u) >= BACKGROUND_MIN_ITEMS


def two_ended(ctx: RunContext, units: Sequence[WorkUnit], scorer: BackgroundScorer,
              share: Callable[[WorkUnit], None]) -> Iterator[WorkUnit]:  # fmt: skip
    """The order in which the driver evaluates ``units`` while the scoring process takes units from the back:
    the driver's own units first, then those handed over (their metrics are waited for).

    Before each of its units, if the process is ready (started, imported, its ground truth read:
    :meth:`~vcmbench.scoring.BackgroundScorer.prepare`) and idle, the driver hands it half of the units left
    (rounded down), from the back, stopping at a unit that is not :func:`shareable` or is with the process
    already (scored during inference). Half at once, not one at a time: handed one, the process is still busy
    with it when the driver has scored its own (it also parses the unit's predictions), and the driver then
    scored three units of four. The driver never waits for the process to start; at the end it waits for the
    process's last units."""
    queue = deque(units)
    handed: list[WorkUnit] = []
    while queue:
        if scorer.ready() and not scorer.busy():
            for _ in range(len(queue) // 2):
                last = queue[-1]
                if scorer.has(last.key) or not shareable(ctx, last):
                    break
                share(queue.pop())
                handed.append(last)
        yield queue.popleft()  # the caller evaluates it meanwhile
    yield from handed


def finished_items(ctx: RunContext, u: WorkUnit) -> frozenset[str]:
    """Ids of the unit's items whose predictions are stored as done."""
    items = ctx.res.datasets[u.dataset].items
    keys = u.prediction_keys()
    status = ctx.store.prediction_status(keys)
    return frozenset(it.id for it, k in zip(items, keys, strict=True) if status.get(k) == "done")


def common_scope(ctx: RunContext, units: Sequence[WorkUnit]) -> dict[str, frozenset[str]]:
    """Unit key -> the items every unit of its (dataset, task) finished (units that finished none aside)."""
    groups: dict[tuple[str, str], list[WorkUnit]] = defaultdict(list)
    for u in units:
        groups[(u.dataset, u.task)].append(u)
    scope = {}
    for members in groups.values():
        finished = [f for f in (finished_items(ctx, u) for u in members) if f]
        common = frozenset.intersection(*finished) if finished else frozenset()
        scope.update(dict.fromkeys((u.key for u in members), common))
    return scope


def evaluate_unit(ctx: RunContext, u: WorkUnit, scorer: BackgroundScorer, keep: frozenset[str] | None = None) -> None:
    ds, items, _ = ctx.res.datasets[u.dataset]
    task = ctx.res.task(u.scoring_task)
    keys, preds, done, failed = ctx.gather(u, parse=False)  # parsed only if scored here
    metrics = scorer.take(u.key)  # scored in the background on everything the unit finished
    done, left_out = _restrict(done, keep)
    if metrics is None or left_out:
        metrics = score_unit(task, ds, items, parse_predictions(done))
    ctx.work["evaluations"] += 1
    rate, groups = no_rate(), None
    done_keys = {it.id: preds[k]["encode_key"] for k, it in zip(keys, items, strict=True) if it.id in done}
    if not u.is_reference and done_keys:
        enc = ctx.store.encode_records(done_keys.values())
        coded = [(it, enc[done_keys[it.id]]) for it in items if done_keys.get(it.id) in enc]
        rate = unit_rate(coded)
        if isinstance(ds, ClipFrames):
            groups = group_rates(ds.groups([it for it in items if it.id in done]), coded)
    infer = [preds[k]["infer_s"] for k in keys if k in preds and preds[k]["infer_s"] is not None]
    ctx.store.put_evaluation(
        {
            "key": u.key, "dataset": u.dataset, "dataset_id": u.dataset_id, "task": u.task,
            "task_id": u.task_id, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
            "n_items": len(done), "n_failed": len(failed), "metrics": metrics, "headline": task.metrics,
            "lower_is_better": sorted(task.lower_is_better), "failed_items": failed, "left_out": left_out,
            "pred_keys": keys, "infer_s": float(sum(infer)), "run_id": ctx.run_id, "group_rates": groups,
            "scored_by": ctx.res.scored_by(u.scoring_task), **rate,
        }
    )  # fmt: skip
    _log_gaps(ctx, u, len(items), failed, left_out)


def _restrict(done: Mapping[str, Any], keep: frozenset[str] | None) -> tuple[dict[str, Any], list[str]]:
    """The finished predictions to score (those in ``keep``, or all) and the finished items left out."""
    if keep is None:
        return dict(done), []
    return {k: v for k, v in done.items() if k in keep}, sorted(k for k in done if k not in keep)


def _log_gaps(ctx: RunContext, u: WorkUnit, n: int, failed: list[str], left_out: list[str]) -> None:
    if failed:
        ctx.log(
            f"{u.label()}: {len(failed)} of {n} items failed and are left out of its metrics "
            f"({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}); rerun to retry them"
        )
    if left_out:
        ctx.log(
            f"{u.label()}: scored on the {n - len(failed) - len(left_out)} items every codec of its table finished; "
            f"{len(left_out)} it finished are left out ({', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}) "
            "-- rerun to retry the failed items elsewhere, or --no-common-items to score each unit on all of its own"
        )
