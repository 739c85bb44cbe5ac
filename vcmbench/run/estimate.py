"""``vcmbench estimate``: the work a planned grid still needs, and how long it should take (``docs/estimate.md``).

Three parts, each with one job:

- **pending work** (:func:`pending_work`): the run's own planning (:func:`~.resolve.resolve`,
  :func:`~.runner.plan_units`) against the store at ``--out``: the encodes, decodes, inferences and
  evaluations a ``vcmbench run`` of the same grid would do now (cache hits left out), each job with the
  pixels it works on;
- **costs** (:func:`measured_costs`): seconds per pixel of each (codec identity, quality)'s encodes and
  decodes, and seconds per image of each task identity's inference, from the ``encodes`` and
  ``predictions`` tables of one or more stores (a finished run's, or a small calibration run's);
- **the time model** (:func:`wall_time`), pure: pending work x costs on a :class:`Machine` (this one, or
  ``nodes`` x ``cpus`` cores and ``gpus`` GPUs), plus the harness's own overheads (:class:`Overheads`).

The model (what it assumes and ignores is listed in ``docs/estimate.md``):

- encodes are spread over every encode slot (all cores of all nodes, or ``--workers``); the stage takes
  max(total / slots, its longest encode);
- per task, decodes (on the cores) overlap inference: on GPUs, one model replica per GPU, inference
  ``gpu_speedup`` times faster than the CPU figure measured; without GPUs, one model process per node on one
  core, sharing the cores with the decodes;
- every evaluated unit is scored in the driver after inference (background scoring ignored: an upper bound);
- each task's model loads once per replica (its load time read from the store: :func:`per_image_rate`);
- fixed and per-job overheads of the harness (process start and resolving, storing each result) are
  :class:`Overheads`, measured on the 2-core development machine; ``--calibrate`` measures the fixed part.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..datasets.base import Item
from ..errors import VcmbenchError
from ..plan import WorkUnit, quality_label
from ..store import Store
from .config import RunConfig
from .context import RunContext
from .encode import encode_jobs
from .evaluate import common_scope
from .resolve import ResolvedRun, resolve
from .runner import plan_units


# ---- pending work ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One pending encode, decode or inference: whose cost it is and how many pixels it works on."""

    #: codec identity (encodes, decodes) or task identity (inferences)
    identity: str
    #: codec or task card name and quality label, for messages
    label: str
    quality: str | None
    #: pixels of the item (all frames of a clip); None when the item's size is not known before decoding it
    pixels: int | None


@dataclass
class PendingWork:
    encodes: list[Job] = field(default_factory=list)
    #: decodes and inferences by the task card whose model predicts them (a decode feeds one inference)
    decodes: dict[str, list[Job]] = field(default_factory=dict)
    inferences: dict[str, list[Job]] = field(default_factory=dict)
    #: units to score, with the number of their items
    evaluations: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The same counters as a run's ``RunReport.work``."""
        return {"encodes": len(self.encodes), "decodes": sum(len(v) for v in self.decodes.values()),
                "inferences": sum(len(v) for v in self.inferences.values()),
                "evaluations": len(self.evaluations)}  # fmt: skip


def item_pixels(item: Item) -> int | None:
    """Pixels of an item from its metadata (width, height, frames), else from the image file's header."""
    meta = item.meta
    if meta.get("width") and meta.get("height"):
        return int(meta["width"]) * int(meta["height"]) * int(meta.get("frames") or 1)
    try:
        from PIL import Image

        with Image.open(item.path) as im:
            return int(im.width * im.height)
    except (OSError, ValueError):
        return None


def pending_work(store: Store, res: ResolvedRun, units: Sequence[WorkUnit],
                 pixels: Callable[[Item], int | None] = item_pixels) -> PendingWork:  # fmt: skip
    """What a run of ``units`` would do now against ``store``: the encode stage's jobs not yet stored (or
    whose bitstream is missing), every prediction not stored as done (each once; a coded one needs a decode
    first), and the units the evaluate stage would score."""
    ctx = RunContext(store, "estimate", res, lambda _msg: None, progress=False)
    out = PendingWork()
    jobs, where = encode_jobs(ctx, units)
    have = store.encode_records(jobs)
    sizes: dict[str, int | None] = {}

    def size(item: Item) -> int | None:
        if str(item.path) + item.id not in sizes:
            sizes[str(item.path) + item.id] = pixels(item)
        return sizes[str(item.path) + item.id]

    for key in jobs:
        rec = have.get(key)
        if not (rec is not None and rec.status == "done" and store.has_blob(rec.blob)):
            u, item, _ = where[key]
            out.encodes.append(Job(u.codec_id, u.codec, quality_label(u.quality), size(item)))
    queued: set[str] = set()
    touched: set[str] = set()
    for u in units:
        _, items, shas = res.datasets[u.dataset]
        keys = u.prediction_keys()
        status = store.prediction_status(keys)
        for item, key in zip(items, keys, strict=True):
            if status.get(key) == "done":
                continue
            touched.add(u.key)
            if key in queued:
                continue
            queued.add(key)
            task = u.scoring_task
            if not u.is_reference:
                q = quality_label(u.quality)
                out.decodes.setdefault(task, []).append(Job(u.codec_id, u.codec, q, size(item)))
            out.inferences.setdefault(task, []).append(Job(u.task_id, task, None, size(item)))
    scope = common_scope(ctx, units) if not touched else {}
    for u in units:
        if u.key in touched or ctx.needs_evaluation(u, scope.get(u.key)):
            out.evaluations.append(len(u.item_ids))
    return out


# ---- measured costs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rate:
    """A measured cost: seconds per pixel (encodes, decodes) or per image (inference), and on how many jobs."""

    seconds: float
    n: int
    #: the longest single job measured, in seconds
    longest: float = 0.0
    #: seconds of the median job measured (for a job whose size is not known)
    per_job: float = 0.0
    #: inference: the time of loading the model (spent in the first batch of a run)
    load: float = 0.0


@dataclass
class Costs:
    #: (codec identity, quality label) -> encode seconds per pixel
    encode: dict[tuple[str, str], Rate] = field(default_factory=dict)
    #: (codec identity, quality label) -> decode seconds per pixel
    decode: dict[tuple[str, str], Rate] = field(default_factory=dict)
    #: task identity -> inference seconds per image
    infer: dict[str, Rate] = field(default_factory=dict)


ENCODE_SQL = """SELECT codec_id, quality, encode_s, decode_s, width * height * COALESCE(frames, 1) FROM encodes
    WHERE status = 'done' AND width > 0 AND height > 0"""
INFER_SQL = """SELECT task_id, run_id, updated, infer_s FROM predictions WHERE status = 'done' AND infer_s IS NOT NULL
    ORDER BY updated"""


def per_pixel_rate(jobs: Sequence[tuple[float, int]]) -> Rate:
    """The median seconds per pixel of (seconds, pixels) jobs (robust to a slow first job)."""
    return Rate(statistics.median(s / px for s, px in jobs), len(jobs), max(s for s, _ in jobs),
                statistics.median(s for s, _ in jobs))  # fmt: skip


def per_image_rate(runs: Mapping[str | None, Sequence[Sequence[float]]]) -> Rate:
    """Inference seconds per image from each run's batches (in order; one batch: its images' times): the median
    image after each run's first batch, and the model's ``load`` time: the models load lazily, in their first
    batch, so a run's first batch beyond that median is its load (the median over the runs with more than one
    batch; none such: no load, and the first batches count as images)."""
    later = [t for batches in runs.values() for batch in batches[1:] for t in batch]
    median = statistics.median(later or [t for batches in runs.values() for t in batches[0]])
    loads = [max(0.0, sum(b[0]) - len(b[0]) * median) for b in runs.values() if len(b) > 1]
    times = [t for batches in runs.values() for batch in batches for t in batch]
    return Rate(median, len(times), max(times), median, statistics.median(loads) if loads else 0.0)


def read_costs(db: Path) -> Costs:
    """The costs measured in one store's database (read only; the store is not opened for writing)."""
    if not db.is_file():
        raise VcmbenchError(f"--costs {db.parent}: no vcmbench.db there; name the output folder of a finished run")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        enc: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        dec: dict[tuple[str, str], list[tuple[float, int]]] = defaultdict(list)
        for cid, q, encode_s, decode_s, px in conn.execute(ENCODE_SQL):
            if encode_s is not None:
                enc[(cid, q or "")].append((encode_s, px))
            if decode_s is not None:
                dec[(cid, q or "")].append((decode_s, px))
        # a batch's predictions are stored at once, with one time: task -> run -> batch time -> image times
        infer: dict[str, dict[str | None, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(dict))
        for tid, run_id, updated, infer_s in conn.execute(INFER_SQL):
            infer[tid][run_id].setdefault(updated, []).append(infer_s)
    finally:
        conn.close()
    return Costs({k: per_pixel_rate(v) for k, v in enc.items()}, {k: per_pixel_rate(v) for k, v in dec.items()},
                 {k: per_image_rate({r: list(b.values()) for r, b in v.items()}) for k, v in infer.items()})  # fmt: skip


def merge_costs(parts: Iterable[Costs]) -> Costs:
    """Costs of several stores; where two measured the same thing, the one measured on more jobs wins."""
    out = Costs()
    for part in parts:
        for name in ("encode", "decode", "infer"):
            mine, theirs = getattr(out, name), getattr(part, name)
            for key, rate in theirs.items():
                if key not in mine or rate.n > mine[key].n:
                    mine[key] = rate
    return out


def measured_costs(roots: Sequence[Path]) -> Costs:
    return merge_costs(read_costs(Path(r) / "vcmbench.db") for r in roots)


def missing_costs(work: PendingWork, costs: Costs) -> list[str]:
    """What the pending work needs and no store measured, in words (empty: every cost is known)."""
    missing: set[str] = set()
    for job in work.encodes:
        if (job.identity, job.quality or "") not in costs.encode:
            missing.add(f"encode {job.label}@{job.quality}")
    for job in (j for jobs in work.decodes.values() for j in jobs):
        if (job.identity, job.quality or "") not in costs.decode:
            missing.add(f"decode {job.label}@{job.quality}")
    for jobs in work.inferences.values():
        for job in jobs:
            if job.identity not in costs.infer:
                missing.add(f"inference {job.label}")
    return sorted(missing)


# ---- the time model --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    nodes: int = 1
    #: cores per node
    cpus: int = 1
    #: GPUs per node
    gpus: int = 0
    #: encode / decode slots in all (``--workers``); None: every core of every node
    workers: int | None = None
    #: how many times faster a GPU infers than the CPU figures measured (an assumption: say which)
    gpu_speedup: float = 10.0

    @property
    def cores(self) -> int:
        return self.nodes * self.cpus

    @property
    def slots(self) -> int:
        return max(1, self.workers or self.cores)


@dataclass(frozen=True)
class Overheads:
    """The harness's own time, measured on the 2-core development machine (``docs/estimate.md``)."""

    #: a run's fixed time: process start, imports, resolving cards and hashing items, writing the outputs
    startup_s: float = 12.0
    #: per encode, besides encoding: reading the image (once per item for all its qualities), writing the
    #: bitstream and its row (2 ms measured on grid A of ``docs/estimate.md``, one worker; 12 ms before
    #: bitstreams were flushed in batches and sources read once per item)
    per_encode_s: float = 0.002
    #: per inference, in the driver: batching, storing the prediction
    per_inference_s: float = 0.003
    #: scoring one unit: a fixed part and a part per item
    per_evaluation_s: float = 0.015
    per_evaluated_item_s: float = 0.001


@dataclass(frozen=True)
class Estimate:
    #: seconds per part: "startup", "encode", "infer", "evaluate"
    stages: dict[str, float]

    @property
    def wall_s(self) -> float:
        return sum(self.stages.values())


def coded_seconds(jobs: Sequence[Job], rates: Mapping[tuple[str, str], Rate]) -> list[float]:
    """Each job's seconds: its codec and quality's seconds per pixel x its pixels (a job of unknown size:
    the mean job measured)."""
    out = []
    for job in jobs:
        rate = rates[(job.identity, job.quality or "")]
        out.append(rate.seconds * job.pixels if job.pixels else rate.per_job)
    return out


def encode_stage_s(encodes: Sequence[float], m: Machine, o: Overheads) -> float:
    """Encodes on every slot, longest first: total / slots, but never less than the longest one."""
    if not encodes:
        return 0.0
    return max((sum(encodes) + o.per_encode_s * len(encodes)) / m.slots, max(encodes))


def infer_stage_s(decode: float, infer: float, n: int, m: Machine, o: Overheads, load: float = 0.0) -> float:
    """One task's decodes (``decode`` seconds in all, on the cores) overlapping its ``n`` inferences
    (``infer`` seconds in all on one CPU core), plus loading the model (``load``, on every replica at once) and
    the driver's work per inference."""
    if n == 0:
        return 0.0
    if m.gpus:
        replicas = m.nodes * m.gpus
        model = infer / (replicas * m.gpu_speedup)
        busy = max(model, decode / m.slots)
    else:
        model = infer / m.nodes  # one model process per node
        busy = max(model, decode / m.slots, (infer + decode) / m.cores)
        replicas = m.nodes
    return load + busy + o.per_inference_s * n / replicas


def evaluate_stage_s(items: Sequence[int], o: Overheads) -> float:
    return sum(o.per_evaluation_s + o.per_evaluated_item_s * n for n in items)


def wall_time(work: PendingWork, costs: Costs, m: Machine, o: Overheads | None = None) -> Estimate:
    """The expected wall time of ``work`` on ``m`` (every cost must be known: :func:`missing_costs`)."""
    o = o or Overheads()
    infer = 0.0
    for task, jobs in work.inferences.items():
        decode = sum(coded_seconds(work.decodes.get(task, []), costs.decode))
        rates = [costs.infer[j.identity] for j in jobs]
        infer += infer_stage_s(decode, sum(r.seconds for r in rates), len(jobs), m, o, max(r.load for r in rates))
    return Estimate({
        "startup": o.startup_s,
        "encode": encode_stage_s(coded_seconds(work.encodes, costs.encode), m, o),
        "infer": infer,
        "evaluate": evaluate_stage_s(work.evaluations, o),
    })  # fmt: skip


# ---- putting it together ---------------------------------------------------------------------------
def plan(cfg: RunConfig) -> tuple[PendingWork, ResolvedRun]:
    """The pending work of ``cfg``'s grid against its store (nothing is run; item files are hashed)."""
    store = Store(cfg.out)
    try:
        res = resolve(cfg, store.file_sha256)
        return pending_work(store, res, plan_units(cfg, res)), res
    finally:
        store.close()


def calibrate(run_args: Sequence[str], items: int, log: Callable[[str], None]) -> tuple[Path, float]:
    """Run the grid (``vcmbench run`` arguments naming it: codecs, tasks, datasets, qualities, ``--set``...)
    on its first ``items`` items with one worker, in a temporary store, as its own process: (the store's folder,
    for its job times; the run's fixed time, measured: its process's wall time outside the run's stages)."""
    folder = Path(tempfile.mkdtemp(prefix="vcmbench-calibrate-"))
    argv = [sys.executable, "-m", "vcmbench.cli", "run", *run_args, "--limit", str(items), "--workers", "1",
            "--out", str(folder), "--no-progress"]  # fmt: skip
    log(f"calibrating: the grid on its first {items} item(s), 1 worker, in the temporary store {folder}")
    t = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode not in (0, 1):  # 1: some items failed, the others' times still count
        raise VcmbenchError(f"the calibration run failed (exit {proc.returncode}): {' '.join(argv)}\n"
                            f"{proc.stderr[-2000:]}")  # fmt: skip
    startup = wall - run_seconds(folder / "vcmbench.db")
    log(f"calibration: {wall:.1f} s, of which {startup:.1f} s outside the run's stages (process start, imports, "
        "resolving, writing the tables)")  # fmt: skip
    return folder, startup


def run_seconds(db: Path) -> float:
    """Seconds the runs of a store spent between their start and their end (their stages)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return float(conn.execute("SELECT COALESCE(SUM(finished - started), 0) FROM runs").fetchone()[0])
    finally:
        conn.close()


def local_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def machine_text(m: Machine) -> str:
    gpus = f"{m.gpus} GPU(s) per node (inference {m.gpu_speedup:g}x the CPU figures)" if m.gpus else "no GPU"
    return f"{m.nodes} node(s) x {m.cpus} core(s), {gpus}, {m.slots} encode/decode slot(s)"


def estimate_text(work: PendingWork, costs: Costs, m: Machine, sources: Sequence[str],
                  o: Overheads | None = None) -> str:  # fmt: skip
    """What ``vcmbench estimate`` prints: the pending work, where the costs come from, the expected time."""
    c = work.counts()
    lines = [f"pending: {c['encodes']} encodes, {c['decodes']} decodes, {c['inferences']} inferences, "
             f"{c['evaluations']} evaluations (results already in the store are not counted)",
             f"costs measured in: {', '.join(sources)}", f"machine: {machine_text(m)}"]  # fmt: skip
    missing = missing_costs(work, costs)
    if missing:
        lines.append(f"expected wall time: unknown -- no measured cost for {'; '.join(missing)}. Measure them with "
                     "--calibrate N (runs the grid on its first N items in a temporary store) or name the output "
                     "folder of a run that did this work with --costs DIR")  # fmt: skip
        return "\n".join(lines)
    est = wall_time(work, costs, m, o)
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in est.stages.items())
    lines.append(f"expected wall time: {est.wall_s:.1f} s ({est.wall_s / 3600:.2f} h): {parts}")
    return "\n".join(lines)
