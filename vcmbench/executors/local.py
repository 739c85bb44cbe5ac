"""The default executor: a pool of threads in the driver process.

Encodes of external programs (VVenC, x265, VTM) each run in their own child
process, so a thread per core keeps every core busy; in-process codecs (Pillow,
PyTorch) release the GIL in their heavy parts. Decoding works ahead of the
model in the same pool while the driver thread predicts batch after batch.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from ..adapters import loaded_task
from ..cards import Card
from .base import (
    IDLE_S,
    BatchResult,
    Decoded,
    DecodeJob,
    EncodeJob,
    Executor,
    Outcome,
    encode_and_keep,
    predict_into,
    run_decode,
    run_encode,
)

J = TypeVar("J")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class LocalExecutor(Executor):
    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vcmbench")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ---- the contract -----------------------------------------------------------------------
    def encode(self, jobs: Iterable[EncodeJob], idle: Callable[[], None] | None = None,
               keep: Callable[[bytes], str] | None = None) -> Iterator[Outcome]:  # fmt: skip
        if keep is None:
            return self.unordered(run_encode, jobs, idle)
        return self.unordered(functools.partial(encode_and_keep, keep=keep), jobs, idle)

    def infer(self, task: Card, jobs: Iterable[DecodeJob], batch_size: int) -> Iterator[BatchResult]:
        model = loaded_task(task)
        batch = BatchResult([])
        images = []
        for out in self.ordered(run_decode, jobs, window=2 * batch_size + self.workers):
            decoded: Decoded | None = out.value
            batch.jobs.append(out.job)
            batch.decode.append(decoded)
            batch.errors.append(out.error)
            if decoded is not None:
                images.append(decoded.image)
            if len(batch.jobs) >= batch_size:
                yield predict_into(model, batch, images)
                batch, images = BatchResult([]), []
        if batch.jobs:
            yield predict_into(model, batch, images)

    # ---- generic helpers (also used by benchmarks) -------------------------------------------
    def unordered(self, fn: Callable[[J], R], jobs: Iterable[J], idle: Callable[[], None] | None = None) -> Iterator[Outcome]:
        """Run ``fn`` on every job, yielding outcomes as they finish (at most 2x workers in flight); ``idle`` is
        called each time :data:`~vcmbench.executors.base.IDLE_S` seconds pass without one."""
        it = iter(jobs)
        running: dict[Future[R], J] = {}

        def submit_more() -> None:
            while len(running) < 2 * self.workers:
                try:
                    job = next(it)
                except StopIteration:
                    return
                running[self._pool.submit(fn, job)] = job

        submit_more()
        try:
            while running:
                done, _ = wait(running, timeout=IDLE_S if idle else None, return_when=FIRST_COMPLETED)
                if not done and idle is not None:
                    idle()
                for fut in done:
                    job = running.pop(fut)
                    exc = fut.exception()
                    yield Outcome(job, None, exc) if exc else Outcome(job, fut.result())
                submit_more()
        finally:
            for fut in running:
                fut.cancel()

    def ordered(self, fn: Callable[[J], R], jobs: Iterable[J], window: int | None = None) -> Iterator[Outcome]:
        """Run ``fn`` on every job, yielding outcomes in job order, working ahead by ``window`` jobs."""
        window = window or 2 * self.workers
        queue: deque[tuple[J, Future[R]]] = deque()
        try:
            for job in jobs:
                queue.append((job, self._pool.submit(fn, job)))
                if len(queue) >= window:
                    yield self._outcome(*queue.popleft())
            while queue:
                yield self._outcome(*queue.popleft())
        finally:
            for _, fut in queue:
                fut.cancel()

    @staticmethod
    def _outcome(job: Any, fut: Future[Any]) -> Outcome:
        exc = fut.exception()
        return Outcome(job, None, exc) if exc else Outcome(job, fut.result())
