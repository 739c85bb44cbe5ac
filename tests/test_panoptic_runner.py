"""Mask R-CNN and Panoptic-DeepLab (the synth-trained models) through the real runner and CLI.

Accuracy falls with JPEG quality; ``vcmbench run/plot/report`` produce RD plots for bbox mAP, mask mAP
and PQ and a BD-rate table, as for any other task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from vcmbench.cli import main
from vcmbench.run import RunConfig, run

TASKS = ["synth_maskrcnn", "synth_panoptic"]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One intra-op thread: on a 2-core machine shared with other jobs, two threads that wait on each other
    made these small models' inference 10x slower (torch.unique 100x); results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _value(df: pd.DataFrame, task: str, codec: str, quality: str | None, metric: str) -> float:
    sel = (df.task == task) & (df.codec == codec) & (df.metric == metric)
    if quality is not None:
        sel &= df.quality == quality
    row = df[sel]
    assert len(row) == 1, (task, codec, quality, metric)
    return float(row.value.iloc[0])


def test_accuracy_falls_with_jpeg_quality(tmp_path: Path) -> None:
    """JPEG 90 -> 10 -> 3 on 16 synth val images: every headline metric falls, and JPEG 90 is close to the
    uncompressed score. Measured (map, segm_map, pq, pq_th): uncompressed 0.529, 0.470, 0.549, 0.287;
    q90 0.512, 0.466, 0.564, 0.313; q10 0.378, 0.344, 0.497, 0.228; q3 0.261, 0.239, 0.292, 0.101."""
    report = run(RunConfig(codecs=["jpeg"], tasks=TASKS, datasets=["synth"], qualities={"jpeg": [3, 10, 90]},
                           limit=16, out=str(tmp_path / "out"), progress=False))  # fmt: skip
    assert report.ok, report.failures
    df = pd.DataFrame(report.rows)
    df["quality"] = df.quality.astype(str)
    assert set(df[df.headline].metric) == {"map", "segm_map", "pq", "pq_th", "pq_st"}
    for task, metric in (("synth_maskrcnn", "map"), ("synth_maskrcnn", "segm_map"), ("synth_maskrcnn", "segm_map50"),
                         ("synth_panoptic", "pq"), ("synth_panoptic", "pq_th"), ("synth_panoptic", "pq_st")):  # fmt: skip
        ref = _value(df, task, "uncompressed", None, metric)
        q3, q10, q90 = (_value(df, task, "jpeg", q, metric) for q in ("3", "10", "90"))
        assert q3 + 0.05 < q10 and q10 + 0.02 < q90, (task, metric, q3, q10, q90, ref)
        assert abs(q90 - ref) < 0.05, (task, metric, q3, q10, q90, ref)
    bpp = df[(df.codec == "jpeg") & (df.metric == "pq")].sort_values("bpp").quality.tolist()
    assert bpp == ["3", "10", "90"]


def test_cli_run_plot_report_with_jpeg_and_vvenc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["run", "--codec", "jpeg,vvenc", "--task", ",".join(TASKS), "--dataset", "synth", "--limit", "6",
               "--quality", "jpeg=10,30,70", "--quality", "vvenc=27,37,47", "--set", "vvenc.preset=faster",
               "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert main(["plot", str(out)]) == 0
    plots = {Path(line).name for line in capsys.readouterr().out.split() if line.endswith(".png")}
    for name in ("rd_synth_synth_maskrcnn_map.png", "rd_synth_synth_maskrcnn_segm_map.png", "rd_synth_synth_panoptic_pq.png"):
        assert name in plots, plots
    assert main(["report", str(out), "--anchor", "jpeg"]) == 0
    run_dir = next((out / "runs").iterdir())
    bd = pd.read_csv(run_dir / "bd_rate.csv")
    rows = bd[bd.codec == "vvenc"]
    assert {"map", "segm_map", "pq"} <= set(rows.metric), bd
    # 3 rate points per codec: no BD value by default (the method needs 4), the reason beside each cell
    assert rows.bd_rate.isna().all() and rows.bd_rate_note.str.contains("3 points < 4").all(), bd
    assert main(["report", str(out), "--anchor", "jpeg", "--allow-short"]) == 0
    bd = pd.read_csv(run_dir / "bd_rate.csv")
    rows = bd[bd.codec == "vvenc"]
    assert rows[rows.metric.isin(["map", "segm_map", "pq"])].bd_rate.notna().any(), bd
