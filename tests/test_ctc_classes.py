"""Per-class results the CTC way (vcmbench/report/classes.py): class kbps = the sequences' kbps weighted by
their durations, class accuracy = one evaluation over the class's frames pooled, per-class BD-rate from each
class's own curve, overall = the mean of the per-class BD-rates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from vcmbench.datasets.base import Item
from vcmbench.metrics.bd import bd_rate
from vcmbench.report.classes import class_bd_table, class_rows, ctc_class_kbps
from vcmbench.run.rates import group_rates
from vcmbench.scoring import score_unit
from vcmbench.store import EncodeRecord

#: two classes of two sequences each: (frames, fps)
SEQS = {"A1": ("A", 64, 30.0), "A2": ("A", 33, 60.0), "B1": ("B", 97, 50.0), "B2": ("B", 40, 24.0)}
QUALITIES = ["22", "27", "32", "37"]


def _coded(scale: float, q: int) -> list[tuple[Item, EncodeRecord]]:
    out = []
    for n, (sid, (_, frames, fps)) in enumerate(SEQS.items()):
        nbytes = int(scale * (9000 + 2500 * n) / (1.6**q))
        rec = EncodeRecord(f"{sid}{q}", "ok", None, None, nbytes, 64, 48, frames, {"fps": fps}, 1.0, 1.0, None)
        out.append((Item(sid, Path(sid), {"fps": fps}), rec))
    return out


def _groups() -> dict[str, list[str]]:
    out = {s: [s] for s in SEQS}
    for c in ("A", "B"):
        out[f"Class{c}"] = [s for s, (k, _, _) in SEQS.items() if k == c]
    return out


def _tidy(codec: str, scale: float, acc: dict[str, list[float]]) -> list[dict[str, Any]]:
    """Tidy rows of one codec as the store writes them: each group's metric with that group's own rates."""
    rows = []
    for q, quality in enumerate(QUALITIES):
        rates = group_rates(_groups(), _coded(scale, q))
        for group, r in rates.items():
            rows.append({"dataset": "sfu", "task": "det", "codec": codec, "quality": quality, "metric": f"map/{group}",
                         "headline": False, "value": acc[group][q], **r})  # fmt: skip
    return rows


def _accuracy(shift: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    out = {}
    for g in _groups():
        out[g] = list(np.sort(rng.uniform(20, 30, 4))[::-1] + shift)  # the highest rate first
    return out


def _table() -> pd.DataFrame:
    return pd.DataFrame(_tidy("anchor", 1.0, _accuracy(0.0)) + _tidy("test", 0.8, _accuracy(0.5)))


def test_class_kbps_is_the_duration_weighted_mean_of_its_sequences() -> None:
    df = _table()
    for c in ("A", "B"):
        members = [s for s, (k, _, _) in SEQS.items() if k == c]
        for quality in QUALITIES:
            pt = df[(df.codec == "test") & (df.quality == quality)].set_index("metric")
            kb = [pt.loc[f"map/{s}", "kbps"] for s in members]
            sec = [SEQS[s][1] / SEQS[s][2] for s in members]
            by_hand = sum(k * s for k, s in zip(kb, sec, strict=True)) / sum(sec)
            assert ctc_class_kbps(kb, sec) == pytest.approx(by_hand, rel=1e-12)
            # vcmbench's class row (all the class's bits over its duration) is the template's figure
            assert pt.loc[f"map/Class{c}", "kbps"] == pytest.approx(by_hand, rel=1e-12)
            # and not the plain mean of the sequences' kbps (the durations differ)
            assert pt.loc[f"map/Class{c}", "kbps"] != pytest.approx(np.mean(kb), rel=1e-3)


class _Frames:
    """A clip dataset of ``SEQS``-like clips whose predictions are lists of per-frame hits (1 / 0)."""

    def __init__(self, groups: dict[str, list[str]]) -> None:
        self._groups = groups

    def frame_predictions(self, predictions: dict[str, Any]) -> dict[str, Any]:
        return {f"{cid}#{f}": hit for cid, frames in predictions.items() for f, hit in enumerate(frames)}

    def groups(self, items: Any) -> dict[str, list[str]]:
        return self._groups


class _HitRate:
    metrics = ["map"]

    def evaluate(self, frames: dict[str, Any], ds: Any) -> dict[str, float]:
        return {"map": 100.0 * float(np.mean(list(frames.values())))}


def test_class_accuracy_is_scored_on_the_class_frames_pooled() -> None:
    """The CTC's class mAP is one evaluation over all frames of the class (compute_per_class_mAP), which
    differs from the mean of the sequences' values when they have different frame counts."""
    preds = {"A1": [1] * 10 + [0] * 2, "A2": [1] * 1 + [0] * 3}
    items = [Item(s, Path(s)) for s in preds]
    m = score_unit(_HitRate(), _Frames({"A1": ["A1"], "A2": ["A2"], "ClassA": ["A1", "A2"]}), items, preds)  # type: ignore[arg-type]
    pooled = 100.0 * 11 / 16
    assert m["map/ClassA"] == pytest.approx(pooled)
    assert m["map/ClassA"] != pytest.approx((m["map/A1"] + m["map/A2"]) / 2)


def test_per_class_bd_rate_is_bd_on_each_class_curve_and_overall_is_their_mean() -> None:
    df = _table()
    table = class_bd_table(df, anchor="anchor")
    per_class = table[table["class"].str.startswith("Class")].set_index("class")
    assert sorted(per_class.index) == ["ClassA", "ClassB"]
    for c in ("ClassA", "ClassB"):
        ref = df[(df.codec == "anchor") & (df.metric == f"map/{c}")].sort_values("kbps")
        test = df[(df.codec == "test") & (df.metric == f"map/{c}")].sort_values("kbps")
        direct = bd_rate(ref.kbps.to_numpy(), ref.value.to_numpy(), test.kbps.to_numpy(), test.value.to_numpy(),
                         method="pchip")  # fmt: skip
        assert per_class.loc[c, "bd_rate"] == pytest.approx(direct, rel=1e-9)
        assert per_class.loc[c, "metric"] == "map"
    overall = table[table["class"].str.startswith("overall")]
    assert len(overall) == 1 and overall["class"].iloc[0] == "overall (mean of 2 classes)"
    assert overall.bd_rate.iloc[0] == pytest.approx(per_class.bd_rate.mean(), rel=1e-12)
    assert per_class.loc["ClassA", "bd_rate"] != pytest.approx(per_class.loc["ClassB", "bd_rate"], rel=1e-3)
    # an anchor with no class curve (an imported per-sequence table) gives no per-class table
    assert class_bd_table(df[~((df.codec == "anchor") & df.metric.str.contains("Class"))], anchor="anchor").empty
    # only class rows enter: sequences are not classes
    assert set(class_rows(df)["class"]) == {"ClassA", "ClassB"}


def test_report_shows_per_class_rows_and_bd_on_synth_clips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vcmbench.cli import main
    from vcmbench.run import RunConfig, run

    cfg = RunConfig(codecs=["x265"], tasks=["synth_det"], datasets=["synth_clips"],
                    qualities={"x265": [30, 36, 42, 48]}, out=str(tmp_path / "o"), progress=False,
                    overrides={"x265": {"video_config": "ld", "preset": "ultrafast"}, "synth_clips": {"num_frames": 4}})  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    table = pd.read_csv(report.run_dir / "results.csv")
    # a second curve: the same points 10 % cheaper, so each class's BD-rate is known (-10 %)
    cheaper = table[table.codec == "x265"].assign(codec="x265-cheaper")
    for col in ("bpp", "kbps", "nbytes"):
        cheaper[col] = cheaper[col] * 0.9
    pd.concat([table, cheaper]).to_csv(report.run_dir / "results.csv", index=False)
    capsys.readouterr()
    assert main(["report", str(report.run_dir), "--anchor", "x265"]) == 0
    out = capsys.readouterr().out
    groups = out.split("Per sequence and class")[1].split("BD-rate against")[0]
    assert any(ln.startswith("synth_clips") and " ClassS " in ln for ln in groups.splitlines())
    section = out.split("Per-class BD-rate")[1]
    line = next(ln for ln in section.splitlines() if ln.startswith("synth_clips") and "ClassS" in ln)
    assert "-10.000" in line
    overall = next(ln for ln in section.splitlines() if "overall (mean of 1 classes)" in ln)
    assert "-10.000" in overall
    assert "ClassS" in (report.run_dir / "report.md").read_text().split("Per-class BD-rate")[1]


def sfu_layout_from_synth_clips(root: Path) -> dict[str, list[str]]:
    """An SFU-HW-Objects-v1 folder with two classes, made of the synth clips (which the synth detector was
    trained to see): ClassC holds Synth00 and Synth01, ClassD Synth02 and Synth03, each sequence's YUV file and
    per-frame label files linked under the official names."""
    from vcmbench.datasets.synth import SynthDataset

    synth = SynthDataset(root / "cache", "val", clips={"train": 2, "val": 4})
    synth.ensure()
    src = synth.sfu_hw_root / "ClassS"
    layout = {"C": ["Synth00", "Synth01"], "D": ["Synth02", "Synth03"]}
    for cls, names in layout.items():
        dst = root / "sfu" / f"Class{cls}"
        (dst / "Annotations").mkdir(parents=True)
        for name in names:
            (dst / next(src.glob(f"{name}_*.yuv")).name).symlink_to(next(src.glob(f"{name}_*.yuv")))
            (dst / "Annotations" / name).symlink_to(src / "Annotations" / name, target_is_directory=True)
    return layout


def test_per_class_table_and_bd_rates_on_an_sfu_hw_layout_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`vcmbench run --dataset sfu_hw` on a two-class SFU-HW-layout folder, x265 against VVenC: each class's row
    is scored on its own frames, and the report's per-class BD-rates equal bd_rate on each class's own curve
    (its kbps, its pooled mAP50), their overall row the mean of the two."""
    from vcmbench.cli import main
    from vcmbench.datasets.synth import THINGS
    from vcmbench.run import RunConfig, run

    layout = sfu_layout_from_synth_clips(tmp_path)
    labels = [{"index": t.id - 1, "id": t.id, "name": t.name} for t in THINGS]
    ladders = {"x265": [28, 34, 40, 46], "vvenc": [28, 34, 40, 46]}
    cfg = RunConfig(codecs=["x265", "vvenc"], tasks=["synth_det"], datasets=["sfu_hw"], qualities=ladders,
                    out=str(tmp_path / "o"), progress=False,
                    overrides={"x265": {"video_config": "ld", "preset": "ultrafast"},
                               "vvenc": {"video_config": "ld", "preset": "faster"},
                               "sfu_hw": {"root": str(tmp_path / "sfu"), "num_frames": 8, "label_map": labels}})  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    table = pd.read_csv(report.run_dir / "results.csv")
    rows = class_rows(table[table.metric.str.startswith("map50/")])
    assert sorted(set(rows["class"])) == ["ClassC", "ClassD"]
    # a class's kbps is the CTC's: its sequences' kbps weighted by their durations (equal here: 8 frames each)
    seq = table[table.metric.isin([f"map50/{n}" for names in layout.values() for n in names])]
    for (codec, q), pts in rows.groupby(["codec", "quality"]):
        for cls, names in layout.items():
            mine = seq[(seq.codec == codec) & (seq.quality == q) & seq.metric.isin([f"map50/{n}" for n in names])]
            got = pts[pts["class"] == f"Class{cls}"].kbps.iloc[0]
            assert got == pytest.approx(ctc_class_kbps(mine.kbps, [8 / 30.0] * len(mine)), rel=1e-9)
    capsys.readouterr()
    assert main(["report", str(report.run_dir), "--anchor", "vvenc"]) == 0
    out = capsys.readouterr().out
    section = out.split("Per-class BD-rate")[1]
    table_bd = class_bd_table(table[table.metric.str.startswith("map50")], anchor="vvenc")
    per_class = table_bd[table_bd["class"].str.startswith("Class") & (table_bd.codec == "x265")].set_index("class")
    assert sorted(per_class.index) == ["ClassC", "ClassD"]
    for cls in ("ClassC", "ClassD"):
        line = next(ln for ln in section.splitlines() if {"map50", cls, "x265"} <= set(ln.split()))
        a = rows[(rows.codec == "vvenc") & (rows["class"] == cls)].sort_values("kbps")
        t = rows[(rows.codec == "x265") & (rows["class"] == cls)].sort_values("kbps")
        direct = bd_rate(a.kbps.to_numpy(), a.value.to_numpy(), t.kbps.to_numpy(), t.value.to_numpy(), method="pchip")
        got = per_class.loc[cls, "bd_rate"]
        if np.isfinite(got):  # a class's own curve, not the sequences' or the dataset's
            assert got == pytest.approx(direct, rel=1e-9) and f"{got:.3f}" in line
        else:  # refused where the two curves share too little accuracy range, and the line says why
            assert "overlap" in per_class.loc[cls, "bd_rate_note"] and "overlap" in line
    assert np.isfinite(per_class.bd_rate).any(), per_class
    overall = table_bd[table_bd["class"].str.startswith("overall") & (table_bd.codec == "x265")]
    if np.isfinite(per_class.bd_rate).all():  # the mean of every class, or none where one is missing
        assert overall.bd_rate.iloc[0] == pytest.approx(per_class.bd_rate.mean(), rel=1e-12)
    else:
        assert np.isnan(overall.bd_rate.iloc[0])
    print(section, file=sys.stderr)
