"""Stage 3: score every unit that needs it from its stored predictions, with its rate, and store the row.

A unit scored in the background meanwhile is taken from the scorer; otherwise (or if that failed) it is
scored here. Units evaluated with failed items are evaluated again on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..plan import WorkUnit, quality_label
from ..scoring import BackgroundScorer, score_unit
from .context import RunContext, progress
from .rates import no_rate, unit_rate


def evaluate_stage(ctx: RunContext, units: Sequence[WorkUnit], scorer: BackgroundScorer) -> list[dict[str, Any]]:
    """Evaluate the units that need it; the run's tidy table (read back from the store: one code path for
    fresh and cached units)."""
    for u in progress(units, ctx.progress, desc="evaluate"):
        if ctx.needs_evaluation(u):
            evaluate_unit(ctx, u, scorer)
    return ctx.store.tidy_rows(ctx.run_id)


def evaluate_unit(ctx: RunContext, u: WorkUnit, scorer: BackgroundScorer) -> None:
    ds, items, _ = ctx.res.datasets[u.dataset]
    task = ctx.res.tasks[u.task]
    keys, preds, done, failed = ctx.gather(u)
    metrics = scorer.take(u.key)
    if metrics is None:
        metrics = score_unit(task, ds, items, done)
    ctx.work["evaluations"] += 1
    rate = no_rate()
    done_keys = {it.id: preds[k]["encode_key"] for k, it in zip(keys, items, strict=True) if it.id in done}
    if not u.is_reference and done_keys:
        enc = ctx.store.encode_records(done_keys.values())
        rate = unit_rate([(it, enc[done_keys[it.id]]) for it in items if done_keys.get(it.id) in enc])
    infer = [preds[k]["infer_s"] for k in keys if k in preds and preds[k]["infer_s"] is not None]
    ctx.store.put_evaluation(
        {
            "key": u.key, "dataset": u.dataset, "dataset_id": u.dataset_id, "task": u.task,
            "task_id": u.task_id, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
            "n_items": len(done), "n_failed": len(failed), "metrics": metrics, "headline": task.metrics,
            "failed_items": failed, "pred_keys": keys, "infer_s": float(sum(infer)), "run_id": ctx.run_id, **rate,
        }
    )  # fmt: skip
    if failed:
        ctx.log(
            f"{u.label()}: {len(failed)} of {len(items)} items failed and are left out of its metrics "
            f"({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}); rerun to retry them"
        )
