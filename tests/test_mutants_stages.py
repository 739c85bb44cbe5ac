"""The run's stages (run/encode.py, infer.py, evaluate.py, context.py, outputs.py), pinned as behaviour on a
tiny real grid: 3 generated synth images (320x240), JPEG, the synth detector (the mutation lane's tests for
module ``run.stages``: benchmarks/mutation.toml).

Each test makes its own small run (about a second once the model is loaded): mutmut runs, for a mutant, only
the tests that called the function it changed while they ran, so a run shared through a module-scoped fixture
would be attributed to the first test using it and the others' checks would never see the mutant.

Expected values are computed here independently: mAP with pycocotools on the stored predictions, PSNR with
numpy on the stored bitstream, byte counts from the blobs, work counts and texts from the grid's shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import sqlite3
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from vcmbench.cards import CardSet
from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.errors import CodecError
from vcmbench.executors.local import LocalExecutor
from vcmbench.run import RunConfig, run
from vcmbench.run.background import BackgroundScoring
from vcmbench.run.context import Failure, RunContext, progress, show_status
from vcmbench.run.cost import COST_COLUMNS
from vcmbench.run.encode import EncodeRows, encode_jobs, encode_stage
from vcmbench.run.evaluate import common_scope, evaluate_stage, evaluate_unit, finished_items
from vcmbench.run.infer import infer_stage, pending_predictions, unit_size
from vcmbench.run.outputs import config_record, write_outputs
from vcmbench.run.resolve import resolve
from vcmbench.run.runner import plan_units
from vcmbench.scoring import BackgroundScorer
from vcmbench.store import TIDY_COLUMNS, Store
from vcmbench.tasks.ultralytics_yolo import UltralyticsDetectTask

#: 6 val images generated (a second, once per session), no clips; most grids take the first 3
SYNTH = {"images": {"train": 1, "val": 6}, "clips": {"train": 0, "val": 0}}
IDS = ["1", "2", "3"]
W, H = 320, 240
#: COCOeval.stats index of each metric the detector reports
STATS = {"map": 0, "map50": 1, "map75": 2, "map_small": 3, "map_medium": 4, "map_large": 5, "ar100": 8}
CRASH = "fake encoder crash on this picture"
BROKEN_DECODER = "fake decoder: broken build"
MODEL_CRASH = "fake model: out of memory"


class FlakyJpeg(JpegCodec):
    """Named fake: JPEG, except that the encode of one picture (by its pixels' sha256) fails while the file
    ``marker`` exists, and (``decode_fails``) every decode fails."""

    def __init__(self, fail_sha256: str = "", marker: str = "", decode_fails: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.fail_sha256, self.marker, self.decode_fails = fail_sha256, marker, decode_fails

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        if digest == self.fail_sha256 and Path(self.marker).exists():
            raise CodecError(CRASH)
        return super().encode(image, quality)

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        if self.decode_fails:
            raise CodecError(BROKEN_DECODER)
        return super().decode(bitstream)


class CrashingDetector(UltralyticsDetectTask):
    """Named fake: the synth detector, whose every prediction fails."""

    def predict(self, images: Any) -> Any:
        raise ValueError(MODEL_CRASH)


# ---- helpers ---------------------------------------------------------------------------------------------
def grid(out: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [20]},
                                limit=3, out=str(out), progress=False, background_scoring="off", workers=1,
                                overrides={"synth": dict(SYNTH)})  # fmt: skip
    base.update(kw)
    return RunConfig(**base)


def synth_root(tmp: Path) -> Path:
    """The generated synth split the grids read (resolving a grid generates it, once per cache)."""
    store = Store(tmp / "probe")
    try:
        res = resolve(grid(tmp / "probe"), store.file_sha256)
        return Path(res.datasets["synth"].dataset.root)
    finally:
        store.close()


def image_path(root: Path, item: str) -> Path:
    return root / "val" / f"{int(item):012d}.png"


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def flaky_cards(folder: Path, **settings: Any) -> str:
    """A card folder with codec ``flaky`` (:class:`FlakyJpeg`, JPEG's settings plus ``settings``)."""
    cards = folder / "codecs"
    cards.mkdir(parents=True, exist_ok=True)
    base = {"subsampling": "4:2:0", "optimize": False, "progressive": False}
    (cards / "flaky.yaml").write_text(yaml.safe_dump({
        "adapter": "tests.test_mutants_stages:FlakyJpeg", "version": 1, "qualities": [20],
        "settings": {**base, **settings}}))  # fmt: skip
    return str(folder)


def strict_cards(folder: Path) -> str:
    """A card folder with task ``strict``: the synth detector with another confidence threshold."""
    return task_cards(folder, "strict", conf_thres=0.5)


def task_cards(folder: Path, name: str, adapter: str | None = None, **settings: Any) -> str:
    """A card folder with task ``name``: the synth detector's card with another adapter or settings."""
    cards = folder / "tasks"
    cards.mkdir(parents=True, exist_ok=True)
    path = CardSet().get("task", "synth_det").path
    card = yaml.safe_load(path.read_text())
    card["name"], card["adapter"] = name, adapter or card["adapter"]
    card["settings"]["weights"] = str(path.parent.parent / card["settings"]["weights"])  # beside its card
    card["settings"].update(settings)
    (cards / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return str(folder)


def rows(out: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    con = sqlite3.connect(Path(out) / "vcmbench.db")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql, params)]
    finally:
        con.close()


def by_item(out: Path, table: str, codec: str) -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in rows(out, f"SELECT * FROM {table} WHERE codec=?", codec)}


def evaluation(out: Path, codec: str, quality: str | None = "20") -> dict[str, Any]:
    (row,) = [r for r in rows(out, "SELECT * FROM evaluations WHERE codec=?", codec) if r["quality"] == quality]
    return row


def coco_metrics(root: Path, preds: dict[str, list[list[float]]]) -> dict[str, float]:
    """pycocotools' box metrics of detector rows ``[x1, y1, x2, y2, score, class]`` per item id, on those
    items only (classes mapped to the ground truth's categories by name; boxes and scores as COCO results
    files round them: 3 and 5 decimals)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from vcmbench.adapters import build

    names = build(CardSet().get("task", "synth_det")).names()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val.json"))
    by_name = {c["name"]: c["id"] for c in gt.dataset["categories"]}
    image_of = {im["file_name"].rsplit("/", 1)[-1]: im["id"] for im in gt.dataset["images"]}
    dets = [
        {"image_id": image_of[image_path(root, item).name], "category_id": by_name[names[int(c)]],
         "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)], "score": round(s, 5)}
        for item, boxes in preds.items() for x1, y1, x2, y2, s, c in boxes
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.imgIds = sorted(image_of[image_path(root, i).name] for i in preds)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {m: float(ev.stats[i]) for m, i in STATS.items()}


def stored_preds(out: Path, codec: str, items: list[str]) -> dict[str, list[list[float]]]:
    preds = by_item(out, "predictions", codec)
    return {i: json.loads(preds[i]["preds"]) for i in items}


def assert_metrics(out: Path, root: Path, codec: str, quality: str | None, items: list[str]) -> None:
    got = json.loads(evaluation(out, codec, quality)["metrics"])
    want = coco_metrics(root, stored_preds(out, codec, items))
    assert got == pytest.approx(want, abs=1e-9), (codec, items)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))


class Context:
    """A store, a resolved grid and its units, and a :class:`RunContext` over them (the stages' input)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.store = Store(cfg.out)
        self.res = resolve(cfg, self.store.file_sha256)
        self.units = plan_units(cfg, self.res)
        self.logs: list[str] = []
        self.reported: list[tuple[str, str, str, str]] = []
        self.ctx = RunContext(self.store, "run-1", self.res, self.logs.append, progress=cfg.progress,
                              on_failure=lambda *a: self.reported.append(a))  # fmt: skip
        self.store.start_run("run-1", "test", {}, {})
        self.store.link_units("run-1", [u.key for u in self.units])

    def unit(self, codec: str) -> Any:
        (u,) = [u for u in self.units if u.codec == codec]
        return u

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def make_context() -> Any:
    made: list[Context] = []

    def make(cfg: RunConfig) -> Context:
        made.append(Context(cfg))
        return made[-1]

    yield make
    for c in made:
        c.close()


class Recorder:
    """A BackgroundScoring stand-in that records what the infer stage tells it."""

    def __init__(self) -> None:
        self.watched: list[tuple[str, set[str]]] = []
        self.started: list[int] = []
        self.keys: list[str] = []

    def watch(self, unit: Any, missing: set[str]) -> None:
        self.watched.append((unit.key, set(missing)))

    @property
    def waiting(self) -> bool:
        return any(missing for _, missing in self.watched)

    def start(self, to_infer: int) -> None:
        self.started.append(to_infer)

    def stored(self, keys: Any) -> None:
        self.keys.extend(keys)


class SpyExecutor(LocalExecutor):
    """The local executor, recording the encode jobs and the infer calls it is given."""

    def __init__(self) -> None:
        super().__init__(1)
        self.encoded: list[list[str]] = []
        self.batches: list[int] = []

    def encode(self, jobs: Any, idle: Any = None, keep: Any = None) -> Any:
        jobs = list(jobs)
        self.encoded.append([j.key for j in jobs])
        return super().encode(jobs, idle, keep)

    def infer(self, task: Any, jobs: Any, batch_size: int) -> Any:
        self.batches.append(batch_size)
        return super().infer(task, jobs, batch_size)


# ---- context.py ------------------------------------------------------------------------------------------
def test_a_context_starts_with_no_work_and_records_each_failure() -> None:
    seen: list[tuple[str, str, str, str]] = []
    a = RunContext(None, "r", None, print, on_failure=lambda *f: seen.append(f))  # type: ignore[arg-type]
    b = RunContext(None, "r", None, print)  # type: ignore[arg-type]
    assert a.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
    assert a.progress is True and a.failures == []
    a.work["encodes"] += 1
    a.fail("encode", "jpeg@20", "7", "boom")
    assert b.work["encodes"] == 0 and b.failures == []  # each context its own counters and list
    assert a.failures == [Failure("encode", "jpeg@20", "7", "boom")]
    assert seen == [("encode", "jpeg@20", "7", "boom")]
    b.fail("decode", "u", "8", "bad")  # without a listener: recorded all the same
    assert b.failures == [Failure("decode", "u", "8", "bad")]


def test_progress_is_a_tqdm_bar_on_stderr_or_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    items = [1, 2, 3]
    assert progress(items, False, total=3, desc="x") is items
    null = progress(None, False, total=3)
    null.update(2)
    null.set_postfix(failed=1)
    null.close()
    bar = progress(items, True, total=3, desc="encode")
    assert list(bar) == items and bar.total == 3 and bar.desc == "encode" and bar.dynamic_ncols
    bar.close()
    err = capsys.readouterr().err
    assert "encode: 100%" in err and "3/3" in err
    counter = progress(None, True, total=4, desc="infer t")
    counter.update(4)
    counter.close()
    assert "infer t: 100%" in capsys.readouterr().err


def test_show_status_puts_failures_and_the_executors_status_next_to_the_bar() -> None:
    calls: list[tuple[tuple, dict]] = []

    class Bar:
        def set_postfix(self, *a: Any, **kw: Any) -> None:
            calls.append((a, kw))

    class Busy(LocalExecutor):
        def status(self) -> dict[str, Any]:
            return {"running": 2, "queued": 5}

    show_status(Bar(), Busy(1), failed=3)
    assert calls == [((), {"failed": 3, "running": 2, "queued": 5, "refresh": False})]
    show_status(object(), Busy(1), failed=1)  # a bar without a postfix (progress off): nothing to do


def test_gather_splits_a_units_items_into_finished_and_failed(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o"))
    u = c.unit("jpeg")
    keys = u.prediction_keys()
    base = {"task": "synth_det", "run_id": "run-1"}
    c.store.put_predictions([
        {**base, "key": keys[0], "item_id": "1", "status": "done", "preds": [[1.0, 2.0, 3.0, 4.0, 0.5, 0]]},
        {**base, "key": keys[1], "item_id": "2", "status": "failed", "error": "x", "preds": None},
    ])  # fmt: skip
    got_keys, preds, done, failed = c.ctx.gather(u)
    assert got_keys == keys and set(preds) == set(keys[:2])
    assert done == {"1": [[1.0, 2.0, 3.0, 4.0, 0.5, 0]]}
    assert failed == ["2", "3"]  # failed, and never predicted


def _store_evaluation(c: Context, u: Any, **kw: Any) -> None:
    row = {"key": u.key, "codec": u.codec, "n_items": 3, "n_failed": 0, "metrics": {"map": 0.5},
           "failed_items": [], "left_out": [], "group_rates": None}  # fmt: skip
    row.update(kw)
    c.store.put_evaluation(row)


def test_needs_evaluation_rules(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o"))
    ref, coded = c.unit("uncompressed"), c.unit("jpeg")
    every = frozenset(IDS)
    assert c.ctx.needs_evaluation(coded) and c.ctx.needs_evaluation(coded, every, scope=False)  # never evaluated
    _store_evaluation(c, coded)
    assert not c.ctx.needs_evaluation(coded) and not c.ctx.needs_evaluation(coded, every)
    assert c.ctx.needs_evaluation(coded, frozenset(IDS[:2]))  # the table's common items changed
    _store_evaluation(c, coded, n_failed=1, failed_items=["2"], n_items=2)
    assert c.ctx.needs_evaluation(coded, scope=False) and c.ctx.needs_evaluation(coded, frozenset(["1", "3"]))
    _store_evaluation(c, coded, n_items=2, left_out=["2"])
    assert c.ctx.needs_evaluation(coded)  # scored on fewer than it finished, and no scope given
    assert not c.ctx.needs_evaluation(coded, scope=False)
    assert not c.ctx.needs_evaluation(coded, frozenset(["1", "3"]))  # all it finished, less the left out = keep
    assert c.ctx.needs_evaluation(coded, every)
    _store_evaluation(c, coded, n_items=1, failed_items=["1"], n_failed=0, left_out=["2"])
    assert not c.ctx.needs_evaluation(coded, frozenset(["3"]))
    # grouped metrics stored before groups had rates: a coded unit is evaluated again, the reference is not
    for u in (ref, coded):
        _store_evaluation(c, u, metrics={"map": 0.5, "map/A": 0.4})
    assert c.ctx.needs_evaluation(coded, scope=False) and not c.ctx.needs_evaluation(ref, scope=False)
    assert not c.ctx.needs_evaluation(ref)
    _store_evaluation(c, coded, metrics={"map": 0.5, "map/A": 0.4}, group_rates={"A": {"bpp": 1.0}})
    assert not c.ctx.needs_evaluation(coded)
    # a row stored before failed_items / left_out were written: read as none
    c.store.conn.execute("UPDATE evaluations SET failed_items=NULL, left_out=NULL WHERE key=?", (coded.key,))
    assert not c.ctx.needs_evaluation(coded) and not c.ctx.needs_evaluation(coded, every)


# ---- encode.py -------------------------------------------------------------------------------------------
def test_encode_jobs_one_per_distinct_bitstream(tmp_path: Path, make_context: Any) -> None:
    """jpeg@20 and jpeg@60 of 3 items for two tasks (the same bitstreams for both): 6 jobs, none for the
    references, each naming its codec card, quality, dataset card and item, and the first unit needing it."""
    cfg = grid(tmp_path / "o", tasks=["synth_det", "strict"], qualities={"jpeg": [20, 60]},
               cards_dirs=[strict_cards(tmp_path / "cards")])  # fmt: skip
    c = make_context(cfg)
    _, items, shas = c.res.datasets["synth"]
    assert [u.label() for u in c.units] == [f"synth/{t}/{p}" for t in ("synth_det", "strict")
                                            for p in ("uncompressed", "jpeg@20", "jpeg@60")]  # fmt: skip
    coded = [u for u in c.units if u.codec == "jpeg"]
    jobs, where = encode_jobs(c.ctx, c.units)
    expected = [u.encode_key(s) for u in coded[:2] for s in shas]
    assert [u.encode_key(s) for u in coded[2:] for s in shas] == expected
    assert sorted(jobs) == sorted(expected) and len(set(expected)) == 6
    for u in coded[:2]:
        for item, sha in zip(items, shas, strict=True):
            key = u.encode_key(sha)
            job = jobs[key]
            assert (job.key, job.quality, job.item) == (key, u.quality, item)
            assert job.codec == c.res.cards["jpeg"] and job.dataset == c.res.cards["synth"]
            assert where[key] == (u, item, sha)


def test_encode_stage_commits_each_bitstream_and_skips_what_is_stored(tmp_path: Path, make_context: Any) -> None:
    cfg = grid(tmp_path / "o", qualities={"jpeg": [20, 60]})
    c = make_context(cfg)
    spy = SpyExecutor()
    with spy:
        encode_stage(c.ctx, c.units, spy)
        check_encodes_then_encode_again(c, spy)


def check_encodes_then_encode_again(c: Context, spy: SpyExecutor) -> None:
    """The checks of the encode rows, then the stage again with all stored, then with one blob deleted."""
    root = Path(c.res.datasets["synth"].dataset.root)
    shas = c.res.datasets["synth"].shas
    assert c.ctx.work == {"encodes": 6, "decodes": 0, "inferences": 0, "evaluations": 0}
    assert c.ctx.failures == [] and c.logs == []
    stored = {r["key"]: r for r in rows(c.store.root, "SELECT * FROM encodes")}
    assert len(stored) == 6
    for u in c.units[1:]:
        for item, sha in zip(IDS, shas, strict=True):
            r = stored[u.encode_key(sha)]
            data = c.store.get_blob(r["blob"])
            assert r["blob"] == hashlib.sha256(data).hexdigest() and r["nbytes"] == len(data)
            assert (r["codec"], r["codec_id"], r["quality"], r["item_id"], r["item_sha"], r["run_id"]) == (
                "jpeg", u.codec_id, str(u.quality), item, sha, "run-1")
            assert (r["status"], r["error"], r["width"], r["height"], r["frames"]) == ("done", None, W, H, 1)
            assert json.loads(r["meta"]) == {} and r["encode_s"] > 0 and r["decode_s"] is None
            decoded = Image.open(io.BytesIO(data))
            assert decoded.format == "JPEG" and decoded.size == (W, H)
            assert hashlib.sha256(image_path(root, item).read_bytes()).hexdigest() == sha
    encode_stage(c.ctx, c.units, spy)  # all stored: no job at all
    assert len(spy.encoded) == 1 and c.ctx.work["encodes"] == 6
    gone = stored[c.units[2].encode_key(shas[1])]
    path = c.store.blob_path(gone["blob"])
    data = path.read_bytes()
    path.unlink()
    encode_stage(c.ctx, c.units, spy)  # only the deleted bitstream is encoded again
    assert spy.encoded[1] == [gone["key"]] and c.ctx.work["encodes"] == 7
    assert path.read_bytes() == data


def test_encodes_are_submitted_largest_source_first(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o", limit=5, qualities={"jpeg": [20, 60]}))
    spy = SpyExecutor()
    with spy:
        encode_stage(c.ctx, c.units, spy)
    (submitted,) = spy.encoded
    _, items, shas = c.res.datasets["synth"]
    size = {u.encode_key(s): it.path.stat().st_size for u in c.units[1:] for it, s in zip(items, shas, strict=True)}
    assert [size[k] for k in submitted] == sorted(size.values(), reverse=True)
    assert len(submitted) == 10


def test_encode_rows_are_committed_in_batches_or_after_a_while(tmp_path: Path) -> None:
    store = Store(tmp_path / "o")

    def committed() -> list[str]:
        return sorted(r[0] for r in store.conn.execute("SELECT key FROM encodes"))

    try:
        rows = EncodeRows(store, batch=2, seconds=3600.0)
        rows.add({"key": "a", "status": "failed", "error": "e"})
        assert committed() == []
        rows.add({"key": "b", "status": "failed", "error": "e"})
        assert committed() == ["a", "b"]
        rows.add({"key": "c", "status": "failed", "error": "e"})
        assert committed() == ["a", "b"]
        rows.flush()
        rows.flush()  # nothing waiting: nothing to do
        assert committed() == ["a", "b", "c"]
        rows.add({"key": "d", "status": "failed", "error": "e"})
        assert committed() == ["a", "b", "c"]
        at_once = EncodeRows(store, batch=100, seconds=0.0)  # every row is "a while" after the last commit
        at_once.add({"key": "e", "status": "failed", "error": "e"})
        at_once.add({"key": "f", "status": "failed", "error": "e"})
        assert committed() == ["a", "b", "c", "e", "f"]
    finally:
        store.close()


class InterruptedAfterTwo(LocalExecutor):
    """The local executor, interrupted (Ctrl-C) after its second finished encode."""

    def encode(self, jobs: Any, idle: Any = None, keep: Any = None) -> Any:
        for n, out in enumerate(super().encode(jobs, idle, keep)):
            if n == 2:
                raise KeyboardInterrupt
            yield out


def test_an_interrupted_encode_stage_commits_what_finished(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o"))
    with InterruptedAfterTwo(1) as ex, pytest.raises(KeyboardInterrupt):
        encode_stage(c.ctx, c.units, ex)
    done = rows(c.store.root, "SELECT key, status, blob FROM encodes")
    assert len(done) == 2 and all(r["status"] == "done" and c.store.has_blob(r["blob"]) for r in done)
    assert c.ctx.work["encodes"] == 2


def test_a_failed_encode_is_committed_reported_and_the_others_go_on(tmp_path: Path, make_context: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    root = synth_root(tmp_path)
    marker = tmp_path / "broken"
    marker.touch()
    bad = hashlib.sha256(pixels(image_path(root, "2")).tobytes()).hexdigest()
    cfg = grid(tmp_path / "o", codecs=["flaky"], qualities={"flaky": [20]}, progress=True,
               cards_dirs=[flaky_cards(tmp_path / "cards", fail_sha256=bad, marker=str(marker))])  # fmt: skip
    c = make_context(cfg)
    with LocalExecutor(1) as ex:
        encode_stage(c.ctx, c.units, ex)
    assert c.ctx.work["encodes"] == 2
    assert c.ctx.failures == [Failure("encode", "flaky@20", "2", CRASH)]
    assert c.reported == [("encode", "flaky@20", "2", CRASH)]
    assert c.logs == [f"encode failed: flaky 20 item 2 ({image_path(root, '2')}): {CRASH}"]
    enc = by_item(cfg.out, "encodes", "flaky")
    assert enc["2"]["status"] == "failed" and enc["2"]["error"] == CRASH and enc["2"]["run_id"] == "run-1"
    assert enc["2"]["blob"] is None and enc["2"]["nbytes"] is None and enc["2"]["quality"] == "20"
    assert enc["2"]["item_sha"] == c.res.datasets["synth"].shas[1] and enc["2"]["codec_id"] == c.unit("flaky").codec_id
    assert [enc[i]["status"] for i in ("1", "3")] == ["done", "done"]
    err = capsys.readouterr().err
    assert "encode: 100%" in err and "failed=1" in err and "failed=2" not in err
    with LocalExecutor(1) as ex:
        encode_stage(c.ctx, c.units, ex)  # a failed encode is tried again
    assert len(c.ctx.failures) == 2 and c.ctx.work["encodes"] == 2
    assert "failed=2" in capsys.readouterr().err


# ---- infer.py --------------------------------------------------------------------------------------------
def test_infer_stage_stores_each_prediction_and_the_decode_stats(tmp_path: Path, make_context: Any) -> None:
    """jpeg@20 and the reference of 3 items: 3 decodes and 6 inferences, in batches of the run's batch size;
    the decode time and PSNR go to the encode rows."""
    cfg = grid(tmp_path / "o", batch_size=2)
    c = make_context(cfg)
    root = Path(c.res.datasets["synth"].dataset.root)
    spy, bg = SpyExecutor(), Recorder()
    with spy:
        encode_stage(c.ctx, c.units, spy)
        infer_stage(c.ctx, c.units, spy, bg)  # type: ignore[arg-type]
    assert c.ctx.work == {"encodes": 3, "decodes": 3, "inferences": 6, "evaluations": 0}
    assert spy.batches == [2] and c.logs == ["synth_det: 6 images to infer"] and c.ctx.failures == []
    ref, jpeg = c.unit("uncompressed"), c.unit("jpeg")
    assert bg.watched == [] and bg.started == [6] and sorted(bg.keys) == sorted(ref.prediction_keys() + jpeg.prediction_keys())
    preds = {r["key"]: r for r in rows(cfg.out, "SELECT * FROM predictions")}
    assert len(preds) == 6
    shas = c.res.datasets["synth"].shas
    for u in (ref, jpeg):
        for item, sha, key in zip(IDS, shas, u.prediction_keys(), strict=True):
            p = preds[key]
            assert (p["task"], p["task_id"], p["codec"], p["item_id"], p["item_sha"], p["run_id"]) == (
                "synth_det", u.task_id, u.codec, item, sha, "run-1")
            assert (p["quality"], p["encode_key"]) == ((None, None) if u is ref else ("20", u.encode_key(sha)))
            assert p["status"] == "done" and p["error"] is None and p["infer_s"] > 0
            boxes = json.loads(p["preds"])
            assert boxes and all(len(b) == 6 for b in boxes)
    for item, sha in zip(IDS, shas, strict=True):
        (e,) = rows(cfg.out, "SELECT * FROM encodes WHERE key=?", jpeg.encode_key(sha))
        decoded = pixels_of(c.store.get_blob(e["blob"]))
        assert e["decode_s"] > 0 and e["psnr"] == pytest.approx(psnr(pixels(image_path(root, item)), decoded), abs=1e-9)
    with spy:
        infer_stage(c.ctx, c.units, spy, bg)  # type: ignore[arg-type]
    assert spy.batches == [2] and c.ctx.work["inferences"] == 6 and bg.started == [6, 0]


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_units_to_score_in_the_background_are_watched(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o", background_scoring="on"))
    bg = Recorder()
    pending = pending_predictions(c.ctx, c.units, bg)  # type: ignore[arg-type]
    ref, jpeg = c.unit("uncompressed"), c.unit("jpeg")
    assert list(pending) == ["synth_det"] and bg.started == [6]
    assert [(u.key, item.id, key) for u, item, _, key in pending["synth_det"]] == [
        (u.key, i, k) for u in (ref, jpeg) for i, k in zip(IDS, u.prediction_keys(), strict=True)]
    assert bg.watched == [(ref.key, set(ref.prediction_keys())), (jpeg.key, set(jpeg.prediction_keys()))]
    _store_evaluation(c, jpeg, left_out=["2"])  # scored already (on fewer items: a matter for the driver)
    bg = Recorder()
    pending_predictions(c.ctx, c.units, bg)  # type: ignore[arg-type]
    assert bg.watched == [(ref.key, set(ref.prediction_keys()))]
    c.res.scoring = "auto"  # units of 3 images are too small for the background
    bg = Recorder()
    pending_predictions(c.ctx, c.units, bg)  # type: ignore[arg-type]
    assert bg.watched == []
    off = make_context(grid(tmp_path / "off", background_scoring="off"))
    bg = Recorder()
    pending_predictions(off.ctx, off.units, bg)  # type: ignore[arg-type]
    assert bg.watched == [] and bg.started == [6]


def test_without_background_scoring_an_items_predictions_follow_each_other(tmp_path: Path, make_context: Any) -> None:
    """Nothing waits for a unit to finish, so the predictions go item by item (the decode workers then read an
    item's source once: test_source_images.py); with a unit watched, unit by unit (above)."""
    c = make_context(grid(tmp_path / "o", background_scoring="off"))
    ref, jpeg = c.unit("uncompressed"), c.unit("jpeg")
    pending = pending_predictions(c.ctx, c.units, Recorder())  # type: ignore[arg-type]
    assert [(u.key, item.id) for u, item, _, _ in pending["synth_det"]] == [(u.key, i) for i in IDS for u in (ref, jpeg)]
    keys = dict(zip(IDS, ref.prediction_keys(), strict=True))
    c.store.put_predictions([{"key": keys["2"], "task": "synth_det", "task_id": ref.task_id, "codec": ref.codec,
                              "quality": None, "item_id": "2", "item_sha": "s", "encode_key": None,
                              "run_id": "run-1", "status": "done", "error": None, "infer_s": 0.1, "preds": "[]"}])  # fmt: skip
    pending = pending_predictions(c.ctx, c.units, Recorder())  # type: ignore[arg-type]
    assert [(u.key, item.id) for u, item, _, _ in pending["synth_det"]] == [
        (ref.key, "1"), (jpeg.key, "1"), (jpeg.key, "2"), (ref.key, "3"), (jpeg.key, "3")]


def test_background_scoring_waits_only_for_units_with_predictions_to_come() -> None:
    submitted: list[str] = []
    bg = BackgroundScoring(None, lambda u: submitted.append(u.key))  # type: ignore[arg-type]
    bg.watch(SimpleNamespace(key="done"), set())  # type: ignore[arg-type]
    assert not bg.waiting
    bg.watch(SimpleNamespace(key="u"), {"a", "b"})  # type: ignore[arg-type]
    assert bg.waiting
    bg.start(3)
    bg.stored(["a", "b"])
    assert not bg.waiting and submitted == ["done", "u"]


def test_unit_size_counts_images_or_frames() -> None:
    items = [SimpleNamespace(meta={"frames": 24}), SimpleNamespace(meta={}), SimpleNamespace(meta={"frames": 16})]
    unit = SimpleNamespace(dataset="d")
    for media, size in (("image", 3), ("video", 24 + 1 + 16)):
        ctx = SimpleNamespace(res=SimpleNamespace(datasets={"d": (SimpleNamespace(media=media), items, [])}))
        assert unit_size(ctx, unit) == size, media  # type: ignore[arg-type]


def test_a_decode_failure_is_recorded_per_item(tmp_path: Path, make_context: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    root = synth_root(tmp_path)
    cfg = grid(tmp_path / "o", codecs=["flaky"], qualities={"flaky": [20]}, batch_size=2, progress=True,
               cards_dirs=[flaky_cards(tmp_path / "cards", decode_fails=True)])  # fmt: skip
    c = make_context(cfg)
    with LocalExecutor(1) as ex:
        encode_stage(c.ctx, c.units, ex)
        infer_stage(c.ctx, c.units, ex, Recorder())  # type: ignore[arg-type]
    label = "synth/synth_det/flaky@20"
    assert c.ctx.failures == [Failure("decode", label, i, BROKEN_DECODER) for i in IDS]
    assert c.logs[1:] == [f"{label} item {i} ({image_path(root, i)}): decode failed: {BROKEN_DECODER}" for i in IDS]
    assert c.ctx.work == {"encodes": 3, "decodes": 0, "inferences": 3, "evaluations": 0}
    preds = by_item(cfg.out, "predictions", "flaky")
    for i in IDS:
        assert (preds[i]["status"], preds[i]["error"], preds[i]["preds"], preds[i]["infer_s"]) == (
            "failed", BROKEN_DECODER, "null", None)
    assert all(e["decode_s"] is None for e in by_item(cfg.out, "encodes", "flaky").values())
    err = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in err.splitlines() if line.startswith("infer synth_det")][-1]
    assert "100%" in last and "6/6" in last and "failed=3" in last  # 3 failed, over batches of 2


def test_a_model_failure_is_an_infer_failure_per_item(tmp_path: Path, make_context: Any) -> None:
    root = synth_root(tmp_path)
    cards = task_cards(tmp_path / "cards", "crashy", adapter="tests.test_mutants_stages:CrashingDetector")
    cfg = grid(tmp_path / "o", tasks=["crashy"], cards_dirs=[cards])
    c = make_context(cfg)
    with LocalExecutor(1) as ex:
        encode_stage(c.ctx, c.units, ex)
        infer_stage(c.ctx, c.units, ex, Recorder())  # type: ignore[arg-type]
    labels = ["synth/crashy/uncompressed", "synth/crashy/jpeg@20"]
    # item by item (no unit waits for background scoring): each item's reference, then its decode
    assert c.ctx.failures == [Failure("infer", label, i, MODEL_CRASH) for i in IDS for label in labels]
    assert c.logs == ["crashy: 6 images to infer"] + [
        f"{label} item {i} ({image_path(root, i)}): infer failed: {MODEL_CRASH}" for i in IDS for label in labels]
    assert c.ctx.work == {"encodes": 3, "decodes": 0, "inferences": 0, "evaluations": 0}
    for codec in ("uncompressed", "jpeg"):
        preds = by_item(cfg.out, "predictions", codec)
        assert [(preds[i]["status"], preds[i]["error"], preds[i]["infer_s"]) for i in IDS] == [
            ("failed", MODEL_CRASH, None)] * 3
        assert [preds[i]["item_sha"] for i in IDS] == list(c.res.datasets["synth"].shas)
    assert all(e["decode_s"] is None and e["psnr"] is None for e in by_item(cfg.out, "encodes", "jpeg").values())


def test_a_missing_bitstream_fails_its_prediction_only(tmp_path: Path, make_context: Any) -> None:
    """Predictions asked for without their encodes (none stored; one blob deleted since): each coded item's row
    says why, the reference is predicted, and each such item is a failure of the run (no encode stage of this
    run reported it), so the run does not say ok while a unit lacks items."""
    c = make_context(grid(tmp_path / "o"))
    with LocalExecutor(1) as ex:
        infer_stage(c.ctx, c.units, ex, Recorder())  # type: ignore[arg-type]
    preds = by_item(c.store.root, "predictions", "jpeg")
    assert [(preds[i]["status"], preds[i]["error"]) for i in IDS] == [
        ("failed", "no bitstream to decode (encode failed: no bitstream)")] * 3
    assert [p["status"] for p in by_item(c.store.root, "predictions", "uncompressed").values()] == ["done"] * 3
    assert [(f.stage, f.unit, f.item) for f in c.ctx.failures] == [("decode", "synth/synth_det/jpeg@20", i) for i in IDS]
    assert c.ctx.work == {"encodes": 0, "decodes": 0, "inferences": 3, "evaluations": 0}
    c.ctx.failures.clear()
    with LocalExecutor(1) as ex:
        encode_stage(c.ctx, c.units, ex)
        blob = by_item(c.store.root, "encodes", "jpeg")["2"]["blob"]
        c.store.blob_path(blob).unlink()
        infer_stage(c.ctx, c.units, ex, Recorder())  # type: ignore[arg-type]
    preds = by_item(c.store.root, "predictions", "jpeg")
    assert [preds[i]["status"] for i in IDS] == ["done", "failed", "done"]
    assert preds["2"]["error"] == (f"no bitstream to decode (its bitstream file is gone ([Errno 2] No such file or "
                                   f"directory: '{c.store.blob_path(blob)}'); the next run encodes it again)")  # fmt: skip
    assert [(f.stage, f.item, f.error) for f in c.ctx.failures] == [("decode", "2", preds["2"]["error"])]
    assert c.ctx.work["decodes"] == 2


def test_clips_are_predicted_one_per_batch_and_rated_per_group(tmp_path: Path, make_context: Any) -> None:
    """One synth clip of 16 frames, x265 and the reference: one clip per unit to infer, each in a batch of its
    own (not the task's batch size) and counted as one inference; the coded unit's rate per group of the
    dataset is that of the clip's bitstream."""
    clips = {"images": {"train": 1, "val": 1}, "clips": {"train": 0, "val": 1}, "clip_frames": 16}
    cfg = grid(tmp_path / "o", datasets=["synth_clips"], codecs=["x265"], qualities={"x265": [37]}, limit=None,
               overrides={"synth_clips": clips, "x265": {"preset": "ultrafast"}})  # fmt: skip
    c = make_context(cfg)
    ref, coded = c.units
    assert unit_size(c.ctx, ref) == 16
    spy = SpyExecutor()
    with spy:
        encode_stage(c.ctx, c.units, spy)
        infer_stage(c.ctx, c.units, spy, Recorder())  # type: ignore[arg-type]
    evaluate_stage(c.ctx, c.units, TakenScorer({}))
    assert spy.batches == [1] and c.logs == ["synth_det: 2 clips to infer"] and c.ctx.failures == []
    assert c.ctx.work == {"encodes": 1, "decodes": 1, "inferences": 2, "evaluations": 2}
    (enc,) = rows(cfg.out, "SELECT * FROM encodes")
    meta = json.loads(enc["meta"])  # what decoding the clip needs: its frame rate and coding configuration
    assert (meta["fps"], meta["video_config"], enc["frames"]) == (30, "ra", 16)
    ev = evaluation(cfg.out, "x265", "37")
    groups = json.loads(ev["group_rates"])
    metrics = json.loads(ev["metrics"])
    assert groups and {f"map50/{g}" for g in groups} <= set(metrics)
    pixels = 16 * W * H
    for g, rate in groups.items():
        assert (rate["nbytes"], rate["pixels"]) == (enc["nbytes"], pixels), g
        assert rate["bpp"] == pytest.approx(8 * enc["nbytes"] / pixels) and rate["kbps"] == pytest.approx(
            8 * enc["nbytes"] / (16 / 30) / 1000)
    assert evaluation(cfg.out, "uncompressed", None)["group_rates"] is None


# ---- evaluate.py -----------------------------------------------------------------------------------------
def test_common_scope_is_what_every_unit_of_a_table_finished(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o", qualities={"jpeg": [20, 60]}))
    ref, j20, j60 = c.units
    base = {"task": "synth_det", "run_id": "run-1", "preds": []}

    def finish(u: Any, ids: list[str], status: str = "done") -> None:
        keys = dict(zip(IDS, u.prediction_keys(), strict=True))
        c.store.put_predictions([{**base, "key": keys[i], "item_id": i, "status": status} for i in ids])

    assert common_scope(c.ctx, c.units) == dict.fromkeys((u.key for u in c.units), frozenset())
    finish(ref, IDS)
    finish(j20, ["1", "3"])
    finish(j20, ["2"], "failed")
    assert finished_items(c.ctx, j20) == {"1", "3"} and finished_items(c.ctx, j60) == frozenset()
    # jpeg@60 finished nothing: it does not empty the intersection
    assert common_scope(c.ctx, c.units) == dict.fromkeys((u.key for u in c.units), frozenset({"1", "3"}))
    finish(j60, ["3"])
    assert common_scope(c.ctx, c.units) == dict.fromkeys((u.key for u in c.units), frozenset({"3"}))


def test_common_scope_is_per_dataset_and_task(tmp_path: Path, make_context: Any) -> None:
    c = make_context(grid(tmp_path / "o", tasks=["synth_det", "strict"], cards_dirs=[strict_cards(tmp_path / "c")]))
    base = {"run_id": "run-1", "preds": [], "status": "done"}
    for u in c.units:
        ids = IDS if u.task == "synth_det" else ["2"]
        keys = dict(zip(IDS, u.prediction_keys(), strict=True))
        c.store.put_predictions([{**base, "key": keys[i], "item_id": i, "task": u.task} for i in ids])
    scope = common_scope(c.ctx, c.units)
    assert {u.key: (u.task, scope[u.key]) for u in c.units} == {
        u.key: (u.task, frozenset(IDS) if u.task == "synth_det" else frozenset({"2"})) for u in c.units}


class TakenScorer(BackgroundScorer):
    """A background scorer that hands back fixed metrics for some units (as if it had scored them)."""

    def __init__(self, metrics: dict[str, dict[str, float]]) -> None:
        super().__init__(print)
        self.metrics = metrics

    def take(self, key: str) -> dict[str, float] | None:
        return self.metrics.pop(key, None)


def test_evaluate_stage_takes_background_scores_unless_the_unit_leaves_items_out(tmp_path: Path,
                                                                                  make_context: Any) -> None:  # fmt: skip
    """Predictions made here: every ground-truth box of the image, found exactly (mAP 1), except on item 2 of
    jpeg, which failed. The reference's background score is taken as it is when it is scored on all it
    finished, and replaced when the table's common items leave some out."""
    root = synth_root(tmp_path)
    gt = json.loads((root / "annotations" / "instances_val.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    cls = {v: k for k, v in _names().items()}
    truth: dict[str, list[list[float]]] = {i: [] for i in IDS}
    for a in gt["annotations"]:
        if str(a["image_id"]) in truth:
            x, y, w, h = a["bbox"]
            truth[str(a["image_id"])].append([x, y, x + w, y + h, 0.9, cls[names[a["category_id"]]]])
    c = make_context(grid(tmp_path / "o"))
    ref, jpeg = c.units
    base = {"task": "synth_det", "run_id": "run-1"}
    for u in c.units:
        c.store.put_predictions([
            {**base, "key": k, "item_id": i, "codec": u.codec, "encode_key": None,
             "status": "failed" if (u is jpeg and i == "2") else "done", "preds": truth[i], "infer_s": 0.25}
            for i, k in zip(IDS, u.prediction_keys(), strict=True)])  # fmt: skip
    fake = {"map": 0.125, "map50": 0.25}
    rows_ = evaluate_stage(c.ctx, c.units, TakenScorer({ref.key: dict(fake), jpeg.key: dict(fake)}), common_items=False)
    assert c.ctx.work["evaluations"] == 2
    got = {(r["codec"], r["metric"]): r["value"] for r in rows_}
    assert got[("uncompressed", "map")] == 0.125 and got[("uncompressed", "map50")] == 0.25  # taken as scored
    assert got[("jpeg", "map")] == 0.125
    ev = evaluation(tmp_path / "o", "jpeg")
    assert (ev["n_items"], ev["n_failed"], json.loads(ev["failed_items"]), json.loads(ev["left_out"])) == (2, 1, ["2"], [])
    assert ev["infer_s"] == pytest.approx(0.75) and ev["nbytes"] is None  # no encode rows stored here
    assert json.loads(ev["pred_keys"]) == jpeg.prediction_keys() and ev["codec_id"] == jpeg.codec_id
    assert (ev["dataset_id"], ev["task_id"], ev["quality"]) == (jpeg.dataset_id, jpeg.task_id, "20")
    # rerun with the common items: the reference leaves item 2 out, so it is scored here again, on 1 and 3
    c.ctx.work["evaluations"] = 0
    rows_ = evaluate_stage(c.ctx, c.units, TakenScorer({ref.key: dict(fake)}))
    assert c.ctx.work["evaluations"] == 2  # the reference (its scope changed) and jpeg (it has a failed item)
    got = {(r["codec"], r["metric"]): r["value"] for r in rows_}
    assert got[("uncompressed", "map")] == pytest.approx(1.0) and got[("uncompressed", "ar100")] == pytest.approx(1.0)
    ref_row = evaluation(tmp_path / "o", "uncompressed", None)
    assert (ref_row["n_items"], json.loads(ref_row["left_out"])) == (2, ["2"])
    want = coco_metrics(root, {i: truth[i] for i in ("1", "3")})
    assert json.loads(ref_row["metrics"]) == pytest.approx(want, abs=1e-9)
    assert c.logs[-2] == (
        "synth/synth_det/uncompressed: scored on the 2 items every codec of its table finished; 1 it finished are "
        "left out (2) -- rerun to retry the failed items elsewhere, or --no-common-items to score each unit on all "
        "of its own")  # fmt: skip
    assert c.logs[-1] == ("synth/synth_det/jpeg@20: 1 of 3 items failed and are left out of its metrics (2); "
                          "rerun to retry them")  # fmt: skip


def _names() -> dict[int, str]:
    from vcmbench.adapters import build

    return build(CardSet().get("task", "synth_det")).names()


def test_gap_messages_name_at_most_five_items(tmp_path: Path, make_context: Any,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Of 5 items all failed: five named, no ellipsis; of 6, five and ' ...'. Likewise for items left out."""
    five = make_context(grid(tmp_path / "o", limit=5, progress=True))
    evaluate_stage(five.ctx, five.units[1:], TakenScorer({}))
    assert five.logs == ["synth/synth_det/jpeg@20: 5 of 5 items failed and are left out of its metrics "
                         "(1, 2, 3, 4, 5); rerun to retry them"]  # fmt: skip
    assert "evaluate: 100%" in capsys.readouterr().err
    ev = evaluation(tmp_path / "o", "jpeg")
    assert (ev["n_items"], ev["n_failed"]) == (0, 5) and all(math.isnan(v) for v in json.loads(ev["metrics"]).values())
    six = make_context(grid(tmp_path / "o", limit=6))
    ref, jpeg = six.units
    evaluate_stage(six.ctx, [jpeg], TakenScorer({}))
    assert six.logs == ["synth/synth_det/jpeg@20: 6 of 6 items failed and are left out of its metrics "
                        "(1, 2, 3, 4, 5 ...); rerun to retry them"]  # fmt: skip
    ids6 = [str(i) for i in range(1, 7)]
    six.store.put_predictions([{"key": k, "item_id": i, "task": "synth_det", "status": "done", "preds": []}
                               for i, k in zip(ids6, ref.prediction_keys(), strict=True)])  # fmt: skip
    for keep, named in ((frozenset({"6"}), "1, 2, 3, 4, 5"), (frozenset(), "1, 2, 3, 4, 5 ...")):
        evaluate_unit(six.ctx, ref, TakenScorer({}), keep)
        n_out = 6 - len(keep)
        assert six.logs[-1] == (
            f"synth/synth_det/uncompressed: scored on the {len(keep)} items every codec of its table finished; "
            f"{n_out} it finished are left out ({named}) -- rerun to retry the failed items elsewhere, or "
            "--no-common-items to score each unit on all of its own")  # fmt: skip
        ev = evaluation(tmp_path / "o", "uncompressed", None)
        assert (ev["n_items"], ev["n_failed"], json.loads(ev["left_out"])) == (len(keep), 0, sorted(set(ids6) - keep))


# ---- whole runs: the stages together, reruns, outputs ----------------------------------------------------
def flaky_grid(tmp_path: Path, marker: Path, **kw: Any) -> RunConfig:
    """jpeg@20 and flaky@20 (failing on item 2 while ``marker`` exists) of 3 items."""
    root = synth_root(tmp_path)
    bad = hashlib.sha256(pixels(image_path(root, "2")).tobytes()).hexdigest()
    cards = flaky_cards(tmp_path / "cards", fail_sha256=bad, marker=str(marker))
    return grid(tmp_path / "o", codecs=["jpeg", "flaky"], qualities={"jpeg": [20], "flaky": [20]},
                cards_dirs=[cards], **kw)  # fmt: skip


def test_a_run_with_a_failed_item_scores_every_unit_on_the_common_items(tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    marker.touch()
    root = synth_root(tmp_path)
    logs: list[str] = []
    report = run(flaky_grid(tmp_path, marker), log=logs.append)
    out = tmp_path / "o"
    assert report.status == "failed" and not report.ok
    assert report.failures == [Failure("encode", "flaky@20", "2", CRASH)]
    assert report.work == {"encodes": 5, "decodes": 5, "inferences": 8, "evaluations": 3}
    assert f"encode failed: flaky 20 item 2 ({image_path(root, '2')}): {CRASH}" in logs
    p = by_item(out, "predictions", "flaky")["2"]
    assert (p["status"], p["error"], p["preds"]) == ("failed", f"no bitstream to decode (encode failed: {CRASH})", "null")
    for codec, quality in (("uncompressed", None), ("jpeg", "20"), ("flaky", "20")):
        ev = evaluation(out, codec, quality)
        failed = ["2"] if codec == "flaky" else []
        assert (ev["n_items"], ev["n_failed"], json.loads(ev["failed_items"])) == (2, len(failed), failed)
        assert json.loads(ev["left_out"]) == ([] if failed else ["2"])
        assert_metrics(out, root, codec, quality, ["1", "3"])
        preds = by_item(out, "predictions", codec)
        assert ev["infer_s"] == pytest.approx(sum(preds[i]["infer_s"] or 0 for i in IDS), abs=1e-12)
        assert (ev["run_id"], ev["dataset"], ev["task"], ev["scored_by"]) == (
            report.run_id, "synth", "synth_det", "synth_det (synth_det.pt)")
        assert json.loads(ev["headline"]) == ["map", "map50"] and json.loads(ev["lower_is_better"]) == []
        if codec == "uncompressed":
            assert ev["nbytes"] is None and ev["bpp"] is None
            continue
        enc = by_item(out, "encodes", codec)  # the rate of the scored items only
        assert ev["nbytes"] == enc["1"]["nbytes"] + enc["3"]["nbytes"] and ev["pixels"] == 2 * W * H
        assert ev["bpp"] == pytest.approx(8 * ev["nbytes"] / (2 * W * H))
    assert (
        "synth/synth_det/jpeg@20: scored on the 2 items every codec of its table finished; 1 it finished are left out "
        "(2) -- rerun to retry the failed items elsewhere, or --no-common-items to score each unit on all of its own"
    ) in logs  # fmt: skip
    table = pd.DataFrame(report.rows)
    assert len(table) == 3 * 7 and set(table.run_id) == {report.run_id}
    assert list(table.drop_duplicates("codec").codec) == ["uncompressed", "jpeg", "flaky"]


def test_reruns_do_nothing_until_the_failure_is_fixed_then_only_its_work(tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    marker.touch()
    root = synth_root(tmp_path)
    cfg = flaky_grid(tmp_path, marker)
    run(cfg)
    again = run(cfg)
    # the failed encode is tried (and fails) again, its unit scored again; nothing else is redone
    assert again.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 1}
    assert again.failures == [Failure("encode", "flaky@20", "2", CRASH)] and again.status == "failed"
    marker.unlink()
    fixed = run(cfg)
    assert fixed.ok and fixed.failures == [] and fixed.status == "done"
    # its encode, decode and inference; every unit scored again on all 3 items now finished by all
    assert fixed.work == {"encodes": 1, "decodes": 1, "inferences": 1, "evaluations": 3}
    for codec, quality in (("uncompressed", None), ("jpeg", "20"), ("flaky", "20")):
        ev = evaluation(tmp_path / "o", codec, quality)
        assert (ev["n_items"], ev["n_failed"], json.loads(ev["left_out"])) == (3, 0, [])
        assert_metrics(tmp_path / "o", root, codec, quality, IDS)
    assert all(r["n_failed"] == 0 for r in fixed.rows)
    last = run(cfg)
    assert last.ok and last.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}


def test_without_common_items_each_unit_is_scored_on_all_it_finished(tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    marker.touch()
    root = synth_root(tmp_path)
    report = run(flaky_grid(tmp_path, marker, common_items=False))
    out = tmp_path / "o"
    for codec, quality, items in (("uncompressed", None, IDS), ("jpeg", "20", IDS), ("flaky", "20", ["1", "3"])):
        ev = evaluation(out, codec, quality)
        assert (ev["n_items"], json.loads(ev["left_out"])) == (len(items), [])
        assert_metrics(out, root, codec, quality, items)
    assert report.work["evaluations"] == 3


def test_limit_scores_each_unit_on_its_own_items_and_reuses_the_others(tmp_path: Path) -> None:
    root = synth_root(tmp_path)
    two = run(grid(tmp_path / "o", limit=2))
    assert two.work == {"encodes": 2, "decodes": 2, "inferences": 4, "evaluations": 2}
    assert_metrics(tmp_path / "o", root, "jpeg", "20", ["1", "2"])  # the evaluation of 2 items (now the only one)
    three = run(grid(tmp_path / "o", limit=3))
    assert three.ok and three.work == {"encodes": 1, "decodes": 1, "inferences": 2, "evaluations": 2}
    evs = rows(tmp_path / "o", "SELECT * FROM evaluations WHERE codec='jpeg' ORDER BY n_items")
    assert [e["n_items"] for e in evs] == [2, 3]
    preds = stored_preds(tmp_path / "o", "jpeg", IDS)
    for e, items in zip(evs, (["1", "2"], IDS), strict=True):
        want = coco_metrics(root, {i: preds[i] for i in items})
        assert json.loads(e["metrics"]) == pytest.approx(want, abs=1e-9)


# ---- outputs.py ------------------------------------------------------------------------------------------
def test_a_run_writes_its_table_items_and_record(tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    marker.touch()
    report = run(flaky_grid(tmp_path, marker))
    out = tmp_path / "o"
    results = pd.read_csv(report.run_dir / "results.csv", dtype={"quality": str})
    assert list(results.columns) == [*TIDY_COLUMNS, *COST_COLUMNS]
    expected = pd.DataFrame(report.rows, columns=[*TIDY_COLUMNS, *COST_COLUMNS])
    assert len(results) == len(expected) == 21
    for col in ("codec", "metric", "n_items", "n_failed", "nbytes"):
        assert results[col].fillna(-1).tolist() == expected[col].fillna(-1).tolist(), col
    assert np.allclose(results.value, expected.value.astype(float), rtol=0, atol=1e-12)
    items = pd.read_csv(report.run_dir / "items.csv", dtype={"quality": str, "item_id": str})
    store = Store(out)
    try:
        want = pd.DataFrame(store.per_item_rows(report.run_id))
        prov = json.loads(store.run_info(report.run_id)["provenance"])
    finally:
        store.close()
    assert len(items) == 9 and list(items.columns) == list(want.columns)
    assert items.item_id.tolist() == want.item_id.tolist() and items.status.tolist() == want.status.tolist()
    meta = json.loads((report.run_dir / "run.json").read_text())
    assert (meta["run_id"], meta["status"], meta["work"]) == (report.run_id, "failed", report.work)
    assert meta["failures"] == [{"stage": "encode", "unit": "flaky@20", "item": "2", "error": CRASH}]
    assert meta["provenance"] == prov and meta["provenance"]["packages"]
    assert meta["config"]["codecs"] == ["jpeg", "flaky"] and meta["config"]["limit"] == 3


def test_config_record_names_every_card_and_unit(tmp_path: Path, make_context: Any) -> None:
    cfg = grid(tmp_path / "o", qualities={"jpeg": [20, 60]})
    c = make_context(cfg)
    record = config_record(cfg, c.res, c.units)
    assert {k: record[k] for k in asdict(cfg)} == asdict(cfg)
    assert set(record["cards"]) == {"jpeg", "synth_det", "synth"}
    for name, card in c.res.cards.items():
        assert record["cards"][name] == {"path": str(card.path), "digest": card.digest(), "adapter": card.adapter,
                                         "version": card.version, "settings": dict(card.settings)}  # fmt: skip
    assert record["units"] == [{"label": u.label(), "key": u.key, "codec_id": u.codec_id, "task_id": u.task_id}
                               for u in c.units]  # fmt: skip
    assert [u["label"] for u in record["units"]] == ["synth/synth_det/uncompressed", "synth/synth_det/jpeg@20",
                                                     "synth/synth_det/jpeg@60"]  # fmt: skip
    json.dumps(record)  # stored as JSON


def test_write_outputs_of_a_run_the_store_does_not_know(tmp_path: Path) -> None:
    store = Store(tmp_path / "o")
    run_dir = tmp_path / "o" / "runs" / "nested" / "r9"
    try:
        row = {c: None for c in TIDY_COLUMNS} | {"codec": "jpeg", "metric": "map", "value": 0.5, "run_id": "r9"}
        for _ in range(2):  # the folder may exist already
            write_outputs(store, run_dir, "r9", "interrupted", [row], {"encodes": 1}, [Failure("infer", "u", "3", "e")],
                          {"k": [1], "root": Path("/data/coco")})  # fmt: skip
    finally:
        store.close()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta == {"run_id": "r9", "status": "interrupted", "work": {"encodes": 1},
                    "failures": [{"stage": "infer", "unit": "u", "item": "3", "error": "e"}],
                    "config": {"k": [1], "root": "/data/coco"},
                    "provenance": {}}  # fmt: skip
    assert (run_dir / "run.json").read_text().startswith('{\n  "run_id": "r9",\n  "status"')  # indented
    table = pd.read_csv(run_dir / "results.csv")
    assert list(table.columns) == [*TIDY_COLUMNS, *COST_COLUMNS] and table.value.tolist() == [0.5]
    assert (run_dir / "items.csv").read_text().strip() == ""
