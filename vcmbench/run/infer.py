"""Stage 2: per task, decode and predict every item not yet predicted, batch by batch.

The model is loaded once per task; the executor decodes ahead of the model. Each batch's predictions
are committed as one transaction, and units they complete may be scored in the background meanwhile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from ..codecs.base import Bitstream
from ..datasets.base import Item
from ..executors.base import DecodeJob, EncodeFailed, Executor, error_text
from ..plan import WorkUnit, quality_label
from .background import BackgroundScoring, wants_background
from .context import RunContext, progress, show_status, unit_size

#: (unit, item, item sha256, prediction key)
Job = tuple[WorkUnit, Item, str, str]


def pending_predictions(ctx: RunContext, units: Sequence[WorkUnit], background: BackgroundScoring) -> dict[str, list[Job]]:
    """Predictions still to make, by task (each once, though several units may need it); units to be
    scored in the background are handed to ``background`` with the predictions they wait for."""
    pending: dict[str, list[Job]] = defaultdict(list)
    #: prediction key -> where its item stands: (dataset, index of the item in it)
    position: dict[str, tuple[int, int]] = {}
    datasets = {name: i for i, name in enumerate(ctx.res.datasets)}
    for u in units:
        _, items, shas = ctx.res.datasets[u.dataset]
        keys = u.prediction_keys()
        status = ctx.store.prediction_status(keys)
        missing = set()
        for i, (item, sha, key) in enumerate(zip(items, shas, keys, strict=True)):
            if status.get(key) != "done":
                missing.add(key)
                if key not in position:
                    position[key] = (datasets[u.dataset], i)
                    pending[u.scoring_task].append((u, item, sha, key))
        task = ctx.res.task(u.scoring_task)
        if wants_background(ctx.res.scoring, task.background_scoring, unit_size(ctx, u)) and ctx.needs_evaluation(u, scope=False):
            background.watch(u, missing)
    background.start(len(position))
    if not background.waiting:
        for work in pending.values():
            item_by_item(work, position)
    return pending  # by the task card whose model predicts: a paired scorer's model is loaded once


def item_by_item(work: list[Job], position: dict[str, tuple[int, int]]) -> None:
    """Reorder ``work`` in place so that an item's predictions (the reference's, each quality's) follow each
    other, units in their order within an item: the decode workers then read its source image once for the
    reference and every decode's PSNR (``SourceImages``), not once per unit. Only where no unit waits for
    background scoring, which wants units finished one after another."""
    work.sort(key=lambda job: position[job[3]])


def infer_stage(ctx: RunContext, units: Sequence[WorkUnit], executor: Executor, background: BackgroundScoring) -> None:
    for task_name, work in pending_predictions(ctx, units, background).items():
        infer_task(ctx, task_name, work, executor, background)


def decode_jobs(ctx: RunContext, work: list[Job]) -> Iterator[DecodeJob]:
    """Jobs for the executor; bitstreams are read from the cache lazily, as the executor asks."""
    res, store = ctx.res, ctx.store
    enc = store.encode_records(k for u, _, sha, _ in work if (k := u.encode_key(sha)) is not None)
    for u, item, sha, key in work:
        ds_card = res.cards[u.dataset]
        if u.is_reference:
            yield DecodeJob(key, ds_card, item)
            continue
        ekey = u.encode_key(sha)
        rec = enc.get(ekey)  # type: ignore[arg-type]
        if rec is None or rec.status != "done" or rec.blob is None:
            why = rec.error if rec is not None and rec.error else "no bitstream"
            yield DecodeJob(key, ds_card, item, res.cards[u.codec], None, ekey, missing=f"encode failed: {why}")
            continue
        try:
            data = store.get_blob(rec.blob)
        except OSError as exc:
            yield DecodeJob(key, ds_card, item, res.cards[u.codec], None, ekey,
                            missing=f"its bitstream file is gone ({exc}); the next run encodes it again")  # fmt: skip
            continue
        bs = Bitstream(data, rec.width or 0, rec.height or 0, rec.frames or 1, rec.meta)
        yield DecodeJob(key, ds_card, item, res.cards[u.codec], bs, ekey, want_stats=rec.decode_s is None,
                        quality=u.quality)  # fmt: skip


def infer_task(ctx: RunContext, task_name: str, work: list[Job], executor: Executor,
               background: BackgroundScoring) -> None:  # fmt: skip
    """Decode and predict every pending item of one task (or paired scorer), committing batch by batch."""
    task = ctx.res.task(task_name)
    where = {job[3]: job for job in work}
    # a clip is predicted frame by frame, task.batch_size frames at a time: one clip per batch keeps
    # one decoded clip (plus those decoded ahead) in memory
    clips = any(ctx.res.datasets[u.dataset].dataset.media == "video" for u, _, _, _ in work)
    ctx.log(f"{task_name}: {len(work)} {'clips' if clips else 'images'} to infer")
    bar = progress(None, ctx.progress, total=len(work), desc=f"infer {task_name}")
    failed = 0
    reported = encode_failures(ctx)
    batches = executor.infer(ctx.res.cards[task_name], decode_jobs(ctx, work), 1 if clips else task.batch_size)
    for br in batches:
        rows, stats = [], []
        for job, pred, err, dec, secs in zip(br.jobs, br.preds, br.errors, br.decode, br.infer_s, strict=True):
            u, item, sha, key = where[job.key]
            if err is not None:
                msg = error_text(err)
                if not isinstance(err, EncodeFailed) or (f"{u.codec}@{u.quality}", item.id) not in reported:
                    stage = "infer" if dec is not None else "decode"
                    ctx.fail(stage, u.label(), item.id, msg)
                    ctx.log(f"{u.label()} item {item.id} ({item.path}): {stage} failed: {msg}")
                rows.append(prediction_row(ctx, u, item, sha, key, status="failed", error=msg))
                continue
            if job.codec is not None:
                ctx.work["decodes"] += 1
            if dec is not None and dec.decode_s is not None and job.encode_key:
                stats.append((job.encode_key, dec.decode_s, dec.psnr))
            ctx.work["inferences"] += 1
            rows.append(prediction_row(ctx, u, item, sha, key, preds=pred, infer_s=secs))
        with ctx.store.transaction():
            for ekey, dsec, p in stats:
                ctx.store.set_decode_stats(ekey, dsec, p)
        ctx.store.put_predictions(rows)
        background.stored(r["key"] for r in rows)
        bar.update(len(rows))
        failed += sum(r["status"] == "failed" for r in rows)
        show_status(bar, executor, failed)
    bar.close()


def encode_failures(ctx: RunContext) -> set[tuple[str, str]]:
    """(codec@quality, item id) of the encodes whose failure this run reported already: an item without a
    bitstream for another reason (none stored, its file gone since) is reported when its prediction fails."""
    return {(f.unit, f.item) for f in ctx.failures if f.stage == "encode"}


def prediction_row(ctx: RunContext, u: WorkUnit, item: Item, sha: str, key: str, **kw: Any) -> dict[str, Any]:
    row = {
        "key": key, "task": u.task, "task_id": u.task_id, "codec": u.codec, "quality": quality_label(u.quality),
        "item_id": item.id, "item_sha": sha, "encode_key": u.encode_key(sha), "run_id": ctx.run_id,
        "status": "done", "error": None, "infer_s": None, "preds": None,
    }  # fmt: skip
    row.update(kw)
    return row
