"""Stage 1: encode every (codec, quality, item) not yet in the store, many at once, largest source first;
each bitstream is written to the content-addressed cache and its row committed as soon as it finishes --
fast encodes in batches (:class:`EncodeRows`): one flush of their bitstreams to disk and one transaction for
up to :data:`ENCODE_BATCH` rows or :data:`ENCODE_FLUSH_S` seconds of them, where a row and an fsync each
cost the driver more than a JPEG encode (``benchmarks/growth.py``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..datasets.base import Item
from ..executors.base import EncodeJob, EncodeResult, Executor, Outcome, error_text, longest_first
from ..plan import WorkUnit, quality_label
from ..store import Store
from .context import RunContext, progress, show_status

#: encode rows committed together: at most this many ...
ENCODE_BATCH = 64
#: ... finished within this many seconds of the last commit (a slow encoder's rows are committed one by one)
ENCODE_FLUSH_S = 1.0


class EncodeRows:
    """Encode rows waiting for their commit. A row is committed (with its bitstream made durable first) once
    :data:`ENCODE_BATCH` rows wait or :data:`ENCODE_FLUSH_S` seconds have passed since the last commit, also
    while slow encodes keep any new row from arriving (:meth:`idle`, which the executor calls), and on
    :meth:`flush` (the stage's end, an interrupt, an error); a killed process loses at most those rows, whose
    bitstreams stay in the cache."""

    def __init__(self, store: Store, batch: int = ENCODE_BATCH, seconds: float = ENCODE_FLUSH_S) -> None:
        self.store = store
        self.batch = batch
        self.seconds = seconds
        self.rows: list[dict[str, Any]] = []
        self.last = time.monotonic()

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.batch or time.monotonic() - self.last >= self.seconds:
            self.flush()

    def idle(self) -> None:
        """Called by the executor once :data:`~vcmbench.executors.base.IDLE_S` seconds pass without a finished
        encode (slow encodes running): the rows waiting are committed now, not when the slow encodes end."""
        if self.rows:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.store.put_encodes(self.rows)
            self.rows = []
        self.last = time.monotonic()


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
    have = store.encode_blobs(jobs)
    todo = [k for k in jobs if not (k in have and store.has_blob(have[k]))]
    if not todo:
        return
    rows = EncodeRows(store)
    # the workers start on different files: their reads run in parallel
    outcomes = executor.encode(longest_first((jobs[k] for k in todo), executor.workers), idle=rows.idle,
                               keep=keep_blob(store))  # fmt: skip
    bar = progress(outcomes, ctx.progress, total=len(todo), desc="encode")
    try:
        for out in bar:
            rows.add(encode_row(ctx, out, where[out.job.key]))
            show_status(bar, executor, failed=sum(f.stage == "encode" for f in ctx.failures))
    finally:
        rows.flush()


def keep_blob(store: Store) -> Callable[[bytes], str]:
    """Where workers put bitstreams: the store's cache, made durable with their rows' batch."""
    return functools.partial(store.put_blob, durable=False)


def encode_row(ctx: RunContext, out: Outcome, origin: tuple[WorkUnit, Item, str]) -> dict[str, Any]:
    """The store row of one encode's outcome; its bitstream goes to the cache, made durable with the row's
    batch (:class:`EncodeRows`)."""
    u, item, sha = origin
    row: dict[str, Any] = {
        "key": out.job.key, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
        "item_id": item.id, "item_sha": sha, "run_id": ctx.run_id,
    }  # fmt: skip
    if out.error is None:
        r: EncodeResult = out.value
        row.update(
            blob=r.blob or ctx.store.put_blob(r.data, durable=False), nbytes=len(r.data), width=r.width, height=r.height,
            frames=r.frames, meta=r.meta, encode_s=r.encode_s, status="done", error=None,
        )  # fmt: skip
        ctx.work["encodes"] += 1
    else:
        msg = error_text(out.error)
        row.update(status="failed", error=msg)
        ctx.fail("encode", f"{u.codec}@{u.quality}", item.id, msg)
        ctx.log(f"encode failed: {u.codec} {u.quality} item {item.id} ({item.path}): {msg}")
    return row
