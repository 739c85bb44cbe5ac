"""Run a grid: resolve cards, plan work units, encode, infer, evaluate, store.

Stages, each resumable on its own:

1. **encode** every (codec, quality, image) not yet in the store, many at once
   (one external encoder process per core); each bitstream is written to the
   content-addressed cache and its row committed as soon as it finishes;
2. **infer**: per task, the model is loaded once; images are decoded in the
   worker pool (working ahead) and predicted in batches; each batch is
   committed as one transaction;
3. **evaluate** every unit from the stored predictions (pycocotools etc.);
   a unit whose predictions are all stored while the model still has work is
   scored meanwhile in a background process (see :mod:`vcmbench.scoring`).

A failed item (corrupt image, crashed encoder) is recorded with its error and
retried on the next run; every other result is kept. The driver is the only
writer to the store.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .cards import Card, CardError, CardSet, stable_hash
from .codecs.base import Bitstream, Codec
from .datasets.base import Dataset, Item
from .errors import VcmbenchError
from .executors.base import (
    DecodeJob,
    EncodeFailed,
    EncodeJob,
    EncodeResult,
    Executor,
    adapter,
    error_text,
    longest_first,
)
from .executors.local import LocalExecutor
from .metrics.coco_map import BACKEND_ENV as COCO_EVAL_ENV
from .metrics.coco_map import resolve_backend
from .plan import REFERENCE, DatasetSelection, WorkUnit, expand_grid, quality_label
from .provenance import provenance
from .scoring import BackgroundScorer, score_unit
from .store import TIDY_COLUMNS, Store
from .tasks.base import Task

#: the default run is the built-in offline benchmark: generated synth val, the detector trained on it
DEFAULT_CODECS = ("jpeg", "vvenc")
DEFAULT_TASKS = ("synth_det",)
DEFAULT_DATASETS = ("synth",)
#: card settings of the default run (`vcmbench run` without --codec/--task/--dataset): VVenC `faster` costs
#: ~0.7 s of CPU per 320x240 synth image for its 6 QPs, `medium` ~6.7 s, which alone would take the default
#: run past 5 minutes on 2 cores; --set vvenc.preset=medium restores it
DEFAULT_RUN_OVERRIDES: dict[str, dict[str, Any]] = {"vvenc": {"preset": "faster"}}
#: smallest unit (images, or frames of clips) that background_scoring="auto" scores in the background
BACKGROUND_MIN_ITEMS = 32


@dataclass
class RunConfig:
    codecs: list[str] = field(default_factory=lambda: list(DEFAULT_CODECS))
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    #: codec name -> quality ladder; the key "*" applies to every codec without its own entry
    qualities: dict[str, list[Any]] = field(default_factory=dict)
    #: dataset name -> root folder; "*" applies to every dataset
    data_roots: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    ids: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    #: card name -> {setting: value}
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards_dirs: list[str] = field(default_factory=list)
    out: str = "results"
    workers: int | None = None
    batch_size: int | None = None
    reference: bool = True
    progress: bool = True
    #: sequence classes of video datasets that have them (SFU-HW: A..E), e.g. ["C", "D"]
    classes: list[str] | None = None
    #: "local" (threads in this process) or "ray" (tasks and actors on a Ray cluster)
    executor: str = "local"
    #: Ray cluster to join: None starts one on this machine, "auto", or "HOST:PORT"
    address: str | None = None
    #: keyword arguments of RayExecutor (cpus_per_encode, gpus_per_model, model_resources, max_retries, ...)
    ray_options: dict[str, Any] = field(default_factory=dict)
    #: score finished units in a background process while the model infers the next ones: "on", "off", or
    #: "auto": on where the model leaves the driver's CPU free (a GPU here, or models on a Ray cluster) for units
    #: of at least BACKGROUND_MIN_ITEMS images (frames) -- on a CPU-only machine the two would only compete
    background_scoring: str = "auto"
    #: COCO mAP evaluation backend, "faster_coco_eval" or "pycocotools" (same numbers; see metrics/coco_map.py).
    #: None: $VCMBENCH_COCO_EVAL, else faster_coco_eval. A chosen one is put in $VCMBENCH_COCO_EVAL for the
    #: processes this run starts.
    coco_eval: str | None = None


@dataclass
class Failure:
    stage: str
    unit: str
    item: str
    error: str


@dataclass
class RunReport:
    run_id: str
    out: Path
    rows: list[dict[str, Any]]
    failures: list[Failure]
    work: dict[str, int]
    status: str

    @property
    def ok(self) -> bool:
        return not self.failures and self.status == "done"

    @property
    def run_dir(self) -> Path:
        return self.out / "runs" / self.run_id


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(iterable: Iterable[Any] | None, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, or the bare iterable (or a no-op bar) when progress is off."""
    if not enabled:
        return _NullBar() if iterable is None else iterable
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, **kw)


def _show_status(bar: Any, executor: Executor, failed: int) -> None:
    """Next to a progress bar (done / total, ETA): items failed and what the executor's workers are doing."""
    set_postfix = getattr(bar, "set_postfix", None)
    if set_postfix is not None:
        set_postfix(failed=failed, **executor.status(), refresh=False)


def _build(card: Card) -> Any:
    try:
        return adapter(card)
    except TypeError as exc:
        raise CardError(f"{card.path}: settings of {card.kind} {card.name!r} do not fit its adapter: {exc}") from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, VcmbenchError):
            raise
        raise CardError(f"{card.path}: {card.kind} {card.name!r}: {exc}") from None


def _check_media(codecs: dict[str, tuple[Codec, list[Any]]], tasks: dict[str, Task],
                 datasets: dict[str, tuple[Dataset, list[Item], list[str]]]) -> None:  # fmt: skip
    """Every codec and task of the run can handle every dataset's items (images or clips)."""
    for ds_name, (ds, _, _) in datasets.items():
        what = "clips" if ds.media == "video" else "images"
        for name, (codec, _) in codecs.items():
            if ds.media not in codec.media:
                raise CardError(f"codec {name} codes {' and '.join(codec.media)}s; dataset {ds_name} holds {what}: "
                                f"leave one of them out (video codecs: nerv, sanerv, vvenc, x265, vtm)")  # fmt: skip
        for name, task in tasks.items():
            if ds.media not in task.media:
                raise CardError(f"task {name} scores images only; dataset {ds_name} holds {what}: frames of clips "
                                "are scored by the detection tasks (yolov5, yolov7, synth_det, mask_rcnn)")  # fmt: skip


#: (unit, item, item sha256, prediction key)
_Job = tuple[WorkUnit, Item, str, str]


@dataclass
class _Resolved:
    codecs: dict[str, tuple[Codec, list[Any]]]
    tasks: dict[str, Task]
    datasets: dict[str, tuple[Dataset, list[Item], list[str]]]
    cards: dict[str, Card]
    #: background scoring as it applies on this machine: "on", "off" or "auto" (by unit size)
    scoring: str


class Runner:
    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.store = Store(config.out)
        self.work = {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
        self.failures: list[Failure] = []
        self.run_id: str | None = None
        self.scorer = BackgroundScorer(self.log)

    # ---- resolution: everything that can be wrong is found before any work -------------------
    def resolve(self) -> _Resolved:
        cfg = self.config
        try:
            coco_eval = resolve_backend(cfg.coco_eval)  # checks $VCMBENCH_COCO_EVAL too, before any work
        except ValueError as e:
            raise VcmbenchError(str(e)) from None
        if cfg.coco_eval is not None:
            os.environ[COCO_EVAL_ENV] = coco_eval
        cards = CardSet([Path(d) for d in cfg.cards_dirs])
        chosen: dict[str, Card] = {}
        for kind, names in (("codec", cfg.codecs), ("task", cfg.tasks), ("dataset", cfg.datasets)):
            if not names:
                raise CardError(f"no {kind} selected")
            for name in names:
                if name == REFERENCE and kind == "codec":
                    raise CardError(f"{REFERENCE!r} is added to every run automatically; do not list it")
                chosen[name] = cards.get(kind, name)
        for name, settings in cfg.overrides.items():
            if name not in chosen:
                raise CardError(
                    f"--set {name}.…: no selected card named {name!r}; selected: {', '.join(sorted(chosen))}"
                )
            chosen[name] = chosen[name].with_settings(**settings)
        for name in list(chosen):
            card = chosen[name]
            if card.kind == "dataset":
                root = cfg.data_roots.get(name, cfg.data_roots.get("*"))
                if root:
                    chosen[name] = card = card.with_settings(root=str(root))
                if cfg.classes:
                    if "classes" not in card.settings:
                        raise CardError(f"--classes: dataset {name} has no sequence classes (sfu_hw has: A..E)")
                    chosen[name] = card.with_settings(classes=list(cfg.classes))
        unknown_q = set(cfg.qualities) - {"*"} - set(cfg.codecs)
        if unknown_q:
            raise CardError(f"--quality given for codec(s) not in the run: {sorted(unknown_q)}")
        unknown_roots = set(cfg.data_roots) - {"*"} - set(cfg.datasets)
        if unknown_roots:
            raise CardError(f"--data-root given for dataset(s) not in the run: {sorted(unknown_roots)}")

        datasets = {}
        for name in cfg.datasets:
            ds: Dataset = _build(chosen[name])
            ds.check()
            items = ds.items(limit=cfg.limit, ids=cfg.ids, exclude=cfg.exclude)
            if not items:
                raise VcmbenchError(f"dataset {name}: the selection is empty")
            shas = [ds.content_hash(it, self.store.file_sha256(it.path)) for it in items]
            datasets[name] = (ds, items, shas)
        codecs = {}
        for name in cfg.codecs:
            codec: Codec = _build(chosen[name])
            ladder = cfg.qualities.get(name, cfg.qualities.get("*", list(chosen[name].qualities)))
            codecs[name] = (codec, [codec.validate_quality(q) for q in ladder])
            codec.identity()  # probes binaries now: a missing encoder is an error before any work
        tasks = {}
        for name in cfg.tasks:
            task: Task = _build(chosen[name])
            if cfg.batch_size:
                task.batch_size = cfg.batch_size
            task.identity()  # resolves weights now: a missing file is an error before any work
            tasks[name] = task
        _check_media(codecs, tasks, datasets)
        # a bad value is an error before any work
        return _Resolved(codecs, tasks, datasets, chosen, self._background_mode())

    def make_executor(self) -> Executor:
        cfg = self.config
        if cfg.executor == "ray":
            from .executors.ray import RayExecutor  # imports ray only when it is chosen

            return RayExecutor(cfg.address, workers=cfg.workers, log=self.log, **cfg.ray_options)
        if cfg.executor != "local":
            raise VcmbenchError(f"unknown executor {cfg.executor!r}: choose local or ray")
        if cfg.address or cfg.ray_options:
            raise VcmbenchError("--address and --ray-* options need --executor ray")
        return LocalExecutor(cfg.workers)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> RunReport:
        cfg = self.config
        res = self.resolve()
        executor = self.make_executor()  # joins a cluster now: an unreachable one is an error before any work
        selections = [
            DatasetSelection(name, ds.identity(), tuple(it.id for it in items), tuple(shas))
            for name, (ds, items, shas) in res.datasets.items()
        ]
        units = expand_grid(
            selections,
            [(name, t.identity()) for name, t in res.tasks.items()],
            [(name, c.identity(), qs) for name, (c, qs) in res.codecs.items()],
            reference=cfg.reference,
        )
        run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + stable_hash(
            [u.key for u in units] + [time.time()], n=6
        )
        config_json = asdict(cfg)
        config_json["cards"] = {
            n: {"path": str(c.path), "digest": c.digest(), "adapter": c.adapter, "version": c.version,
                "settings": dict(c.settings)}
            for n, c in res.cards.items()
        }  # fmt: skip
        config_json["units"] = [
            {"label": u.label(), "key": u.key, "codec_id": u.codec_id, "task_id": u.task_id} for u in units
        ]
        self.run_id = run_id
        self.store.start_run(run_id, " ".join(sys.argv), config_json, provenance())
        self.store.link_units(run_id, [u.key for u in units])
        self.log(f"run {run_id}: {len(units)} work units "
                 f"({len(res.datasets)} dataset x {len(res.tasks)} task x "
                 f"{sum(len(q) for _, q in res.codecs.values()) + int(cfg.reference)} points) -> {self.store.root}")
        status = "done"
        with executor:
            try:
                self._encode_stage(units, res, executor)
                self._infer_stage(units, res, executor)
                rows = self._evaluate_stage(units, res)
            except KeyboardInterrupt:
                status = "interrupted"
                rows = []
                self.log("interrupted: every finished result is stored; run the same command again to resume")
            finally:
                self.scorer.close(cancel=status == "interrupted")
        if status == "done" and self.failures:
            status = "failed"
        self.store.finish_run(run_id, status)
        report = RunReport(run_id, self.store.root, rows, self.failures, dict(self.work), status)
        if status != "interrupted":
            self.write_outputs(report, config_json)
        return report

    def write_outputs(self, report: RunReport, config_json: dict[str, Any]) -> None:
        import pandas as pd

        d = report.run_dir
        d.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(report.rows, columns=TIDY_COLUMNS).to_csv(d / "results.csv", index=False)
        pd.DataFrame(self.store.per_item_rows(report.run_id)).to_csv(d / "items.csv", index=False)
        info = self.store.run_info(report.run_id)
        meta = {
            "run_id": report.run_id, "status": report.status, "work": report.work,
            "failures": [asdict(f) for f in report.failures], "config": config_json,
            "provenance": json.loads(info["provenance"]) if info else {},
        }  # fmt: skip
        (d / "run.json").write_text(json.dumps(meta, indent=2, default=str))

    # ---- stage 1: encode -------------------------------------------------------------------------
    def _encode_stage(self, units: Sequence[WorkUnit], res: _Resolved, executor: Executor) -> None:
        jobs: dict[str, EncodeJob] = {}
        where: dict[str, tuple[WorkUnit, Item, str]] = {}
        for u in units:
            if u.is_reference:
                continue
            _, items, shas = res.datasets[u.dataset]
            for item, sha in zip(items, shas, strict=True):
                key = u.encode_key(sha)
                assert key is not None
                if key not in jobs:
                    jobs[key] = EncodeJob(key, res.cards[u.codec], u.quality, res.cards[u.dataset], item)
                    where[key] = (u, item, sha)
        have = self.store.encode_records(jobs)
        todo = [k for k in jobs if not (k in have and have[k].status == "done" and self.store.has_blob(have[k].blob))]
        if not todo:
            return
        outcomes = executor.encode(longest_first(jobs[k] for k in todo))
        bar = _progress(outcomes, self.config.progress, total=len(todo), desc="encode")
        for out in bar:
            u, item, sha = where[out.job.key]
            row: dict[str, Any] = {
                "key": out.job.key, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
                "item_id": item.id, "item_sha": sha, "run_id": self.run_id,
            }  # fmt: skip
            if out.error is None:
                r: EncodeResult = out.value
                row.update(
                    blob=self.store.put_blob(r.data), nbytes=len(r.data), width=r.width, height=r.height,
                    frames=r.frames, meta=r.meta, encode_s=r.encode_s, status="done", error=None,
                )  # fmt: skip
                self.work["encodes"] += 1
            else:
                msg = error_text(out.error)
                row.update(status="failed", error=msg)
                self.failures.append(Failure("encode", f"{u.codec}@{u.quality}", item.id, msg))
                self.log(f"encode failed: {u.codec} {u.quality} item {item.id} ({item.path}): {msg}")
            self.store.put_encode(row)
            _show_status(bar, executor, failed=sum(f.stage == "encode" for f in self.failures))

    # ---- stage 2: infer ----------------------------------------------------------------------
    def _infer_stage(self, units: Sequence[WorkUnit], res: _Resolved, executor: Executor) -> None:
        pending: dict[str, list[_Job]] = defaultdict(list)
        queued: set[str] = set()
        # units to score in the background as their last prediction is stored: unit key -> predictions to wait for
        self._waiting: dict[str, set[str]] = {}
        self._owners: dict[str, list[WorkUnit]] = defaultdict(list)
        ready: list[WorkUnit] = []
        for u in units:
            _, items, shas = res.datasets[u.dataset]
            keys = u.prediction_keys()
            status = self.store.prediction_status(keys)
            missing = set()
            for item, sha, key in zip(items, shas, keys, strict=True):
                if status.get(key) != "done":
                    missing.add(key)
                    if key not in queued:
                        queued.add(key)
                        pending[u.task].append((u, item, sha, key))
            if self._score_in_background(u, res):
                if missing:
                    self._waiting[u.key] = missing
                    for key in missing:
                        self._owners[key].append(u)
                else:
                    ready.append(u)
        self._left = len(queued)
        if self._left:  # scoring the finished units overlaps inference only if there is some
            for u in ready:
                self._submit_scoring(u, res)
        for task_name, work in pending.items():
            self._infer_task(task_name, work, res, executor)

    def _background_mode(self) -> str:
        mode = self.config.background_scoring
        if mode not in ("auto", "on", "off"):
            raise VcmbenchError(f"background_scoring must be auto, on or off, not {mode!r}")
        if mode == "auto":
            import torch

            remote = self.config.executor == "ray" and bool(self.config.address)
            mode = "auto" if remote or torch.cuda.is_available() else "off"
        return mode

    def _score_in_background(self, u: WorkUnit, res: _Resolved) -> bool:
        mode = res.scoring
        if mode == "off" or not res.tasks[u.task].background_scoring or not self._needs_evaluation(u):
            return False
        if mode == "on":
            return True
        ds, items, _ = res.datasets[u.dataset]
        size = sum(int(it.meta.get("frames") or 1) for it in items) if ds.media == "video" else len(items)
        return size >= BACKGROUND_MIN_ITEMS

    def _submit_scoring(self, u: WorkUnit, res: _Resolved) -> None:
        _, items, _ = res.datasets[u.dataset]
        _, _, done, _ = self._gather(u, res)
        if done:
            self.scorer.submit(u.key, res.cards[u.task], res.cards[u.dataset], items, done)

    def _stored(self, keys: Iterable[str], res: _Resolved) -> None:
        """Predictions ``keys`` are stored (done or failed): start scoring the units they complete while the
        model still has work (the last unit is scored in this process, where nothing waits for it)."""
        keys = list(keys)
        self._left -= len(keys)
        for key in keys:
            for u in self._owners.pop(key, ()):
                left = self._waiting.get(u.key)
                if left is None:
                    continue
                left.discard(key)
                if not left:
                    del self._waiting[u.key]
                    if self._left > 0:
                        self._submit_scoring(u, res)

    def _decode_jobs(self, work: list[_Job], res: _Resolved) -> Iterator[DecodeJob]:
        """Jobs for the executor; bitstreams are read from the cache lazily, as the executor asks."""
        enc = self.store.encode_records(k for u, _, sha, _ in work if (k := u.encode_key(sha)) is not None)
        for u, item, sha, key in work:
            ds_card = res.cards[u.dataset]
            if u.is_reference:
                yield DecodeJob(key, ds_card, item)
                continue
            ekey = u.encode_key(sha)
            rec = enc.get(ekey)  # type: ignore[arg-type]
            if rec is None or rec.status != "done" or rec.blob is None:
                yield DecodeJob(key, ds_card, item, res.cards[u.codec], None, ekey,
                                missing=rec.error if rec is not None else "no bitstream")  # fmt: skip
                continue
            try:
                data = self.store.get_blob(rec.blob)
            except OSError as exc:
                yield DecodeJob(key, ds_card, item, res.cards[u.codec], None, ekey, missing=str(exc))
                continue
            bs = Bitstream(data, rec.width or 0, rec.height or 0, rec.frames or 1, rec.meta)
            yield DecodeJob(key, ds_card, item, res.cards[u.codec], bs, ekey, want_stats=rec.decode_s is None)

    def _infer_task(self, task_name: str, work: list[_Job], res: _Resolved, executor: Executor) -> None:
        """Decode and predict every pending image of one task, committing batch by batch."""
        task = res.tasks[task_name]
        where = {key: (u, item, sha, key) for u, item, sha, key in work}
        # a clip is predicted frame by frame, task.batch_size frames at a time: one clip per batch keeps
        # one decoded clip (plus those decoded ahead) in memory
        clips = any(res.datasets[u.dataset][0].media == "video" for u, _, _, _ in work)
        self.log(f"{task_name}: {len(work)} {'clips' if clips else 'images'} to infer")
        bar = _progress(None, self.config.progress, total=len(work), desc=f"infer {task_name}")
        failed = 0
        for br in executor.infer(res.cards[task_name], self._decode_jobs(work, res), 1 if clips else task.batch_size):
            rows = []
            stats = []
            for job, pred, err, dec, secs in zip(br.jobs, br.preds, br.errors, br.decode, br.infer_s, strict=True):
                u, item, sha, key = where[job.key]
                if err is not None:
                    msg = error_text(err)
                    if not isinstance(err, EncodeFailed):  # encode failures were reported already
                        stage = "infer" if dec is not None else "decode"
                        self.failures.append(Failure(stage, u.label(), item.id, msg))
                        self.log(f"{u.label()} item {item.id} ({item.path}): {stage} failed: {msg}")
                    rows.append(self._pred_row(u, item, sha, key, status="failed", error=msg))
                    continue
                if job.codec is not None:
                    self.work["decodes"] += 1
                if dec is not None and dec.decode_s is not None and job.encode_key:
                    stats.append((job.encode_key, dec.decode_s, dec.psnr))
                self.work["inferences"] += 1
                rows.append(self._pred_row(u, item, sha, key, preds=pred, infer_s=secs))
            with self.store.transaction():
                for ekey, dsec, p in stats:
                    self.store.set_decode_stats(ekey, dsec, p)
            self.store.put_predictions(rows)
            self._stored((r["key"] for r in rows), res)
            bar.update(len(rows))
            failed += sum(r["status"] == "failed" for r in rows)
            _show_status(bar, executor, failed)
        bar.close()

    def _pred_row(self, u: WorkUnit, item: Item, sha: str, key: str, **kw: Any) -> dict[str, Any]:
        row = {
            "key": key, "task": u.task, "task_id": u.task_id, "codec": u.codec, "quality": quality_label(u.quality),
            "item_id": item.id, "item_sha": sha, "encode_key": u.encode_key(sha), "run_id": self.run_id,
            "status": "done", "error": None, "infer_s": None, "preds": None,
        }  # fmt: skip
        row.update(kw)
        return row

    # ---- stage 3: evaluate -------------------------------------------------------------------
    def _needs_evaluation(self, u: WorkUnit) -> bool:
        cached = self.store.evaluation(u.key)
        return cached is None or bool(cached["n_failed"])

    def _evaluate_stage(self, units: Sequence[WorkUnit], res: _Resolved) -> list[dict[str, Any]]:
        run_id = self.run_id
        assert run_id is not None
        for u in _progress(units, self.config.progress, desc="evaluate"):
            if self._needs_evaluation(u):
                self._evaluate_unit(u, res, run_id)
        # the tidy table is read back from the store: one code path for fresh and cached units
        return self.store.tidy_rows(run_id)

    def _gather(self, u: WorkUnit, res: _Resolved) -> tuple[list[str], dict[str, Any], dict[str, Any], list[str]]:
        """A unit's prediction keys, stored rows, finished predictions (item id -> prediction), failed items."""
        _, items, _ = res.datasets[u.dataset]
        keys = u.prediction_keys()
        preds = self.store.predictions(keys)
        done: dict[str, Any] = {}
        failed: list[str] = []
        for item, key in zip(items, keys, strict=True):
            row = preds.get(key)
            if row is not None and row["status"] == "done":
                done[item.id] = json.loads(row["preds"])
            else:
                failed.append(item.id)
        return keys, preds, done, failed

    def _evaluate_unit(self, u: WorkUnit, res: _Resolved, run_id: str | None) -> None:
        ds, items, shas = res.datasets[u.dataset]
        task = res.tasks[u.task]
        keys, preds, done, failed = self._gather(u, res)
        metrics = self.scorer.take(u.key)
        if metrics is None:
            metrics = score_unit(task, ds, items, done)
        self.work["evaluations"] += 1
        rate: dict[str, Any] = {"nbytes": None, "pixels": None, "bpp": None, "bpp_mean": None, "psnr": None,
                                "encode_s": None, "decode_s": None, "kbps": None}  # fmt: skip
        done_keys = {it.id: preds[k]["encode_key"] for k, it in zip(keys, items, strict=True) if it.id in done}
        if not u.is_reference and done_keys:
            enc = self.store.encode_records(done_keys.values())
            coded = [(it, enc[done_keys[it.id]]) for it in items if done_keys.get(it.id) in enc]
            recs = [r for _, r in coded]
            pix = [r.width * r.height * (r.frames or 1) for r in recs]
            nbytes = sum(r.nbytes or 0 for r in recs)
            psnrs = [r.psnr for r in recs if r.psnr is not None and math.isfinite(r.psnr)]
            rate = {
                "nbytes": nbytes, "pixels": sum(pix), "bpp": 8.0 * nbytes / sum(pix),
                "bpp_mean": float(np.mean([8.0 * (r.nbytes or 0) / p for r, p in zip(recs, pix, strict=True)])),
                "psnr": float(np.mean(psnrs)) if psnrs else None,
                "encode_s": sum(r.encode_s or 0.0 for r in recs), "decode_s": sum(r.decode_s or 0.0 for r in recs),
                "kbps": _kbps(coded),
            }  # fmt: skip
        infer = [preds[k]["infer_s"] for k in keys if k in preds and preds[k]["infer_s"] is not None]
        self.store.put_evaluation(
            {
                "key": u.key, "dataset": u.dataset, "dataset_id": u.dataset_id, "task": u.task,
                "task_id": u.task_id, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
                "n_items": len(done), "n_failed": len(failed), "metrics": metrics, "headline": task.metrics, "failed_items": failed,
                "pred_keys": keys, "infer_s": float(sum(infer)), "run_id": run_id, **rate,
            }
        )  # fmt: skip
        if failed:
            self.log(
                f"{u.label()}: {len(failed)} of {len(items)} items failed and are left out of its metrics "
                f"({', '.join(failed[:5])}{' ...' if len(failed) > 5 else ''}); rerun to retry them"
            )


def _kbps(coded: Sequence[tuple[Item, Any]]) -> float | None:
    """Bit rate of coded clips at their frame rates (the dataset's, else the bitstream's): all bits over the
    clips' total duration. None for images."""
    fps = [it.meta.get("fps") or r.meta.get("fps") for it, r in coded]
    if not coded or any(not f for f in fps):
        return None
    seconds = sum((r.frames or 1) / float(f) for (_, r), f in zip(coded, fps, strict=True))
    return 8.0 * sum(r.nbytes or 0 for _, r in coded) / seconds / 1000.0


def run(config: RunConfig, log: Callable[[str], None] | None = None) -> RunReport:
    runner = Runner(config, log)
    try:
        return runner.run()
    finally:
        runner.store.close()
