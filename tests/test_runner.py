"""End-to-end runs on real data: caching, resume after SIGKILL, provenance, bad inputs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.cli import main
from vcmbench.datasets.base import Item
from vcmbench.errors import VcmbenchError
from vcmbench.executors.base import SOURCES, EncodeJob, longest_first
from vcmbench.executors.local import LocalExecutor, default_workers
from vcmbench.metrics.coco_map import BACKEND_ENV
from vcmbench.run import RunConfig, Runner, run
from vcmbench.run.background import BACKGROUND_MIN_ITEMS
from vcmbench.run.resolve import background_mode, cuda_available
from vcmbench.scoring import BackgroundScorer

from .helpers import cli_args, config, small_coco


def _table(report) -> pd.DataFrame:
    df = pd.DataFrame(report.rows).drop(columns=["run_id"])
    return df.sort_values(["codec", "quality", "metric"]).reset_index(drop=True)


def test_second_identical_run_does_zero_work(tmp_path: Path, coco_mini: Path, yolov5n_weights: Path) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 5)
    cfg = config(tmp_path / "out", coco, yolov5n_weights, codecs=["jpeg", "vvenc"],
                 qualities={"jpeg": [10, 40], "vvenc": [42]}, overrides={
                     "yolov5": {"weights": str(yolov5n_weights)}, "vvenc": {"preset": "faster"}})  # fmt: skip
    first = run(cfg)
    assert first.ok
    assert first.work == {"encodes": 15, "decodes": 15, "inferences": 20, "evaluations": 4}
    second = run(cfg)
    assert second.ok
    assert second.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
    pd.testing.assert_frame_equal(_table(first), _table(second))
    # a new point reuses everything else: only its own 5 encodes and inferences run
    cfg.qualities = {"jpeg": [10, 40, 70], "vvenc": [42]}
    third = run(cfg)
    assert third.work["encodes"] == 5 and third.work["inferences"] == 5

    t = _table(first)
    ref = t[(t.codec == "uncompressed") & (t.metric == "map")]
    assert len(ref) == 1 and 0 < float(ref.value.iloc[0]) <= 1
    jpeg = t[(t.codec == "jpeg") & (t.metric == "map")].sort_values("bpp")
    assert list(jpeg.quality) == ["10", "40"]  # lower quality, lower rate
    assert (t[t.codec != "uncompressed"].n_failed == 0).all()


def test_run_records_provenance_per_image_rows_and_exports(tmp_path: Path, coco_mini: Path, yolov5n_weights: Path) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 3)
    report = run(config(tmp_path / "out", coco, yolov5n_weights, qualities={"jpeg": [20]}))
    meta = json.loads((report.run_dir / "run.json").read_text())
    prov = meta["provenance"]
    assert prov["packages"]["torch"] == "2.14.1" and "numpy" in prov["packages"]
    assert prov["machine"]["cpu_count"] >= 1 and "commit" in prov["git"]
    assert meta["config"]["cards"]["jpeg"]["digest"] and meta["config"]["cards"]["yolov5"]["settings"]["weights"]
    items = pd.read_csv(report.run_dir / "items.csv")
    assert len(items) == 2 * 3  # (uncompressed + jpeg@20) x 3 images
    coded = items[items.codec == "jpeg"]
    assert (coded.nbytes > 0).all() and (coded.encode_s > 0).all() and (coded.decode_s >= 0).all()
    assert (items.infer_s > 0).all()
    # rate = 8 * bytes written / pixels, and the bitstream cache holds exactly those bytes
    db = sqlite3.connect(report.out / "vcmbench.db")
    for blob, nbytes in db.execute("SELECT blob, nbytes FROM encodes"):
        assert (report.out / "bitstreams" / blob[:2] / f"{blob}.bin").stat().st_size == nbytes
    results = pd.read_csv(report.run_dir / "results.csv")
    row = results[(results.codec == "jpeg") & (results.metric == "map")].iloc[0]
    assert row.bpp == pytest.approx(8 * coded.nbytes.sum() / coded.pixels.sum())
    assert main(["export", str(report.out), "--format", "parquet", "--dest", str(tmp_path / "x")]) == 0
    assert len(pd.read_parquet(tmp_path / "x" / "items.parquet")) == 6
    assert set(pd.read_parquet(tmp_path / "x" / "results.parquet").metric) >= {"map", "map50"}


def _done_predictions(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=1)
        n = con.execute("SELECT COUNT(*) FROM predictions WHERE status='done'").fetchone()[0]
        con.close()
        return int(n)
    except sqlite3.OperationalError:
        return 0


def test_encodes_are_submitted_largest_source_file_first(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coco = tmp_path / "coco"
    ids = small_coco(coco_mini, coco, 6)
    sizes = {i: (coco / "val2017" / f"{int(i):012d}.jpg").stat().st_size for i in ids}
    assert [sizes[i] for i in ids] != sorted(sizes.values(), reverse=True)  # the dataset's order is another one
    submitted: list[EncodeJob] = []
    encode = LocalExecutor.encode

    def spy(self: LocalExecutor, jobs: Any, idle: Any = None, keep: Any = None) -> Any:
        jobs = list(jobs)
        submitted.extend(jobs)
        return encode(self, jobs, idle, keep)

    monkeypatch.setattr(LocalExecutor, "encode", spy)
    report = run(config(tmp_path / "out", coco, yolov5n_weights, qualities={"jpeg": [10, 40]}))
    assert report.ok and len(submitted) == 12
    first: dict[str, int] = {}  # each file where its first job is
    for n, j in enumerate(submitted):
        first.setdefault(j.item.id, n)
    by_first = sorted(first, key=first.get)  # type: ignore[arg-type]
    assert [sizes[i] for i in by_first] == sorted(sizes.values(), reverse=True)
    # the workers start on different files: the first job of each of the `spread` largest, then their second
    spread = min(default_workers(), SOURCES.size // 2)
    largest = sorted(sizes, key=sizes.get, reverse=True)  # type: ignore[arg-type]
    assert [j.item.id for j in submitted[: 2 * spread]] == largest[:spread] * 2


def test_longest_first_is_stable_and_puts_unreadable_files_last(tmp_path: Path) -> None:
    files = {}
    for name, n in (("a", 10), ("b", 30), ("c", 10), ("d", 20)):
        files[name] = tmp_path / name
        files[name].write_bytes(b"x" * n)
    jobs = [EncodeJob(f"{k}{q}", None, q, None, Item(k, files[k])) for k in "abcd" for q in (1, 2)]  # type: ignore[arg-type]
    jobs.insert(3, EncodeJob("gone", None, 1, None, Item("gone", tmp_path / "missing")))  # type: ignore[arg-type]
    assert [j.key for j in longest_first(jobs)] == ["b1", "b2", "d1", "d2", "a1", "a2", "c1", "c2", "gone"]
    # a quality ladder's jobs come quality by quality: files of one size are grouped, each file's jobs together
    ladder = [EncodeJob(f"{k}{q}", None, q, None, Item(k, files[k])) for q in (1, 2) for k in "ca"]  # type: ignore[arg-type]
    assert [j.key for j in longest_first(ladder)] == ["a1", "a2", "c1", "c2"]
    # spread over 2 workers: the files of each pair take turns, so the two workers read two files at once
    assert [j.key for j in longest_first(jobs, spread=2)] == ["b1", "d1", "b2", "d2", "a1", "c1", "a2", "c2", "gone"]
    assert [j.key for j in longest_first(jobs, spread=3)] == ["b1", "d1", "a1", "b2", "d2", "a2", "c1", "gone", "c2"]
    assert longest_first(jobs, spread=1) == longest_first(jobs)


def test_both_coco_backends_give_the_same_run_table_and_provenance_names_the_one_used(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 6)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    fast = run(config(tmp_path / "fast", coco, yolov5n_weights, qualities={"jpeg": [20]}))
    seen: list[str | None] = []
    ref = run(config(tmp_path / "ref", coco, yolov5n_weights, qualities={"jpeg": [20]}, coco_eval="pycocotools"),
              log=lambda msg: seen.append(os.environ.get(BACKEND_ENV)))  # fmt: skip
    assert seen and set(seen) == {"pycocotools"}  # while it runs: what the processes it starts inherit
    # and only while it runs: a later run in this process without a choice uses the default again
    assert BACKEND_ENV not in os.environ
    again = run(config(tmp_path / "fast", coco, yolov5n_weights, qualities={"jpeg": [20]}))
    assert again.work["evaluations"] == 0
    assert json.loads((again.run_dir / "run.json").read_text())["provenance"]["coco_eval"] == "faster_coco_eval"
    cols = ["codec", "quality", "metric", "value", "bpp", "n_items", "n_failed"]
    a, b = _table(fast)[cols], _table(ref)[cols]
    assert (a.metric == "map").any() and a.value.notna().all()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-12)
    names = [json.loads((r.run_dir / "run.json").read_text())["provenance"]["coco_eval"] for r in (fast, ref)]
    assert names == ["faster_coco_eval", "pycocotools"]
    with pytest.raises(VcmbenchError, match="unknown COCO evaluation backend 'fast'"):
        run(config(tmp_path / "bad", coco, yolov5n_weights, coco_eval="fast"))
    monkeypatch.setenv(BACKEND_ENV, "fast")  # a bad environment is refused as early, and no run is started
    with pytest.raises(VcmbenchError, match=r"unknown COCO evaluation backend 'fast' \(from \$VCMBENCH_COCO_EVAL\)"):
        run(config(tmp_path / "bad-env", coco, yolov5n_weights))
    assert not (tmp_path / "bad-env" / "runs").exists()


def test_resume_after_sigkill_recomputes_nothing_finished(tmp_path: Path, coco_mini: Path, yolov5n_weights: Path) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 12)
    args = cli_args(tmp_path / "killed", coco, yolov5n_weights, "--codec", "jpeg", "--quality", "5,20,60",
                    "--batch-size", "2", "--workers", "1")  # fmt: skip
    total_inferences = 4 * 12
    proc = subprocess.Popen([sys.executable, "-m", "vcmbench.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "killed" / "vcmbench.db"
    deadline = time.time() + 240
    while _done_predictions(db) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _done_predictions(db)
    assert 10 <= done_before < total_inferences

    resumed = run(config(tmp_path / "killed", coco, yolov5n_weights, qualities={"jpeg": [5, 20, 60]}))
    assert resumed.ok
    assert resumed.work["inferences"] == total_inferences - done_before
    assert resumed.work["encodes"] < 3 * 12 or done_before >= 12  # encodes finished before the kill are reused

    fresh = run(config(tmp_path / "fresh", coco, yolov5n_weights, qualities={"jpeg": [5, 20, 60]}))
    cols = ["codec", "quality", "metric", "value", "bpp", "n_items", "n_failed"]
    pd.testing.assert_frame_equal(_table(resumed)[cols], _table(fresh)[cols])


def test_unknown_names_are_refused_with_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag, bad, good in (("--codec", "vvenv", "vvenc"), ("--task", "yolov5x", "yolov5"), ("--dataset", "cocoo", "coco")):
        rc = main(["run", flag, bad, "--out", str(tmp_path / "o"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"unknown {flag[2:]} {bad!r}" in err and f"did you mean {good!r}" in err


def test_quality_outside_range_fails_before_any_work(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 2)
    rc = main(cli_args(tmp_path / "o", coco, yolov5n_weights, "--codec", "jpeg,vvenc", "--quality", "vvenc=37,70"))
    err = capsys.readouterr().err
    assert rc == 2 and "QP 70 is outside the allowed range 0..63" in err
    db = sqlite3.connect(tmp_path / "o" / "vcmbench.db")
    assert db.execute("SELECT COUNT(*) FROM encodes").fetchone()[0] == 0


def test_missing_annotation_file_names_the_path(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 2)
    ann = coco / "annotations" / "instances_val2017.json"
    ann.unlink()
    rc = main(cli_args(tmp_path / "o", coco, yolov5n_weights, "--codec", "jpeg"))
    err = capsys.readouterr().err
    assert rc == 2 and str(ann) in err and "--data-root" in err


def test_missing_weights_file_names_the_path(tmp_path: Path, coco_mini: Path, capsys: pytest.CaptureFixture[str]) -> None:
    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 2)
    missing = tmp_path / "nowhere" / "yolov5n.pt"
    rc = main(cli_args(tmp_path / "o", coco, missing, "--codec", "jpeg"))
    err = capsys.readouterr().err
    assert rc == 2 and str(missing) in err


def test_corrupt_image_fails_alone_and_is_retried_when_fixed(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    good = tmp_path / "good"
    ids = small_coco(coco_mini, good, 4)
    first = run(config(out, good, yolov5n_weights, qualities={"jpeg": [30]}))
    assert first.ok
    bad = tmp_path / "bad"
    small_coco(coco_mini, bad, 4, corrupt=ids[1])
    rc = main(cli_args(out, bad, yolov5n_weights, "--codec", "jpeg", "--quality", "30,50"))
    captured = capsys.readouterr()
    assert rc == 1
    assert f"item {ids[1]}" in captured.err and "corrupt or truncated" in captured.err
    assert str(bad / "val2017") in captured.err
    # the other images were processed and scored; the bad one is counted as failed
    runs = sorted((out / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    table = pd.read_csv(runs[-1] / "results.csv")
    m = table[table.metric == "map"]
    assert set(m.codec) == {"uncompressed", "jpeg"} and (m.n_failed == 1).all() and (m.n_items == 3).all()
    assert m.value.notna().all()
    # the earlier run's results are untouched
    db = sqlite3.connect(out / "vcmbench.db")
    assert db.execute("SELECT COUNT(*) FROM predictions WHERE status='done' AND run_id=?", (first.run_id,)).fetchone()[0] == 8
    # fixing the file and rerunning only redoes the bad item; since the restored file has the same
    # content as in the first run, its reference and q30 results come from the store by content hash:
    # only its q50 encode and inference remain
    (bad / "val2017" / f"{int(ids[1]):012d}.jpg").unlink()
    os.symlink(coco_mini / "val2017" / f"{int(ids[1]):012d}.jpg", bad / "val2017" / f"{int(ids[1]):012d}.jpg")
    again = run(config(out, bad, yolov5n_weights, qualities={"jpeg": [30, 50]}))
    assert again.ok
    assert again.work["encodes"] == 1 and again.work["inferences"] == 1
    final = pd.DataFrame(again.rows)
    assert (final.n_failed == 0).all() and (final.n_items == 4).all()


def test_crashing_encoder_keeps_other_results_and_rerun_completes(
    tmp_path: Path, coco_mini: Path, yolov5n_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vcmbench.codecs.ffmpeg import default_ffmpeg

    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 3)
    # Named fake: the real ffmpeg, except that every QP-42 encode crashes like a broken encoder build.
    crashing = tmp_path / "crashing-ffmpeg"
    crashing.write_text(
        "#!/bin/sh\nprev=\nfor a in \"$@\"; do\n"
        "  if [ \"$prev\" = \"-qp\" ] && [ \"$a\" = \"42\" ]; then echo 'vvenc: fake crash at QP 42' >&2; exit 134; fi\n"
        f"  prev=$a\ndone\nexec {default_ffmpeg()} \"$@\"\n"
    )
    crashing.chmod(0o755)
    args = cli_args(tmp_path / "o", coco, yolov5n_weights, "--codec", "vvenc", "--quality", "37,42",
                    "--set", "vvenc.preset=faster", "--set", f"vvenc.ffmpeg={crashing}")  # fmt: skip
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("[encode] vvenc@42") == 3 and "exited with code 134" in err and "fake crash at QP 42" in err
    db = sqlite3.connect(tmp_path / "o" / "vcmbench.db")
    assert db.execute("SELECT COUNT(*) FROM encodes WHERE status='done'").fetchone()[0] == 3
    assert db.execute("SELECT COUNT(*) FROM encodes WHERE status='failed'").fetchone()[0] == 3
    # with a working encoder, only the failed encodes and their inferences are redone
    fixed = run(config(tmp_path / "o", coco, yolov5n_weights, codecs=["vvenc"], qualities={"vvenc": [37, 42]},
                       overrides={"yolov5": {"weights": str(yolov5n_weights)}, "vvenc": {"preset": "faster"}}))  # fmt: skip
    assert fixed.ok and fixed.work["encodes"] == 3 and fixed.work["inferences"] == 3


def _synth_grid(out: Path, **kw: Any) -> RunConfig:
    return RunConfig(codecs=["jpeg"], tasks=kw.pop("tasks", ["synth_det"]), datasets=["synth"],
                     qualities=kw.pop("qualities", {"jpeg": [10, 40, 80]}), limit=kw.pop("limit", 10), out=str(out),
                     progress=False, **kw)  # fmt: skip


def test_background_scoring_gives_the_inline_results(tmp_path: Path) -> None:
    """Units scored in the background process while the model infers the next ones: same table as scoring
    every unit in the driver after inference, and the last unit (nothing left to overlap) in the driver."""
    inline = Runner(_synth_grid(tmp_path / "inline", background_scoring="off"))
    ref = inline.run()
    assert ref.ok and inline.scorer.scored == 0
    logs: list[str] = []
    bg = Runner(_synth_grid(tmp_path / "bg", background_scoring="on"), log=logs.append)
    report = bg.run()
    assert report.ok, report.failures
    # units finished during inference go to the process; in the evaluate stage it takes more from the back
    # while the driver scores from the front (evaluate.two_ended), so it scored 1 to 4 of the 4
    assert 1 <= bg.scorer.scored <= 4
    assert report.work == ref.work
    assert not [m for m in logs if "background scoring" in m]
    cols = ["codec", "quality", "metric", "value", "n_items", "n_failed", "bpp"]
    pd.testing.assert_frame_equal(_table(report)[cols], _table(ref)[cols])
    # "auto" on this CPU-only machine: the scoring process would only compete with the model
    auto = Runner(_synth_grid(tmp_path / "bg"))
    assert auto.config.background_scoring == "auto"
    if not torch.cuda.is_available():
        assert background_mode(auto.config.background_scoring, "local", None, cuda_available) == "off"
    with pytest.raises(VcmbenchError, match="auto, on or off"):
        run(_synth_grid(tmp_path / "bad", background_scoring="yes"))


def test_a_dying_scoring_process_loses_nothing(tmp_path: Path) -> None:
    cards = CardSet()
    det = cards.get("task", "synth_det")
    (tmp_path / "cards" / "tasks").mkdir(parents=True)
    (tmp_path / "cards" / "tasks" / "synth_det-dies.yaml").write_text(yaml.safe_dump({
        "name": "synth_det-dies", "adapter": "tests.scoring_fakes:DiesOutsideTheDriver", "version": 1,
        "settings": {**dict(det.settings), "driver_pid": os.getpid()},
    }))  # fmt: skip
    logs: list[str] = []
    runner = Runner(_synth_grid(tmp_path / "out", tasks=["synth_det-dies"], background_scoring="on",
                                cards_dirs=[str(tmp_path / "cards")]), log=logs.append)  # fmt: skip
    report = runner.run()
    assert report.ok, report.failures
    assert runner.scorer.scored == 0
    assert any("scoring process ended (exit code 3)" in m for m in logs), logs
    ref = run(_synth_grid(tmp_path / "ref", background_scoring="off"))
    cols = ["codec", "quality", "metric", "value", "n_items"]
    pd.testing.assert_frame_equal(_table(report)[cols], _table(ref)[cols])


def test_cancelled_background_scorer_stops_its_process_at_once(tmp_path: Path) -> None:
    cards = CardSet()
    task, ds = cards.get("task", "synth_det"), cards.get("dataset", "synth")
    items = build(ds).items(limit=2)
    scorer = BackgroundScorer(log=lambda m: None)
    scorer.submit("unit", task, ds, items, {it.id: "[]" for it in items})
    proc = scorer._proc
    assert proc is not None and proc.poll() is None
    scorer.close(cancel=True)  # Ctrl-C: the run keeps what it stored and does not wait for the scorer
    assert proc.poll() == -signal.SIGKILL
    assert scorer.take("unit") is None  # nothing pending any more: the driver would score it itself


def test_every_codec_is_scored_on_the_items_all_codecs_finished(tmp_path: Path) -> None:
    """One codec fails on one picture: by default every unit of the table (reference and all codecs) is scored on
    the other items, equal to a run without that item; --no-common-items scores each unit on all of its own."""
    import hashlib

    import numpy as np

    ds = build(CardSet().get("dataset", "synth"))
    items = ds.items(limit=6)
    victim = items[2]
    pixels = hashlib.sha256(np.ascontiguousarray(ds.load_image(victim)).tobytes()).hexdigest()
    (tmp_path / "cards" / "codecs").mkdir(parents=True)
    (tmp_path / "cards" / "codecs" / "jpeg-flaky.yaml").write_text(yaml.safe_dump({
        "adapter": "tests.codec_fakes:FailsOnOnePicture", "version": 1, "qualities": [20],
        "settings": {"fail_pixels_sha256": pixels}}))  # fmt: skip
    grid = dict(codecs=["jpeg", "jpeg-flaky"], tasks=["synth_det"], datasets=["synth"], limit=6, progress=False,
                qualities={"jpeg": [10, 40]}, cards_dirs=[str(tmp_path / "cards")])  # fmt: skip
    logs: list[str] = []
    common = run(RunConfig(out=str(tmp_path / "common"), **grid), log=logs.append)
    assert not common.ok and [f.item for f in common.failures] == [victim.id]
    table = _table(common).set_index(["codec", "quality", "metric"])
    assert (table.n_items == 5).all()
    assert table.loc[("jpeg-flaky", "20", "map50"), "n_failed"] == 1
    assert (table.drop("jpeg-flaky", level="codec").n_failed == 0).all()
    assert any(f"5 items every codec of its table finished; 1 it finished are left out ({victim.id})" in m for m in logs)
    # the same numbers as a run that never had the item
    others = [it.id for it in items if it.id != victim.id]
    without = _table(run(RunConfig(out=str(tmp_path / "without"), **{**grid, "codecs": ["jpeg"], "limit": None,
                                                                     "ids": others})))  # fmt: skip
    without = without.set_index(["codec", "quality", "metric"])
    for key in [("jpeg", "10", "map50"), ("jpeg", "40", "map")]:
        assert table.loc[key, "value"] == without.loc[key, "value"]
    assert table.loc[("jpeg", "10", "map50"), "bpp"] == without.loc[("jpeg", "10", "map50"), "bpp"]
    ref, ref_without = table.xs("uncompressed", level="codec"), without.xs("uncompressed", level="codec")
    assert ref.xs("map50", level="metric").value.item() == ref_without.xs("map50", level="metric").value.item()
    own = _table(run(RunConfig(out=str(tmp_path / "own"), common_items=False, **grid))).set_index(["codec", "quality", "metric"])
    assert own.loc[("jpeg", "10", "map50"), "n_items"] == 6 and own.loc[("jpeg-flaky", "20", "map50"), "n_items"] == 5
    # a rerun with the item still failing redoes only the failed unit, and keeps the others' scope
    again = run(RunConfig(out=str(tmp_path / "common"), **grid))
    assert again.work["evaluations"] == 1 and again.work["encodes"] == 0


def test_the_evaluate_stage_shares_units_with_the_scoring_process(tmp_path: Path) -> None:
    """After inference (background scoring "auto", off during inference without a GPU) the scoring process,
    prepared at the stage's start, takes units from the back while the driver scores from the front: the
    same table as a run that scores every unit in the driver; "off" starts no process."""
    if torch.cuda.is_available():
        pytest.skip("with a GPU, 'auto' scores in the background during inference already")
    grid = {"limit": BACKGROUND_MIN_ITEMS, "qualities": {"jpeg": [10, 20, 30, 40, 60, 80]}}
    ref = Runner(_synth_grid(tmp_path / "off", background_scoring="off", **grid))
    off = ref.run()
    assert off.ok and ref.scorer.scored == 0 and not ref.scorer.ready()
    shared = Runner(_synth_grid(tmp_path / "auto", **grid))
    # units this small are scored before the process could start: have it ready first (as after a long stage)
    cards = CardSet()
    ds_card = cards.get("dataset", "synth")
    shared.scorer.prepare(cards.get("task", "synth_det"), ds_card, build(ds_card).items(limit=2))
    deadline = time.monotonic() + 120
    while not shared.scorer.ready():
        assert time.monotonic() < deadline, "the scoring process did not get ready in 120 s"
        time.sleep(0.1)
    report = shared.run()
    assert report.ok, report.failures
    assert shared.scorer.scored >= 1  # handed over from the back, scored there
    assert report.work == off.work
    cols = ["codec", "quality", "metric", "value", "n_items", "n_failed", "bpp"]
    pd.testing.assert_frame_equal(_table(report)[cols], _table(off)[cols])


def test_the_scoring_process_is_prepared_at_the_runs_start_and_only_when_units_will_be_scored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Unless background scoring is off, the scoring process is asked to get ready before the encode stage (it
    runs at idle priority), once per task and dataset; a finished grid starts no process."""
    import vcmbench.run.runner as runner_module

    events: list[str] = []
    real_encode_stage = runner_module.encode_stage
    monkeypatch.setattr(runner_module, "encode_stage", lambda *a: (events.append("encode"), real_encode_stage(*a))[1])
    real_prepare = BackgroundScorer.prepare
    sent: list[Any] = []
    monkeypatch.setattr(BackgroundScorer, "prepare", lambda self, *a: (events.append("prepare"), real_prepare(self, *a))[1])
    real_send = BackgroundScorer._send
    monkeypatch.setattr(BackgroundScorer, "_send", lambda self, job: (sent.append(job[0]), real_send(self, job))[1])
    grid = {"limit": BACKGROUND_MIN_ITEMS, "qualities": {"jpeg": [10, 40]}}
    first = Runner(_synth_grid(tmp_path / "auto", **grid))
    assert first.run().ok
    assert events[:2] == ["prepare", "encode"]
    assert sent.count(None) == 1  # prepared once, though the evaluate stage asks again for the same cards
    events.clear()
    again = Runner(_synth_grid(tmp_path / "auto", **grid))
    assert again.run().work["evaluations"] == 0
    assert "prepare" not in events and again.scorer._proc is None
    events.clear()
    off = Runner(_synth_grid(tmp_path / "off", background_scoring="off", **grid))
    assert off.run().ok
    assert "prepare" not in events and off.scorer._proc is None


class _Scorer:
    """A stand-in for BackgroundScorer's bookkeeping: ready, busy with the units handed over until the driver
    has scored ``pace`` units for each of them, and the units it has from inference."""

    def __init__(self, ready: bool = True, has: tuple[str, ...] = (), pace: int = 1) -> None:
        self._ready, self._has, self.pace, self.backlog = ready, set(has), pace, 0

    def ready(self) -> bool:
        return self._ready

    def busy(self) -> bool:
        return self.backlog > 0

    def has(self, key: str) -> bool:
        return key in self._has


def _order(scorer: _Scorer, allows: bool = True, n: int = 4, size: int = BACKGROUND_MIN_ITEMS,
           shareable: str = "abcdef") -> tuple[list[str], list[str]]:  # fmt: skip
    from types import SimpleNamespace

    from vcmbench.run.evaluate import two_ended

    items = [SimpleNamespace(id=str(i), meta={}) for i in range(size)]
    res = SimpleNamespace(task=lambda name: SimpleNamespace(background_scoring=allows and name in shareable),
                          datasets={"ds": (SimpleNamespace(media="image"), items, [])})  # fmt: skip
    ctx = SimpleNamespace(res=res)
    units = [SimpleNamespace(key=k, scoring_task=k, dataset="ds") for k in "abcdef"[:n]]
    shared: list[str] = []

    def share(u: Any) -> None:
        shared.append(u.key)
        scorer.backlog += scorer.pace

    order = []
    for u in two_ended(ctx, units, scorer, share):  # type: ignore[arg-type]
        order.append(u.key)
        scorer.backlog = max(0, scorer.backlog - 1)  # the process worked while the driver scored this one
    return order, shared


def test_two_ended_hands_over_from_the_back_while_the_driver_takes_the_front() -> None:
    assert _order(_Scorer()) == (["a", "b", "d", "c"], ["d", "c"])
    assert _order(_Scorer(), n=5) == (["a", "b", "c", "e", "d"], ["e", "d"])
    assert _order(_Scorer(), n=6) == (["a", "b", "c", "f", "e", "d"], ["f", "e", "d"])
    # half at once: a process slower than the driver still takes its half (handed one at a time, it would be
    # busy with "d" when the driver came back for "b", and the driver would score three of four)
    assert _order(_Scorer(pace=2)) == (["a", "b", "d", "c"], ["d", "c"])
    assert _order(_Scorer(), n=1) == (["a"], [])  # nothing left for the driver: nothing to share
    assert _order(_Scorer(ready=False)) == (["a", "b", "c", "d"], [])  # still starting: the driver goes on
    assert _order(_Scorer(has=("d",))) == (["a", "b", "c", "d"], [])  # d is with it already (from inference)
    assert _order(_Scorer(), allows=False) == (["a", "b", "c", "d"], [])  # the task scores in the driver only
    assert _order(_Scorer(), shareable="abc") == (["a", "b", "c", "d"], [])  # the last unit's task does not share
    assert _order(_Scorer(), shareable="abd") == (["a", "b", "c", "d"], ["d"])  # stops at one that does not
    assert _order(_Scorer(), size=BACKGROUND_MIN_ITEMS - 1) == (["a", "b", "c", "d"], [])  # small units
