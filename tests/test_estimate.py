"""`vcmbench estimate`: pending work counted like a run does it, costs read from a store, the time model."""

from __future__ import annotations

import sqlite3
import statistics
from pathlib import Path
from typing import Any

import pytest

from vcmbench.cli import main
from vcmbench.run import RunConfig, run
from vcmbench.run.estimate import (
    Costs,
    Job,
    Machine,
    Overheads,
    PendingWork,
    Rate,
    estimate_text,
    measured_costs,
    missing_costs,
    per_image_rate,
    plan,
    wall_time,
)


def _grid(out: Path, limit: int, qualities: list[int]) -> RunConfig:
    return RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": qualities},
                     limit=limit, out=str(out), progress=False, workers=1)  # fmt: skip


def test_pending_work_is_what_the_next_run_does(tmp_path: Path) -> None:
    """A store holding part of the grid (2 of 4 items, 2 of 3 qualities): the estimate's counts are the work
    the run then reports; afterwards nothing is pending, and the store's costs cover the whole grid."""
    out = tmp_path / "out"
    assert run(_grid(out, 2, [10, 40])).ok
    cfg = _grid(out, 4, [10, 40, 80])
    work, _ = plan(cfg)
    counts = work.counts()
    assert counts["encodes"] == 4 * 3 - 2 * 2  # the cached encodes are not counted
    report = run(cfg)
    assert report.ok and report.work == counts
    assert plan(cfg)[0].counts() == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
    costs = measured_costs([out])
    assert missing_costs(work, costs) == []
    with sqlite3.connect(out / "vcmbench.db") as conn:
        per_px = [s / px for s, px in conn.execute("SELECT encode_s, width * height FROM encodes WHERE quality = '80'")]
    jpeg80 = next(key for key in costs.encode if key[1] == "80")
    assert costs.encode[jpeg80].seconds == pytest.approx(statistics.median(per_px)) and costs.encode[jpeg80].n == 4
    assert wall_time(work, costs, Machine(cpus=2)).wall_s > Overheads().startup_s


def _hand_made(encodes: int) -> tuple[PendingWork, Costs]:
    """``encodes`` coded items of 1000 pixels (1 s to encode, 0.1 s to decode) and one reference item,
    each inferred in 0.5 s by a model that takes 0.5 s to load, in two units of ``encodes + 1`` items."""
    coded = [Job("c", "codec", "10", 1000) for _ in range(encodes)]
    infer = [Job("t", "task", None, 1000) for _ in range(encodes + 1)]
    work = PendingWork(encodes=coded, decodes={"task": list(coded)}, inferences={"task": infer},
                       evaluations=[encodes + 1, encodes + 1])  # fmt: skip
    costs = Costs(encode={("c", "10"): Rate(1e-3, 1)}, decode={("c", "10"): Rate(1e-4, 1)}, infer={"t": Rate(0.5, 1, load=0.5)})
    return work, costs


OVERHEADS = Overheads(startup_s=3.0, per_encode_s=0.25, per_inference_s=0.1,
                      per_evaluation_s=0.2, per_evaluated_item_s=0.05)  # fmt: skip


def test_time_model_on_hand_made_costs() -> None:
    work, costs = _hand_made(4)
    est = wall_time(work, costs, Machine(cpus=2), OVERHEADS)
    # encode: (4 x 1 s + 4 x 0.25 s) / 2 slots; infer: model load + max(2.5 s of inference, 0.4 s decode / 2,
    # 2.9 s / 2 cores) + 5 x 0.1 s; evaluate: 2 x (0.2 + 5 x 0.05)
    assert est.stages == pytest.approx({"startup": 3.0, "encode": 2.5, "infer": 3.5, "evaluate": 0.9})
    assert est.wall_s == pytest.approx(9.9)
    one = wall_time(work, costs, Machine(cpus=2, workers=1), OVERHEADS)
    assert one.stages["encode"] == pytest.approx(5.0) and one.stages["infer"] == pytest.approx(3.5)
    # a long encode bounds its stage from below, whatever the slots
    assert wall_time(_hand_made(1)[0], costs, Machine(cpus=64), OVERHEADS).stages["encode"] == pytest.approx(1.0)


def test_inference_rate_leaves_the_model_load_out() -> None:
    """The first batch of a run holds the lazy model load: the per-image time is the median of the later
    batches, the load what the first batch took beyond it; a run of one batch gives no load."""
    rate = per_image_rate({"r1": [[1.0, 1.0], [0.1, 0.1], [0.2]], "r2": [[0.5]]})
    assert (rate.seconds, rate.n, rate.longest) == (0.1, 6, 1.0) and rate.load == pytest.approx(1.8)
    alone = per_image_rate({"r2": [[0.5, 0.5]]})
    assert (alone.seconds, alone.load) == (0.5, 0.0)


def test_cluster_scaling() -> None:
    work, costs = _hand_made(64)
    here = wall_time(work, costs, Machine(cpus=2), OVERHEADS)
    cluster = wall_time(work, costs, Machine(nodes=4, cpus=8, gpus=1, gpu_speedup=10), OVERHEADS)
    assert here.stages["encode"] == pytest.approx(64 * 1.25 / 2) and cluster.stages["encode"] == pytest.approx(64 * 1.25 / 32)
    # 65 inferences of 0.5 s on 4 GPUs 10x faster than the CPU; 6.4 s of decodes on 32 cores overlap them
    assert cluster.stages["infer"] == pytest.approx(0.5 + 65 * 0.5 / 40 + 65 * 0.1 / 4)
    cpu_nodes = wall_time(work, costs, Machine(nodes=4, cpus=8), OVERHEADS)  # one model process per node
    assert cpu_nodes.stages["infer"] == pytest.approx(0.5 + 65 * 0.5 / 4 + 65 * 0.1 / 4)
    assert here.stages["infer"] == pytest.approx(0.5 + 65 * 0.5 + 65 * 0.1)
    assert cluster.stages["evaluate"] == here.stages["evaluate"]  # scoring stays in the driver


def test_unknown_costs_are_said_not_guessed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work, _ = _hand_made(2)
    text = estimate_text(work, Costs(infer={"t": Rate(0.5, 1, load=0.5)}), Machine(cpus=2), ["nowhere"])
    assert "expected wall time: unknown" in text and "encode codec@10" in text and "decode codec@10" in text
    assert "inference task" not in text and "--calibrate N" in text
    rc = main(["estimate", "--codec", "jpeg", "--task", "synth_det", "--dataset", "synth", "--quality", "jpeg=10",
               "--limit", "2", "--out", str(tmp_path / "empty"), "--cpus", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0 and "pending: 2 encodes, 2 decodes, 4 inferences, 2 evaluations" in printed
    assert "unknown -- no measured cost for decode jpeg@10; encode jpeg@10; inference synth_det" in printed


def test_calibration_measures_the_grid_in_a_temporary_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--calibrate: a separate run of the grid's first items makes every cost known, and its store goes away."""
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("vcmbench-calibrate-*"))
    rc = main(["estimate", "--codec", "jpeg", "--task", "synth_det", "--dataset", "synth", "--quality", "jpeg=10",
               "--limit", "3", "--out", str(tmp_path / "empty"), "--cpus", "2", "--calibrate", "1"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0 and "calibrating: the grid on its first 1 item(s)" in printed
    assert "pending: 3 encodes, 3 decodes, 6 inferences, 2 evaluations" in printed
    assert "expected wall time: unknown" not in printed and "expected wall time: " in printed
    assert set(Path(tempfile.gettempdir()).glob("vcmbench-calibrate-*")) == before


def test_estimate_takes_runs_item_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--ids and --exclude choose the items as for run: the work counted is that of the chosen items, and the
    calibration runs the grid on them."""
    grid = ["estimate", "--codec", "jpeg", "--task", "synth_det", "--dataset", "synth", "--quality", "jpeg=10",
            "--out", str(tmp_path / "empty"), "--cpus", "2"]  # fmt: skip
    assert main([*grid, "--ids", "2,5,7"]) == 0
    assert "pending: 3 encodes, 3 decodes, 6 inferences, 2 evaluations" in capsys.readouterr().out
    assert main([*grid, "--ids", "2,5,7", "--exclude", "5"]) == 0
    assert "pending: 2 encodes, 2 decodes, 4 inferences, 2 evaluations" in capsys.readouterr().out
    seen: list[list[str]] = []

    def calibrate(run_args: list[str], items: int, log: Any) -> tuple[Path, float]:
        seen.append(list(run_args))
        raise SystemExit(0)  # the arguments are what is checked here; the real calibration has its own test

    import vcmbench.run.estimate as est

    mp = pytest.MonkeyPatch()
    mp.setattr(est, "calibrate", calibrate)
    try:
        with pytest.raises(SystemExit):
            main([*grid, "--ids", "2,5,7", "--exclude", "5", "--calibrate", "1"])
    finally:
        mp.undo()
    assert seen and "--ids=2,5,7" in seen[0] and "--exclude=5" in seen[0]
