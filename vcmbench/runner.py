"""Run a grid: resolve cards, plan work units, encode, infer, evaluate, store.

Stages, each resumable on its own:

1. **encode** every (codec, quality, image) not yet in the store, many at once
   (one external encoder process per core); each bitstream is written to the
   content-addressed cache and its row committed as soon as it finishes;
2. **infer**: per task, the model is loaded once; images are decoded in the
   worker pool (working ahead) and predicted in batches; each batch is
   committed as one transaction;
3. **evaluate** every unit from the stored predictions (pycocotools etc.).

A failed item (corrupt image, crashed encoder) is recorded with its error and
retried on the next run; every other result is kept. The driver is the only
writer to the store.
"""

from __future__ import annotations

import json
import math
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .cards import Card, CardError, CardSet, stable_hash
from .codecs.base import Bitstream, Codec
from .datasets.base import Dataset, Item
from .errors import CodecError, VcmbenchError
from .executors.local import LocalExecutor
from .plan import REFERENCE, DatasetSelection, WorkUnit, expand_grid, quality_label
from .provenance import provenance
from .store import TIDY_COLUMNS, EncodeRecord, Store
from .tasks.base import Task

DEFAULT_CODECS = ("jpeg", "vvenc")
DEFAULT_TASKS = ("yolov5",)
DEFAULT_DATASETS = ("coco",)


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

    def close(self) -> None:
        pass


def _progress(iterable: Iterable[Any] | None, enabled: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr, or the bare iterable (or a no-op bar) when progress is off."""
    if not enabled:
        return _NullBar() if iterable is None else iterable
    from tqdm import tqdm

    return tqdm(iterable, dynamic_ncols=True, file=sys.stderr, **kw)


def _build(card: Card) -> Any:
    try:
        return card.build()
    except TypeError as exc:
        raise CardError(f"{card.path}: settings of {card.kind} {card.name!r} do not fit its adapter: {exc}") from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, VcmbenchError):
            raise
        raise CardError(f"{card.path}: {card.kind} {card.name!r}: {exc}") from None


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, VcmbenchError | OSError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-3:])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


#: (unit, item, item sha256, prediction key)
_Job = tuple[WorkUnit, Item, str, str]


class _EncodeFailed(CodecError):
    """The item has no bitstream because its encode failed (already reported in the encode stage)."""


@dataclass
class _Resolved:
    codecs: dict[str, tuple[Codec, list[Any]]]
    tasks: dict[str, Task]
    datasets: dict[str, tuple[Dataset, list[Item], list[str]]]
    cards: dict[str, Card]


class Runner:
    def __init__(self, config: RunConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.store = Store(config.out)
        self.work = {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
        self.failures: list[Failure] = []
        self.run_id: str | None = None

    # ---- resolution: everything that can be wrong is found before any work -------------------
    def resolve(self) -> _Resolved:
        cfg = self.config
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
                    chosen[name] = card.with_settings(root=str(root))
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
            shas = [self.store.file_sha256(it.path) for it in items]
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
        return _Resolved(codecs, tasks, datasets, chosen)

    # ---- the run ------------------------------------------------------------------------------
    def run(self) -> RunReport:
        cfg = self.config
        res = self.resolve()
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
        with LocalExecutor(cfg.workers) as executor:
            try:
                self._encode_stage(units, res, executor)
                self._infer_stage(units, res, executor)
                rows = self._evaluate_stage(units, res)
            except KeyboardInterrupt:
                status = "interrupted"
                rows = []
                self.log("interrupted: every finished result is stored; run the same command again to resume")
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
    def _encode_stage(self, units: Sequence[WorkUnit], res: _Resolved, executor: LocalExecutor) -> None:
        jobs: dict[str, tuple[WorkUnit, Item, str]] = {}
        for u in units:
            if u.is_reference:
                continue
            ds, items, shas = res.datasets[u.dataset]
            for item, sha in zip(items, shas, strict=True):
                key = u.encode_key(sha)
                assert key is not None
                jobs.setdefault(key, (u, item, sha))
        have = self.store.encode_records(jobs)
        todo = [k for k in jobs if not (k in have and have[k].status == "done" and self.store.has_blob(have[k].blob))]
        if not todo:
            return
        run_id = self.run_id

        def encode(key: str) -> dict[str, Any]:
            u, item, sha = jobs[key]
            codec = res.codecs[u.codec][0]
            image = res.datasets[u.dataset][0].load_image(item)
            t0 = time.perf_counter()
            bs = codec.encode(image, u.quality)
            seconds = time.perf_counter() - t0
            if not bs.data:
                raise CodecError(f"{u.codec}: the encoder returned an empty bitstream")
            blob = self.store.put_blob(bs.data)
            return {
                "blob": blob, "nbytes": len(bs.data), "width": bs.width, "height": bs.height,
                "frames": bs.frames, "meta": dict(bs.meta), "encode_s": seconds,
            }  # fmt: skip

        bar = _progress(executor.unordered(encode, todo), self.config.progress, total=len(todo), desc="encode")
        for out in bar:
            key = out.job
            u, item, sha = jobs[key]
            row = {
                "key": key, "codec": u.codec, "codec_id": u.codec_id, "quality": quality_label(u.quality),
                "item_id": item.id, "item_sha": sha, "run_id": run_id,
            }  # fmt: skip
            if out.error is None:
                row.update(out.value, status="done", error=None)
                self.work["encodes"] += 1
            else:
                msg = _error_text(out.error)
                row.update(status="failed", error=msg)
                self.failures.append(Failure("encode", f"{u.codec}@{u.quality}", item.id, msg))
                self.log(f"encode failed: {u.codec} {u.quality} item {item.id} ({item.path}): {msg}")
            self.store.put_encode(row)

    # ---- stage 2: infer ----------------------------------------------------------------------
    def _infer_stage(self, units: Sequence[WorkUnit], res: _Resolved, executor: LocalExecutor) -> None:
        pending: dict[str, list[_Job]] = defaultdict(list)
        queued: set[str] = set()
        for u in units:
            _, items, shas = res.datasets[u.dataset]
            keys = u.prediction_keys()
            status = self.store.prediction_status(keys)
            for item, sha, key in zip(items, shas, keys, strict=True):
                if status.get(key) != "done" and key not in queued:
                    queued.add(key)
                    pending[u.task].append((u, item, sha, key))
        for task_name, work in pending.items():
            self._infer_task(res.tasks[task_name], work, res, executor)

    def _decode(self, job: _Job, res: _Resolved, enc: dict[str, EncodeRecord]) -> tuple[np.ndarray, dict[str, Any] | None]:
        """The image a task sees for one job (runs in the worker pool); decode stats on first decode."""
        u, item, sha, _ = job
        ds = res.datasets[u.dataset][0]
        if u.is_reference:
            return ds.load_image(item), None
        ekey = u.encode_key(sha)
        assert ekey is not None
        rec = enc.get(ekey)
        if rec is None or rec.status != "done" or rec.blob is None:
            why = rec.error if rec is not None else "no bitstream"
            raise _EncodeFailed(f"no bitstream to decode (encode failed: {why})")
        bs = Bitstream(self.store.get_blob(rec.blob), rec.width or 0, rec.height or 0, rec.frames or 1, rec.meta)
        t = time.perf_counter()
        image = res.codecs[u.codec][0].decode(bs)
        seconds = time.perf_counter() - t
        if image.shape[:2] != (rec.height, rec.width):
            raise CodecError(
                f"{u.codec}: decoded image is {image.shape[1]}x{image.shape[0]}, expected {rec.width}x{rec.height}"
            )
        stats = None
        if rec.decode_s is None:
            stats = {"key": ekey, "decode_s": seconds, "psnr": psnr(ds.load_image(item), image)}
        return image, stats

    def _infer_task(self, task: Task, work: list[_Job], res: _Resolved, executor: LocalExecutor) -> None:
        """Decode (in the pool, working ahead) and predict every pending image of one task, in batches."""
        t0 = time.perf_counter()
        task.load()
        self.log(f"{task.name}: model loaded in {time.perf_counter() - t0:.1f} s; {len(work)} images to infer")
        enc = self.store.encode_records(k for u, _, sha, _ in work if (k := u.encode_key(sha)) is not None)
        bar = _progress(None, self.config.progress, total=len(work), desc=f"infer {task.name}")
        batch: list[tuple[_Job, np.ndarray]] = []
        failed_rows: list[dict[str, Any]] = []
        decode_stats: list[dict[str, Any]] = []

        def flush() -> None:
            rows = self._predict_batch(task, batch) + failed_rows
            with self.store.transaction():
                for st in decode_stats:
                    self.store.set_decode_stats(st["key"], st["decode_s"], st["psnr"])
            self.store.put_predictions(rows)
            bar.update(len(rows))
            batch.clear()
            failed_rows.clear()
            decode_stats.clear()

        window = 2 * task.batch_size + executor.workers
        for out in executor.ordered(lambda job: self._decode(job, res, enc), work, window=window):
            u, item, sha, key = out.job
            if out.error is not None:
                msg = _error_text(out.error)
                if not isinstance(out.error, _EncodeFailed):  # encode failures were reported already
                    self.failures.append(Failure("decode", u.label(), item.id, msg))
                    self.log(f"{u.label()} item {item.id} ({item.path}): {msg}")
                failed_rows.append(self._pred_row(u, item, sha, key, status="failed", error=msg))
            else:
                image, stats = out.value
                if stats:
                    decode_stats.append(stats)
                if not u.is_reference:
                    self.work["decodes"] += 1
                batch.append((out.job, image))
            if len(batch) >= task.batch_size or len(failed_rows) >= task.batch_size:
                flush()
        flush()
        bar.close()

    def _pred_row(self, u: WorkUnit, item: Item, sha: str, key: str, **kw: Any) -> dict[str, Any]:
        row = {
            "key": key, "task": u.task, "task_id": u.task_id, "codec": u.codec, "quality": quality_label(u.quality),
            "item_id": item.id, "item_sha": sha, "encode_key": u.encode_key(sha), "run_id": self.run_id,
            "status": "done", "error": None, "infer_s": None, "preds": None,
        }  # fmt: skip
        row.update(kw)
        return row

    def _predict_batch(self, task: Task, batch: Sequence[tuple[_Job, np.ndarray]]) -> list[dict[str, Any]]:
        """Predict a batch; if the batch fails, retry image by image so one bad image fails alone."""
        if not batch:
            return []
        try:
            t = time.perf_counter()
            preds = task.predict([img for _, img in batch])
            per = (time.perf_counter() - t) / len(batch)
            self.work["inferences"] += len(batch)
            return [
                self._pred_row(*job, preds=p, infer_s=per) for (job, _), p in zip(batch, preds, strict=True)
            ]
        except Exception:
            if len(batch) == 1:
                (job, _), = batch
                msg = _error_text(sys.exc_info()[1])  # type: ignore[arg-type]
                self.failures.append(Failure("infer", job[0].label(), job[1].id, msg))
                self.log(f"{job[0].label()} item {job[1].id}: inference failed: {msg}")
                return [self._pred_row(*job, status="failed", error=msg)]
            rows = []
            for one in batch:
                rows += self._predict_batch(task, [one])
            return rows

    # ---- stage 3: evaluate -------------------------------------------------------------------
    def _evaluate_stage(self, units: Sequence[WorkUnit], res: _Resolved) -> list[dict[str, Any]]:
        run_id = self.run_id
        assert run_id is not None
        for u in _progress(units, self.config.progress, desc="evaluate"):
            cached = self.store.evaluation(u.key)
            if cached is None or cached["n_failed"]:
                self._evaluate_unit(u, res, run_id)
        # the tidy table is read back from the store: one code path for fresh and cached units
        return self.store.tidy_rows(run_id)

    def _evaluate_unit(self, u: WorkUnit, res: _Resolved, run_id: str | None) -> None:
        ds, items, shas = res.datasets[u.dataset]
        task = res.tasks[u.task]
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
        if done:
            metrics = task.evaluate(done, ds)
        else:
            metrics = {m: float("nan") for m in task.metrics}
        self.work["evaluations"] += 1
        rate: dict[str, Any] = {"nbytes": None, "pixels": None, "bpp": None, "bpp_mean": None, "psnr": None,
                                "encode_s": None, "decode_s": None}  # fmt: skip
        done_keys = [preds[k]["encode_key"] for k, it in zip(keys, items, strict=True) if it.id in done]
        if not u.is_reference and done_keys:
            enc = self.store.encode_records(done_keys)
            recs = [enc[k] for k in done_keys if k in enc]
            pix = [r.width * r.height * (r.frames or 1) for r in recs]
            nbytes = sum(r.nbytes or 0 for r in recs)
            psnrs = [r.psnr for r in recs if r.psnr is not None and math.isfinite(r.psnr)]
            rate = {
                "nbytes": nbytes, "pixels": sum(pix), "bpp": 8.0 * nbytes / sum(pix),
                "bpp_mean": float(np.mean([8.0 * (r.nbytes or 0) / p for r, p in zip(recs, pix, strict=True)])),
                "psnr": float(np.mean(psnrs)) if psnrs else None,
                "encode_s": sum(r.encode_s or 0.0 for r in recs), "decode_s": sum(r.decode_s or 0.0 for r in recs),
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


def run(config: RunConfig, log: Callable[[str], None] | None = None) -> RunReport:
    runner = Runner(config, log)
    try:
        return runner.run()
    finally:
        runner.store.close()
