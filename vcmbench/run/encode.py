"""Stage 1: encode every (codec, quality, item) not yet in the store, many at once, largest source first;
each bitstream is written to the content-addressed cache and its row committed as soon as it finishes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..datasets.base import Item
from ..executors.base import EncodeJob, EncodeResult, Executor, error_text, longest_first
from ..plan import WorkUnit, quality_label
from .context import RunContext, progress, show_status


def encode_jobs(ctx: RunContext, units: Sequence[WorkUnit]) -> tuple[dict[str, EncodeJob], dict[str, tuple[WorkUnit, Item, str]]]:
    """One job per distinct encode key of the coded units, and where each came from (unit, item, sha)."""
    jobs: dict[str, EncodeJob] = {}
    where: dict[str, tuple[WorkUnit, Item, str]] = {}
    for u in units:
        if u.is_reference:
            continue
        _, items, shas = ctx.res.datasets[u.dataset]
        for item, sha in zip(items, shas, strict=True):
            key = u.encode_key(sha)
            assert key is not None
            if key not in jobs:
                jobs[key] = EncodeJob(key, ctx.res.cards[u.codec], u.quality, ctx.res.cards[u.dataset], item)
                where[key] = (u, item, sha)
    return jobs, where


def encode_stage(ctx: RunContext, units: Sequence[WorkUnit], executor: Executor) -> None:
    jobs, where = encode_jobs(ctx, units)
    store = ctx.store
    have = store.encode_records(jobs)
    todo = [k for k in jobs if not (k in have and have[k].status == "done" and store.has_blob(have[k].blob))]
    if not todo:
        return
    outcomes = executor.encode(longest_first(jobs[k] for k in todo))
    bar = progress(outcomes, ctx.progress, total=len(todo), desc="encode")
    for out in bar:
        u, item, sha = where[out.job.key]
        row: dict[str, Any] = {
            "key": out.job.key, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
            "item_id": item.id, "item_sha": sha, "run_id": ctx.run_id,
        }  # fmt: skip
        if out.error is None:
            r: EncodeResult = out.value
            row.update(
                blob=store.put_blob(r.data), nbytes=len(r.data), width=r.width, height=r.height,
                frames=r.frames, meta=r.meta, encode_s=r.encode_s, status="done", error=None,
            )  # fmt: skip
            ctx.work["encodes"] += 1
        else:
            msg = error_text(out.error)
            row.update(status="failed", error=msg)
            ctx.fail("encode", f"{u.codec}@{u.quality}", item.id, msg)
            ctx.log(f"encode failed: {u.codec} {u.quality} item {item.id} ({item.path}): {msg}")
        store.put_encode(row)
        show_status(bar, executor, failed=sum(f.stage == "encode" for f in ctx.failures))
