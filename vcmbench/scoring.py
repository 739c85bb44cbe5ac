"""Scoring a work unit, in this process or in a background one.

A unit's metrics are a pure function of its stored predictions and the dataset's
ground truth. The official evaluators are slow (pycocotools' ``COCOeval`` is
Python per image and category: ~3 s for 79 COCO images at 300 detections each),
so while the model is still inferring, units whose predictions are all stored can
be scored by a :class:`BackgroundScorer` in a separate process (threads would fight
the model for the GIL). The driver still writes every result; the scorer only returns
metrics. When the scorer fails for any reason (its process died, the metric raised),
the driver scores the unit itself, so an error is reported exactly as without it.

The background process is a plain ``python -m vcmbench.scoring`` child talking pickles
over its stdin/stdout, not multiprocessing: a spawned multiprocessing child re-imports
the driver's ``__main__``, which re-runs any script that calls vcmbench without an
``if __name__ == "__main__"`` guard.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, BinaryIO

from .adapters import build
from .cards import Card
from .contracts import ClipFrames
from .datasets.base import Dataset, Item
from .datasets.video import FRAME_SEP
from .media.gcpause import no_cycle_collection
from .tasks.base import Task

__all__ = ["BackgroundScorer", "parse_predictions", "score_unit"]


def parse_predictions(stored: Mapping[str, str]) -> dict[str, Any]:
    """Item id -> prediction, from item id -> the prediction's JSON text as the store holds it. The cyclic
    garbage collector is paused meanwhile: a unit's predictions are up to millions of small lists, and each
    collection it would start walks all of them again."""
    with no_cycle_collection():
        return {k: json.loads(v) for k, v in stored.items()}


def score_unit(task: Task, ds: Dataset, items: Sequence[Item], done: Mapping[str, Any]) -> dict[str, float]:
    """Metrics of one unit from its finished predictions (item id -> prediction).

    A clip dataset scores the labelled frames of every clip, then each of the dataset's groups (each clip,
    each class) alone, reported as ``<metric>/<group>`` for the task's headline metrics."""
    if not done:
        return {m: float("nan") for m in task.metrics}
    if not isinstance(ds, ClipFrames):
        return task.evaluate(done, ds)
    frames = ds.frame_predictions(done)
    metrics = task.evaluate(frames, ds)
    scored = [it for it in items if it.id in done]
    for group, ids in ds.groups(scored).items():
        wanted = set(ids)
        sub = {k: v for k, v in frames.items() if k.rpartition(FRAME_SEP)[0] in wanted}
        if not sub:
            continue
        part = task.evaluate(sub, ds)
        metrics.update({f"{m}/{group}": part[m] for m in task.metrics if m in part})
    return metrics


# ---- the background process ----------------------------------------------------------------------
def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack("<Q", len(data)) + data


def _recv(f: BinaryIO) -> Any:
    head = f.read(8)
    if len(head) < 8:
        raise EOFError
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def _yield_cpu() -> None:
    """Run only on CPU time the driver leaves idle: scoring must not slow the model it overlaps (PyTorch's
    intra-op threads wait for their slowest thread, so a core taken from them costs more than a core)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not Linux
        try:
            os.nice(19)
        except OSError:
            pass


def _prepare(task: Task, ds: Dataset, items: Sequence[Item]) -> None:
    """Warm up for units of ``task`` on ``ds``: score its first item with no prediction, which imports the
    evaluator and reads the ground truth. A task that cannot score that is simply not warmed up (its real
    units report their own errors)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            score_unit(task, ds, items[:1], {items[0].id: []})
    except Exception:
        pass


def _worker_main() -> None:
    """Serve scoring jobs: ``(job id, task card, dataset card, items, done)`` -> ``(job id, metrics, error)``;
    ``done`` holds the stored JSON text of each finished prediction (parsed here, not in the driver). A job
    whose ``done`` is None prepares the task and dataset (:func:`_prepare`) and is answered with job id None:
    the process is ready."""
    # Ctrl-C reaches the whole process group: the driver decides what stops, and it stops this process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _yield_cpu()
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the evaluators print goes to stderr, not into the replies
    sys.path[:] = _recv(inp)
    built: dict[tuple[str, str], tuple[Task, Dataset]] = {}
    while True:
        try:
            job_id, task_card, ds_card, items, done = _recv(inp)
        except EOFError:
            return
        try:
            key = (task_card.digest(), ds_card.digest())
            if key not in built:
                built[key] = (build(task_card), build(ds_card))
            task, ds = built[key]
            if done is None:
                _prepare(task, ds, items)
                reply = _frame((None, None, None))
            else:
                reply = _frame((job_id, score_unit(task, ds, items, parse_predictions(done)), None))
        except Exception as exc:
            reply = _frame((job_id, None, f"{type(exc).__name__}: {exc}"))
        out.write(reply)
        out.flush()


class BackgroundScorer:
    """One background process scoring units (in order) while the driver goes on; started on first use.

    Jobs go out through a writer thread: the driver never waits on the pipe (a job is megabytes of
    predictions, and the scoring process reads only when it gets CPU)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._futures: dict[str, Future[dict[str, float]]] = {}
        self._lock = threading.Lock()
        self._broken: str | None = None
        #: set once the process answered anything: it is started, imported and (if asked) prepared
        self._ready = threading.Event()
        #: (task card, dataset card) digests the process was asked to prepare
        self._prepared: set[tuple[str, str]] = set()
        self.scored = 0  # units whose metrics came from the background process

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "vcmbench.scoring"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE)  # fmt: skip
        self._outbox.put(_frame(list(sys.path)))
        self._threads = [threading.Thread(target=self._write, name="vcmbench-scoring-out", daemon=True),
                         threading.Thread(target=self._read, name="vcmbench-scoring-in", daemon=True)]  # fmt: skip
        for t in self._threads:
            t.start()

    def _write(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            while (data := self._outbox.get()) is not None:
                proc.stdin.write(data)
                proc.stdin.flush()
        except OSError:  # the process is gone: the reader fails what is pending
            pass
        finally:
            try:
                proc.stdin.close()  # end of jobs: the process exits
            except OSError:
                pass

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            while True:
                job_id, metrics, error = _recv(proc.stdout)
                self._ready.set()
                with self._lock:
                    fut = self._futures.get(job_id)
                if fut is None:
                    continue
                if error is None:
                    fut.set_result(metrics)
                else:
                    fut.set_exception(RuntimeError(error))
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        code = proc.wait()
        with self._lock:
            self._broken = f"the scoring process ended (exit code {code})"
            pending = [f for f in self._futures.values() if not f.done()]
        for fut in pending:
            fut.set_exception(RuntimeError(self._broken))

    def submit(self, unit_key: str, task_card: Card, ds_card: Card, items: Sequence[Item],
               done: Mapping[str, Any]) -> None:  # fmt: skip
        """Score a unit in the background; returns at once. ``done``: item id -> the finished prediction's
        stored JSON text."""
        if self._broken is not None:
            return
        with self._lock:  # before the job goes out: the reply finds its future by key
            self._futures[unit_key] = Future()
        if not self._send((unit_key, task_card, ds_card, list(items), dict(done))):
            with self._lock:
                self._futures.pop(unit_key, None)

    def prepare(self, task_card: Card, ds_card: Card, items: Sequence[Item]) -> None:
        """Start the process, if need be, and have it import and read what units of ``task_card`` on ``ds_card``
        need, without waiting: :meth:`ready` says when it has. Asked again for the same cards, does nothing."""
        key = (task_card.digest(), ds_card.digest())
        if self._broken is None and items and key not in self._prepared:
            self._prepared.add(key)
            self._send((None, task_card, ds_card, list(items[:1]), None))

    def _send(self, job: tuple[Any, ...]) -> bool:
        """Queue a job for the process (started if need be); False, background scoring then off for the run,
        where it cannot be framed or the process cannot start."""
        try:
            data = _frame(job)
            if self._proc is None:
                self._start()
        except (OSError, pickle.PicklingError, AttributeError, TypeError) as exc:
            self._broken = f"{type(exc).__name__}: {exc}"
            self.log(f"background scoring unavailable ({self._broken}); scoring in this process")
            return False
        self._outbox.put(data)
        return True

    def ready(self) -> bool:
        """Whether the process is up and answering (it has replied at least once) and not known to have failed."""
        return self._ready.is_set() and self._broken is None

    def has(self, unit_key: str) -> bool:
        """Whether the unit was submitted and its metrics are not taken yet."""
        with self._lock:
            return unit_key in self._futures

    def busy(self) -> bool:
        """Whether a unit submitted is still being scored (or waits for its turn)."""
        with self._lock:
            return any(not f.done() for f in self._futures.values())

    def take(self, unit_key: str) -> dict[str, float] | None:
        """The unit's metrics, waiting for them; None when it was not submitted or its scoring failed."""
        with self._lock:
            fut = self._futures.get(unit_key)
        if fut is None:
            return None
        try:
            metrics = fut.result()  # the reader thread finds the future by key: dropped only once resolved
        except RuntimeError as exc:
            self.log(f"background scoring of a unit failed ({exc}); scoring it in this process")
            return None
        finally:
            with self._lock:
                self._futures.pop(unit_key, None)
        self.scored += 1
        return metrics

    def close(self, cancel: bool = False) -> None:
        """Stop the process: at once with ``cancel`` (interrupted), else once it has finished its jobs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if cancel or not self.busy():  # nothing left to wait for (it may still be starting or preparing)
            proc.kill()
        self._outbox.put(None)
        proc.wait()
        for t in self._threads:
            t.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        with self._lock:
            self._futures.clear()


if __name__ == "__main__":
    _worker_main()
