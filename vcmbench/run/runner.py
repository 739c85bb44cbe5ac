"""Run a grid: resolve, plan work units, encode, infer, evaluate, store, write the run's files.

Stages, each resumable on its own (see :mod:`.encode`, :mod:`.infer`, :mod:`.evaluate`):

1. **encode** every (codec, quality, item) not yet in the store, many at once;
2. **infer**: per task, the model is loaded once; items are decoded in the worker pool (working ahead)
   and predicted in batches, each batch committed as one transaction;
3. **evaluate** every unit from the stored predictions; a unit whose predictions are all stored while
   the model still has work may be scored meanwhile in a background process (:mod:`vcmbench.scoring`).

A failed item (corrupt image, crashed encoder) is recorded with its error and retried on the next run;
every other result is kept. The driver is the only writer to the store. Each run writes its log, failures and
warnings into ``runs/<run_id>/run.log`` (:mod:`.runlog`), also when it is interrupted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import VcmbenchError
from ..executors.base import Executor
from ..executors.local import LocalExecutor
from ..media.hashing import stable_hash
from ..metrics.coco_map import BACKEND_ENV as COCO_EVAL_ENV
from ..plan import DatasetSelection, WorkUnit, expand_grid
from ..provenance import provenance
from ..scoring import BackgroundScorer
from ..store import Store
from .background import BackgroundScoring
from .config import RunConfig
from .context import Failure, RunContext
from .cost import with_cost
from .encode import encode_stage
from .evaluate import evaluate_stage, prepare_early
from .infer import infer_stage
from .outputs import config_record, write_outputs
from .resolve import ResolvedRun, resolve
from .runlog import LOG_NAME, RunLog
from .training_overlap import TrainingOverlap, training_overlaps


@dataclass
class RunReport:
    run_id: str
    out: Path
    rows: list[dict[str, Any]]
    failures: list[Failure]
    work: dict[str, int]
    status: str
    #: wall seconds of each stage ("encode", "infer", "evaluate") of this run
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: the units of learned codecs checked against their training sets (:mod:`.training_overlap`)
    training_overlap: list[TrainingOverlap] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and self.status == "done"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.run_id

    @property
    def log_path(self) -> Path:
        """The run's log file (:mod:`.runlog`)."""
        return self.run_dir / LOG_NAME


def plan_units(cfg: RunConfig, res: ResolvedRun) -> list[WorkUnit]:
    selections = [DatasetSelection(name, ds.identity(), tuple(it.id for it in items), tuple(shas))
                  for name, (ds, items, shas) in res.datasets.items()]  # fmt: skip
    return expand_grid(
        selections,
        [(name, t.identity()) for name, t in res.tasks.items()],
        [(name, c.identity(), qs) for name, (c, qs) in res.codecs.items()],
        reference=cfg.reference,
        scorers=res.scorer_of if res.pairing else None,
    )


@contextmanager
def exported(name: str, value: str | None) -> Iterator[None]:
    """``$name`` set to ``value`` while the block runs, then restored (None: left as it is)."""
    previous = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def make_executor(cfg: RunConfig, log: Callable[[str], None]) -> Executor:
    """The configured executor; joining a Ray cluster happens here (an unreachable one fails before work)."""
    if cfg.executor == "ray":
        from ..executors.ray import RayExecutor  # imports ray only when it is chosen

        return RayExecutor(cfg.address, workers=cfg.workers, log=log, **cfg.ray_options)
    if cfg.executor != "local":
        raise VcmbenchError(f"unknown executor {cfg.executor!r}: choose local or ray")
    if cfg.address or cfg.ray_options:
        raise VcmbenchError("--address and --ray-* options need --executor ray")
    return LocalExecutor(cfg.workers)


class Runner:
    """One run of a :class:`RunConfig` against one output root."""

    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        #: the run's log function: the terminal (``log``, default stderr) and runs/<run_id>/run.log
        self.log = self.runlog = RunLog(log or (lambda msg: print(msg, file=sys.stderr)))
        self.store = Store(config.out)
        self.scorer = BackgroundScorer(self.log)
        self.run_id: str | None = None

    def make_executor(self) -> Executor:
        return make_executor(self.config, self.log)

    def run(self) -> RunReport:
        with self.runlog.capture():  # warnings and logging records raised meanwhile go into run.log too
            try:
                res = resolve(self.config, self.store.file_sha256)
                # a chosen backend is the one the processes this run starts (scorer, Ray workers) use, while it runs
                with exported(COCO_EVAL_ENV, res.coco_eval if self.config.coco_eval is not None else None):
                    return self._run(res)
            except BaseException as exc:
                self.runlog.stopped(self.run_id, exc)
                raise
            finally:
                self.runlog.close()

    def _open_log(self, run_id: str) -> None:
        """Start the run's log file: which run, what command, and the run before it in this output root."""
        previous = self.store.latest_run()
        info = self.store.run_info(previous) if previous else None
        before = f"{previous} ({info['status']})" if info else "none"
        self.runlog.open(self.store.root / "runs" / run_id / LOG_NAME,
                         f"vcmbench run {run_id} started {datetime.now(UTC).isoformat(timespec='seconds')}\n"
                         f"command: {' '.join(sys.argv)}\nprevious run in {self.store.root}: {before} (a rerun "
                         "resumes from the store and writes its own run.log in its own folder)")  # fmt: skip

    def _run(self, res: ResolvedRun) -> RunReport:
        cfg = self.config
        executor = self.make_executor()
        units = plan_units(cfg, res)
        self.run_id = run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + stable_hash(
            [u.key for u in units] + [time.time()], n=6
        )
        self._open_log(run_id)
        config = config_record(cfg, res, units)
        overlaps = training_overlaps(res, units, self.store.file_sha256)
        for o in overlaps:
            if o.message():
                self.log(o.message())
        prov = {**provenance(), "training_overlap": [o.record() for o in overlaps]}
        self.store.start_run(run_id, " ".join(sys.argv), config, prov)
        self.store.link_units(run_id, [u.key for u in units])
        points = sum(len(q) for _, q in res.codecs.values()) + int(cfg.reference)
        self.log(f"run {run_id}: {len(units)} work units ({len(res.datasets)} dataset x {len(res.tasks)} task x "
                 f"{points} points) -> {self.store.root}")  # fmt: skip
        ctx = RunContext(self.store, run_id, res, self.log, cfg.progress, on_failure=self.runlog.failure)
        status, rows, seconds = self._stages(ctx, units, executor)
        if status != "interrupted":  # times' machines and learned codecs' MACs beside the scores
            rows = with_cost(self.store, res, units, rows, self.log)
        if status == "done" and ctx.failures:
            status = "failed"
        self.store.finish_run(run_id, status)
        self.runlog.write(f"run {run_id} finished: status {status}, {len(ctx.failures)} failed item(s), work "
                          + ", ".join(f"{n} {k}" for k, n in ctx.work.items()))  # fmt: skip
        report = RunReport(run_id, self.store.root, rows, ctx.failures, dict(ctx.work), status, seconds, overlaps)
        if status != "interrupted":
            write_outputs(self.store, report.run_dir, run_id, status, rows, report.work, report.failures, config)
        return report

    def _stages(self, ctx: RunContext, units: list[WorkUnit],
                executor: Executor) -> tuple[str, list[dict[str, Any]], dict[str, float]]:  # fmt: skip
        """Run the three stages: (status "done" or "interrupted", tidy rows, seconds per stage)."""
        background = BackgroundScoring(self.scorer, lambda u: self._submit_scoring(ctx, u))
        seconds: dict[str, float] = {}
        status, rows = "done", []
        with executor:
            try:
                t = time.perf_counter()
                shares = self.config.background_scoring != "off"  # the evaluate stage shares units with the scorer
                if shares:
                    prepare_early(ctx, units, self.scorer)
                encode_stage(ctx, units, executor)
                seconds["encode"] = time.perf_counter() - t
                self._log_stage(ctx, "encode", seconds, "encodes")
                infer_stage(ctx, units, executor, background)
                seconds["infer"] = time.perf_counter() - t - seconds["encode"]
                self._log_stage(ctx, "infer", seconds, "decodes", "inferences")
                share = (lambda u: self._submit_scoring(ctx, u)) if shares else None
                rows = evaluate_stage(ctx, units, self.scorer, self.config.common_items, share)
                seconds["evaluate"] = time.perf_counter() - t - seconds["encode"] - seconds["infer"]
                self._log_stage(ctx, "evaluate", seconds, "evaluations")
            except KeyboardInterrupt:
                status = "interrupted"
                self.log("interrupted: every finished result is stored; run the same command again to resume")
            finally:
                self.scorer.close(cancel=status == "interrupted")
        return status, rows, seconds

    def _log_stage(self, ctx: RunContext, stage: str, seconds: dict[str, float], *counters: str) -> None:
        """A stage's line in run.log, in place of its progress bar: the work it did, its failures, its time."""
        failed = sum(f.stage == stage or (stage == "infer" and f.stage == "decode") for f in ctx.failures)
        work = ", ".join(f"{ctx.work[c]} {c}" for c in counters)
        self.runlog.write(f"stage {stage}: {work}, {failed} item(s) failed, {seconds[stage]:.1f} s")

    def _submit_scoring(self, ctx: RunContext, u: WorkUnit) -> None:
        _, _, done, _ = ctx.gather(u, parse=False)  # parsed in the scoring process, not here
        if done:
            items = ctx.res.datasets[u.dataset].items
            self.scorer.submit(u.key, ctx.res.cards[u.scoring_task], ctx.res.cards[u.dataset], items, done)


def run(config: RunConfig, log: Callable[[str], None] | None = None) -> RunReport:
    runner = Runner(config, log)
    try:
        return runner.run()
    finally:
        runner.store.close()
