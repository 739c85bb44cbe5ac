"""The Ray executor: the same grid on a laptop or across a cluster (Moritz et al., "Ray: A Distributed
Framework for Emerging AI Applications", OSDI 2018).

It keeps the :class:`~vcmbench.executors.base.Executor` contract, so the planner,
the runner and the store are the same as with the local executor:

- **encodes and decodes are Ray tasks** with a CPU request (``cpus_per_encode``,
  default 1: one VTM / ffmpeg process per CPU across every node); a bounded number
  of them is in flight, and results are yielded as they finish, so the runner
  (the driver, the only writer to the store) commits every unit as it arrives;
- **task models are long-lived Ray actors** holding their weights (loaded once per
  actor through :func:`~vcmbench.adapters.loaded_task`), requesting
  ``num_gpus`` when the cluster has GPUs and CPUs otherwise, or any custom
  resource (``model_resources``); decoded images reach the actor through the
  object store: the actor receives the ObjectRefs of the decode tasks' results,
  the driver never fetches the pixels;
- **faults**: a worker process that dies mid-task (killed, out of memory, node
  lost) is retried up to ``max_retries`` times by Ray (tasks are re-executed, the
  model actor is restarted and its batch re-run); past that, the error is that
  job's error and the runner records the item as failed (a rerun retries it);
  an unreachable ``address`` is a :class:`~vcmbench.errors.VcmbenchError` saying
  how to start a cluster; on Ctrl-C every task still in flight is cancelled
  (its encoder process killed) and the finished units stay stored.

Data paths (dataset roots, weights, card folders) must be valid on every node
(a shared file system); bitstreams and decoded images travel through Ray's
object store. ``ray`` is imported only when this module is.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from ..adapters import loaded_task
from ..cards import Card
from ..errors import VcmbenchError
from .base import (
    IDLE_S,
    BatchResult,
    Decoded,
    DecodeJob,
    EncodeJob,
    EncodeResult,
    Executor,
    Outcome,
    log_stderr,
    predict_into,
    run_decode,
    run_encode,
)

#: ``model_threads`` meaning every core of the actor's node
ALL_CORES = -1


def driver_torch_threads() -> int:
    """PyTorch threads of a CPU model actor by default: as many as PyTorch uses in this process (the
    driver), which is what the local executor would use; every core of the actor's node if PyTorch is not
    loaded here. The number of threads changes the order of floating-point sums in convolutions, so
    the same number makes the predictions bit-identical to the local executor's."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else ALL_CORES


#: how often the driver wakes up while waiting (keeps Ctrl-C responsive)
_POLL_S = 0.5

START_HINT = (
    "start a cluster with `ray start --head` on the head node (and `ray start --address HEAD_IP:6379` on "
    "each worker node), then pass --address HEAD_IP:6379 (or --address auto on a cluster node); "
    "without --address, --executor ray starts a Ray instance on this machine"
)


# ---- worker side ----------------------------------------------------------------------------------
def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _encode_task(job: EncodeJob) -> tuple[str, EncodeResult]:
    """Ray task: one encode (the codec adapter is built once per worker process)."""
    return _node_id(), run_encode(job)


def _decode_task(job: DecodeJob) -> Decoded:
    """Ray task: one decode; the result (pixels) stays in the object store for the model actor."""
    return run_decode(job)


def _cause(exc: BaseException) -> BaseException:
    """The exception a job raised, unwrapped from Ray's envelope (so messages match the local executor)."""
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return exc


class _ModelWorker:
    """Ray actor: one task model, loaded once, predicting batches of images decoded by Ray tasks."""

    def __init__(self, card: Card, threads: int | None) -> None:
        if threads == ALL_CORES:
            threads = len(os.sched_getaffinity(0))
        if threads:
            try:
                import torch

                torch.set_num_threads(threads)
            except ImportError:  # pragma: no cover - a task without torch
                pass
        self.task = loaded_task(card)

    def ready(self) -> dict[str, Any]:
        """Where the model lives (node, device); returns once the weights are loaded."""
        ctx = ray.get_runtime_context()
        return {
            "node": ctx.get_node_id(), "pid": os.getpid(),
            "device": self.task.running_on(),
            "accelerators": ctx.get_accelerator_ids(),
        }  # fmt: skip

    def predict(self, decoded: list[Any]) -> BatchResult:
        """Predict a batch. ``decoded`` holds ObjectRefs of decode results (or a job's error)."""
        batch = BatchResult([])
        images = []
        for ref in decoded:
            value: Decoded | None = None
            error: BaseException | None = None
            if isinstance(ref, BaseException):
                error = ref
            else:
                try:
                    value = ray.get(ref)
                except RayError as exc:  # the decode raised, or its worker died past its retries
                    error = _cause(exc)
            batch.decode.append(value)
            batch.errors.append(error)
            if value is not None:
                images.append(value.image)
        # the same per-image error isolation and bookkeeping as the local executor
        return predict_into(self.task, batch, images)


# ---- driver side --------------------------------------------------------------------------------
def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when ``HOST:PORT`` does not answer (Ray itself would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise VcmbenchError(f"--address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.5:6379); {START_HINT}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise VcmbenchError(f"no Ray cluster answers at {address} ({exc}); {START_HINT}") from None


class RayExecutor(Executor):
    """Runs encodes and decodes as Ray tasks and task models as Ray actors (see the module docstring).

    Args:
        address: ``None`` starts a Ray instance on this machine (or joins ``$RAY_ADDRESS``);
            ``"auto"`` joins the cluster this machine belongs to; ``HOST:PORT`` joins that head node.
            If Ray is already initialised in this process, that connection is used as it is.
        workers: CPUs of a Ray instance started here [all cores]; ignored when joining a cluster.
        cpus_per_encode: CPUs each encode or decode task requests (1: one encoder process per CPU).
        cpus_per_model: CPUs each model actor requests (held while the actor lives); ``None``: 1, or 0
            when the cluster is too small to leave a CPU for the decode tasks besides the actors.
        gpus_per_model: GPUs each model actor requests; ``None``: 1 if the cluster has GPUs, else 0.
        model_resources: custom Ray resources each model actor requests, e.g. ``{"a100": 1}``.
        model_replicas: model actors per task; batches are spread over them.
        model_threads: PyTorch threads of a model actor on CPU; ``None``: see :func:`driver_torch_threads`
            (untouched on GPU).
        max_retries: re-executions of a task whose worker died (and restarts of a model actor)
            before the job is recorded as failed.
        max_in_flight: encode/decode tasks submitted at once; ``None``: twice the task slots of the cluster.
        log: where notes go (the runner's log).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cpus_per_encode: float = 1.0,
        cpus_per_model: float | None = None,
        gpus_per_model: float | None = None,
        model_resources: Mapping[str, float] | None = None,
        model_replicas: int = 1,
        model_threads: int | None = None,
        max_retries: int = 3,
        max_in_flight: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        for label, value in (("cpus_per_encode", cpus_per_encode), ("cpus_per_model", cpus_per_model or 0)):
            if value < 0:
                raise VcmbenchError(f"--ray-{label.replace('_', '-')} must be >= 0, got {value}")
        if gpus_per_model is not None and gpus_per_model < 0:
            raise VcmbenchError(f"--ray-gpus-per-model must be >= 0, got {gpus_per_model}")
        if model_replicas < 1 or max_retries < 0 or (max_in_flight is not None and max_in_flight < 1):
            raise VcmbenchError(
                "Ray settings: model_replicas and max_in_flight must be >= 1 and max_retries >= 0, got "
                f"{model_replicas}, {max_in_flight}, {max_retries}"
            )
        self.log = log or log_stderr
        self.cpus_per_encode = float(cpus_per_encode)
        self.cpus_per_model = None if cpus_per_model is None else float(cpus_per_model)
        self.gpus_per_model = gpus_per_model
        self.model_resources = dict(model_resources or {})
        self.model_replicas = int(model_replicas)
        self.model_threads = model_threads
        self.max_retries = int(max_retries)
        self.max_in_flight = max_in_flight
        self._inflight: set[ray.ObjectRef] = set()
        self._actors: list[Any] = []
        self._closed = False
        self._started = False
        self._status_at = 0.0
        self._nodes = 0
        #: node id -> encodes it ran (in this executor's lifetime)
        self.encode_nodes: Counter[str] = Counter()
        #: node id of every model actor started (in order)
        self.model_nodes: list[str] = []
        self._connect(address, workers)
        self.workers = self._slots()
        # SPREAD: encodes are CPU-bound and short-lived; Ray's default (pack onto the submitting node, reuse
        # its leased workers) would leave the other nodes idle while the head works through the queue
        job_opts = {"num_cpus": self.cpus_per_encode, "max_retries": self.max_retries, "retry_exceptions": False,
                    "scheduling_strategy": "SPREAD"}  # fmt: skip
        self._encode = ray.remote(_encode_task).options(**job_opts)
        self._decode = ray.remote(_decode_task).options(**job_opts)

    # ---- connection ------------------------------------------------------------------------
    def _connect(self, address: str | None, workers: int | None) -> None:
        if ray.is_initialized():
            return
        address = address or os.environ.get("RAY_ADDRESS") or None
        quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address is None:
            # a private single-machine instance: no dashboard, no usage report, bound to loopback
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", num_cpus=workers, include_dashboard=False, _node_ip_address="127.0.0.1",
                     **quiet)  # fmt: skip
            self._started = True
            return
        if address != "auto":
            check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:
            raise VcmbenchError(f"cannot join the Ray cluster at {address!r}: {exc}; {START_HINT}") from None

    def _slots(self) -> int:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        if self.cpus_per_encode <= 0:
            return max(1, int(cpus))
        return max(1, int(cpus // self.cpus_per_encode))

    def status(self) -> dict[str, Any]:
        """Across the cluster: tasks running, tasks queued (submitted, waiting for a slot), nodes alive."""
        now = time.monotonic()
        if now - self._status_at > 5.0:  # the cluster's size is asked at most every 5 s
            self._status_at = now
            self._nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            self.workers = self._slots()
        running = min(len(self._inflight), self.workers)
        return {"running": running, "queued": len(self._inflight) - running, "nodes": self._nodes}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cancel(self._inflight)
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors.clear()
        if self._started:
            ray.shutdown()

    def _cancel(self, refs: Iterable[ray.ObjectRef]) -> None:
        """Cancel tasks still queued or running (force: their worker and its encoder process are killed)."""
        for ref in list(refs):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished, or an actor call (stopped with its actor)
                pass
            self._inflight.discard(ref)

    # ---- encodes -----------------------------------------------------------------------------
    def encode(self, jobs: Iterable[EncodeJob], idle: Callable[[], None] | None = None,
               keep: Callable[[bytes], str] | None = None) -> Iterator[Outcome]:  # fmt: skip
        # the workers are other processes, maybe other nodes: bitstreams come back and the driver keeps them
        limit = self.max_in_flight or 2 * self._slots()
        quiet_since = time.monotonic()
        it = iter(jobs)
        running: dict[ray.ObjectRef, EncodeJob] = {}
        try:
            while True:
                for job in islice(it, max(0, limit - len(running))):
                    ref = self._encode.remote(job)
                    running[ref] = job
                    self._inflight.add(ref)
                if not running:
                    return
                ready, _ = ray.wait(list(running), num_returns=1, timeout=_POLL_S)
                if ready:
                    quiet_since = time.monotonic()
                elif idle is not None and time.monotonic() - quiet_since >= IDLE_S:
                    idle()
                    quiet_since = time.monotonic()
                for ref in ready:
                    job = running.pop(ref)
                    self._inflight.discard(ref)
                    try:
                        node, value = ray.get(ref)
                    except RayError as exc:
                        yield Outcome(job, None, self._job_error(exc))
                        continue
                    self.encode_nodes[node] += 1
                    yield Outcome(job, value)
        finally:
            self._cancel(running)

    def _job_error(self, exc: RayError) -> BaseException:
        cause = _cause(exc)
        if cause is exc and not isinstance(exc, RayTaskError):
            return VcmbenchError(
                f"the Ray worker running this job died {self.max_retries + 1} time(s) (killed, out of memory, "
                f"or its node was lost); raise --ray-max-retries to retry more: {type(exc).__name__}: {exc}"
            )
        return cause

    # ---- inference ---------------------------------------------------------------------------
    def _model_options(self) -> dict[str, Any]:
        gpus = self.gpus_per_model
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        cpus = self._model_cpus()
        want = {"CPU": cpus, "GPU": gpus, **self.model_resources}
        want = {k: v for k, v in want.items() if v}
        fits = any(
            all(node.get("Resources", {}).get(k, 0) >= v for k, v in want.items())
            for node in ray.nodes() if node.get("Alive")
        )  # fmt: skip
        if not fits:
            have = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
            raise VcmbenchError(
                f"no node of the Ray cluster has the resources a model actor asks for ({want}); nodes have "
                f"{have}; lower --ray-gpus-per-model / --ray-cpus-per-model or change --ray-model-resource"
            )
        return {
            "num_cpus": cpus, "num_gpus": gpus, "resources": self.model_resources or None,
            "max_restarts": self.max_retries, "max_task_retries": self.max_retries,
        }  # fmt: skip

    def _model_cpus(self) -> float:
        """CPUs per model actor, leaving at least one decode task slot on the cluster (or it would hang)."""
        total = float(ray.cluster_resources().get("CPU", 0))
        cpus = 1.0 if self.cpus_per_model is None else self.cpus_per_model
        if total - self.model_replicas * cpus >= self.cpus_per_encode:
            return cpus
        if self.cpus_per_model is None:
            self.log(f"the Ray cluster has {total:g} CPU(s): the model actor holds none, to leave them to decodes")
            return 0.0
        raise VcmbenchError(
            f"the Ray cluster has {total:g} CPU(s): {self.model_replicas} model actor(s) x {cpus:g} CPU(s) would "
            f"leave less than the {self.cpus_per_encode:g} each decode task needs, and the run would hang; lower "
            "--ray-cpus-per-model / --ray-model-replicas / --ray-cpus-per-encode or add nodes"
        )

    def _start_models(self, task: Card) -> list[Any]:
        opts = self._model_options()
        cls = ray.remote(_ModelWorker).options(**opts)
        threads = self.model_threads
        if threads is None and not opts["num_gpus"]:
            threads = driver_torch_threads()
        actors = [cls.remote(task, threads) for _ in range(self.model_replicas)]
        self._actors.extend(actors)
        for actor in actors:
            ref = actor.ready.remote()
            while True:
                ready, _ = ray.wait([ref], timeout=_POLL_S)
                if ready:
                    break
            try:
                info = ray.get(ref)
            except RayError as exc:
                raise VcmbenchError(f"the {task.name} model could not start on Ray: {_cause(exc)}") from None
            self.model_nodes.append(info["node"])
            self.log(f"{task.name}: model actor on node {info['node'][:12]} (pid {info['pid']}, device "
                     f"{info['device']}, resources {self._short(opts)})")  # fmt: skip
        return actors

    @staticmethod
    def _short(opts: Mapping[str, Any]) -> str:
        res = {"CPU": opts["num_cpus"], "GPU": opts["num_gpus"], **(opts["resources"] or {})}
        return ", ".join(f"{k}={v:g}" for k, v in res.items() if v)

    def infer(self, task: Card, jobs: Iterable[DecodeJob], batch_size: int) -> Iterator[BatchResult]:
        actors: list[Any] = []  # started with the first batch that has an image to predict
        limit = max(2 * self.model_replicas, math.ceil((self.max_in_flight or 2 * self._slots()) / batch_size))
        it = iter(jobs)
        pending: dict[ray.ObjectRef, tuple[list[DecodeJob], list[Any]]] = {}
        n = 0
        try:
            while True:
                while len(pending) < limit:
                    chunk = list(islice(it, batch_size))
                    if not chunk:
                        break
                    refs = [self._submit_decode(job) for job in chunk]
                    if all(isinstance(r, BaseException) for r in refs):  # no image (encodes failed): no model
                        k = len(chunk)
                        yield BatchResult(chunk, [None] * k, list(refs), [None] * k, [None] * k)
                        continue
                    if not actors:
                        actors = self._start_models(task)
                    ref = actors[n % len(actors)].predict.remote(refs)
                    n += 1
                    pending[ref] = (chunk, refs)
                    self._inflight.add(ref)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=_POLL_S)
                for ref in ready:
                    chunk, refs = pending.pop(ref)
                    self._inflight.discard(ref)
                    self._inflight.difference_update(r for r in refs if isinstance(r, ray.ObjectRef))
                    yield self._batch(chunk, ref)
        finally:
            for ref, (_, refs) in pending.items():
                self._inflight.discard(ref)
                self._cancel(r for r in refs if isinstance(r, ray.ObjectRef))
            for actor in actors:
                ray.kill(actor, no_restart=True)
                self._actors.remove(actor)

    def _submit_decode(self, job: DecodeJob) -> Any:
        if job.missing is not None or (job.codec is not None and job.bitstream is None):
            try:  # nothing to decode: fails at once, in the driver, without a round trip
                run_decode(job)
            except Exception as exc:  # noqa: BLE001 - handed to the actor as this job's error
                return exc
        ref = self._decode.remote(job)
        self._inflight.add(ref)
        return ref

    def _batch(self, chunk: list[DecodeJob], ref: ray.ObjectRef) -> BatchResult:
        try:
            result: BatchResult = ray.get(ref)
        except RayError as exc:  # the model actor died past its restarts (or was cancelled)
            err = self._job_error(exc)
            n = len(chunk)
            return BatchResult(chunk, [None] * n, [err] * n, [None] * n, [None] * n)
        result.jobs = chunk
        return result
