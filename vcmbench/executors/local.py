"""The default executor: a pool of threads in the driver process.

Encodes of external programs (VVenC, x265, VTM) each run in their own child
process, so a thread per core keeps every core busy; in-process codecs (Pillow,
PyTorch) release the GIL in their heavy parts. Results come back to the driver,
which alone writes to the store.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Outcome:
    """The result of one job: either ``value`` or ``error`` is set."""

    __slots__ = ("job", "value", "error")

    def __init__(self, job: Any, value: Any = None, error: BaseException | None = None) -> None:
        self.job = job
        self.value = value
        self.error = error


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="vcmbench")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def unordered(self, fn: Callable[[J], R], jobs: Iterable[J]) -> Iterator[Outcome]:
        """Run ``fn`` on every job, yielding outcomes as they finish (at most 2x workers in flight)."""
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
                done, _ = wait(running, return_when=FIRST_COMPLETED)
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
        it = iter(jobs)
        queue: deque[tuple[J, Future[R]]] = deque()
        try:
            for job in it:
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
