"""Each run's runs/<run_id>/run.log: the terminal's lines, per-item failures, warnings; also for interrupted
and crashed runs, and a resumed run writes its own."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.cli import main
from vcmbench.run import RunConfig, run

STAMP = re.compile(r"^(\d\d:\d\d:\d\d | {9})")


def _flaky_card(cards: Path, n: int) -> str:
    """A card of the warning fake that fails on the synth dataset's second picture; returns that item's id."""
    ds = build(CardSet().get("dataset", "synth"))
    victim = ds.items(limit=n)[1]
    pixels = hashlib.sha256(np.ascontiguousarray(ds.load_image(victim)).tobytes()).hexdigest()
    (cards / "codecs").mkdir(parents=True)
    (cards / "codecs" / "jpeg-flaky.yaml").write_text(yaml.safe_dump({
        "adapter": "tests.codec_fakes:WarnsAndFailsOnOnePicture", "version": 1, "qualities": [20],
        "settings": {"fail_pixels_sha256": pixels}}))  # fmt: skip
    return victim.id


def _log_lines(path: Path) -> list[str]:
    """The log's lines without their time stamps."""
    lines = path.read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), "every line starts with a time or continues one"
    return [line[9:] for line in lines]


def _grid(out: Path, **kw: Any) -> RunConfig:
    return RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [30]}, limit=3,
                     out=str(out), progress=False, **kw)  # fmt: skip


def test_run_log_holds_the_terminal_failures_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = _flaky_card(tmp_path / "cards", 4)
    out = tmp_path / "out"
    args = ["run", "--codec", "jpeg-flaky", "--task", "synth_det", "--dataset", "synth", "--limit", "4",
            "--cards", str(tmp_path / "cards"), "--out", str(out), "--no-progress"]  # fmt: skip
    with pytest.warns(UserWarning, match="fake encoder: quality 20 is clipped"):  # still raised as a warning
        rc = main(args)
    terminal = capsys.readouterr()
    assert rc == 1
    (run_dir,) = (out / "runs").iterdir()
    lines = _log_lines(run_dir / "run.log")
    text = "\n".join(lines)
    # the per-item failure: stage, unit, item and the error
    assert f"FAILED [encode] jpeg-flaky@20 item {victim}: fake encoder crash on this picture" in lines
    # the Python warning (with where it was raised) and the logging record
    assert any(re.fullmatch(r"warning: UserWarning: fake encoder: quality 20 is clipped \(.+:\d+\)", x) for x in lines)
    assert "log: WARNING tests.codec_fakes: fake encoder: slow path taken" in lines
    # every line the terminal showed (the runner's messages, the table, the summary) is in the log
    shown = [x.rstrip() for x in (terminal.out + terminal.err).splitlines() if x.strip()]  # the log drops trailing blanks
    summary = next(x for x in shown if x.startswith(f"run {run_dir.name}: ") and "evaluations performed" in x)
    assert summary in lines and f"log in {run_dir / 'run.log'}" in summary
    assert f"  [encode] jpeg-flaky@20 item {victim}: fake encoder crash on this picture" in lines
    missing = [x for x in shown if x not in lines]
    assert not missing, f"terminal lines missing from run.log: {missing}"
    # the header, each stage in place of its progress bar, and the closing line
    assert lines[0].startswith(f"vcmbench run {run_dir.name} started ")
    assert re.search(r"^stage encode: \d+ encodes, 1 item\(s\) failed, \d+\.\d s$", text, re.M)
    assert re.search(r"^stage evaluate: \d+ evaluations, 0 item\(s\) failed", text, re.M)
    assert f"run {run_dir.name} finished: status failed, 1 failed item(s)" in text


def test_interrupted_run_keeps_its_log_and_the_resumed_run_writes_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vcmbench.run.runner as runner

    real_infer = runner.infer_stage

    def ctrl_c(*args: Any, **kw: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "infer_stage", ctrl_c)
    first = run(_grid(tmp_path / "out"), log=lambda msg: None)
    assert first.status == "interrupted"
    assert not (first.run_dir / "results.csv").exists(), "an interrupted run writes no tables"
    first_log = first.log_path.read_text()
    lines = _log_lines(first.log_path)
    assert any(x.startswith("stage encode: 3 encodes, 0 item(s) failed") for x in lines)
    assert "interrupted: every finished result is stored; run the same command again to resume" in lines
    assert f"run {first.run_id} finished: status interrupted, 0 failed item(s)" in "\n".join(lines)

    monkeypatch.setattr(runner, "infer_stage", real_infer)
    again = run(_grid(tmp_path / "out"), log=lambda msg: None)
    assert again.ok and again.run_id != first.run_id
    assert again.work["encodes"] == 0, "the resumed run reuses the encodes"
    resumed = _log_lines(again.log_path)
    assert any(f"previous run in {tmp_path / 'out'}: {first.run_id} (interrupted)" in x for x in resumed)
    assert first.log_path.read_text() == first_log, "the interrupted run's log is left as it was"


def test_a_crashed_run_logs_the_exception(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vcmbench.run.runner as runner

    def crash(*args: Any, **kw: Any) -> None:
        raise RuntimeError("disk on fire during evaluation")

    monkeypatch.setattr(runner, "evaluate_stage", crash)
    r = runner.Runner(_grid(tmp_path / "out"), log=lambda msg: None)
    with pytest.raises(RuntimeError, match="disk on fire"):
        r.run()
    log = (tmp_path / "out" / "runs" / str(r.run_id) / "run.log").read_text()
    assert f"run {r.run_id} stopped by RuntimeError: disk on fire during evaluation" in log
    assert "Traceback (most recent call last)" in log and "in crash" in log
    assert "stage infer: " in log, "what happened before the crash is kept"
