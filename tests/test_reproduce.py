"""``vcmbench reproduce`` (issue 16): experiment files, the plan and checklist of a dry run, and an item run
end to end with its figure, BD table and the paper's numbers beside the measured ones."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from vcmbench.adapters import adapter_class
from vcmbench.cards import CardSet
from vcmbench.cli import main
from vcmbench.reproduce.experiment import ExperimentError, load_suite
from vcmbench.reproduce.workplan import estimate_work
from vcmbench.tasks.base import Task

REPO = Path(__file__).resolve().parents[1]
#: metrics a task reports beside its headline ones (Task.metrics), by adapter: Panoptic-DeepLab's instance AP
#: (COCO instances, or Cityscapes instanceIds: vcmbench/tasks/panoptic_deeplab.py)
NON_HEADLINE = {"panoptic_deeplab": {"ap", "ap50"}}


def test_every_sa_icm_experiment_names_existing_cards_and_their_metrics() -> None:
    cards = CardSet()
    experiments = load_suite("sa-icm")
    assert {e.name for e in experiments} >= {"fig5-coco-yolov5", "fig5-visdrone", "fig6-coco-maskrcnn",
                                             "fig7-cityscapes-instances", "fig8-cityscapes-pq", "table1-sfuhw-nerv",
                                             "privacy"}  # fmt: skip
    for e in experiments:
        for kind, names in (("dataset", e.datasets), ("task", e.tasks), ("codec", e.codecs)):
            for name in names:
                cards.get(kind, name)  # raises for an unknown card
        for orig, sub in e.stand_ins.items():
            kind = "codec" if orig in e.codecs else "task"
            assert cards.get(kind, sub).adapter == cards.get(kind, orig).adapter or kind == "codec", (e.name, sub)
        for per_t in e.task_weights.values():
            for task, per_q in per_t.items():
                assert task in e.tasks
                for scorer in per_q.values():
                    assert cards.get("task", scorer).adapter == cards.get("task", task).adapter
        offered = set()
        for task in e.tasks:
            cls: type[Task] = adapter_class(cards.get("task", task))
            offered |= set(cls.metrics) | NON_HEADLINE.get(cards.get("task", task).adapter, set())
        assert {m.split("/", 1)[0] for m in e.metrics} <= offered | {"psnr"}, e.name
        assert e.plot in e.metrics and e.anchor in e.codecs


def test_only_picks_items_by_name_or_prefix_and_names_unknown_ones() -> None:
    assert [e.name for e in load_suite("sa-icm", ["fig6"])] == ["fig6-coco-maskrcnn"]
    assert [e.name for e in load_suite("sa-icm", ["fig5"])] == ["fig5-coco-yolov5", "fig5-visdrone"]
    with pytest.raises(ExperimentError, match=r"no item 'fig9'.*items: fig5-coco-yolov5"):
        load_suite("sa-icm", ["fig9"])
    with pytest.raises(ExperimentError, match="no experiment suite 'sa-icn'.*did you mean 'sa-icm'"):
        load_suite("sa-icn")


def test_work_estimate_counts_what_a_run_plans() -> None:
    # 2 datasets of 10 and 5 items, ladders of 6 and 4 points, 2 tasks
    work = estimate_work({"a": 10, "b": 5}, {"vtm": 6, "lic": 4}, 2)
    assert work == {"encodes": 150, "decodes": 300, "inferences": 330, "evaluations": 44}


def test_dry_run_plans_every_item_and_lists_what_is_missing(capsys: pytest.CaptureFixture[str], coco_mini: Path,
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("VCMBENCH_CACHE", str(tmp_path / "cache"))  # no weights cached: every url: is a download
    monkeypatch.delenv("VCMBENCH_VTM_DIR", raising=False)
    rc = main(["reproduce", "sa-icm", "--dry-run", "--data-root", f"coco={coco_mini}"])
    out = capsys.readouterr().out
    assert rc == 0
    for name in ("fig5-coco-yolov5", "fig5-visdrone", "fig6-coco-maskrcnn", "fig7-cityscapes-instances",
                 "fig8-cityscapes-pq", "table1-sfuhw-nerv", "privacy"):  # fmt: skip
        assert f"\n{name} (" in "\n" + out
    assert "items: coco 79 (here)" in out and "items: visdrone 548 (full dataset, absent here)" in out
    # 79 images x (6 VTM QPs + 6 + 6 + 6 + 2 + 3 learned rate points) x YOLOv5m, plus the uncompressed point
    assert "work of the whole item: 2,291 encodes, 2,291 decodes, 2,370 inferences, 30 evaluations" in out
    checklist = out.split("checklist of what is missing here:")[1]
    for entry in ("[ ] codec vtm", "[ ] codec saicm_official", "[ ] dataset cityscapes", "[ ] dataset sfu_hw",
                  "[ ] task yolov5m (downloads by itself", "[ ] codec sanerv_paper"):  # fmt: skip
        assert entry in checklist
    assert "[ ] dataset coco" not in checklist  # given with --data-root
    assert "sam_vit_h_4b8939.pth (sha256 a7bf3b02" in checklist
    assert "get it: the authors' icm_93.pth.tar" in checklist  # from resources.yaml


def _suite(root: Path) -> Path:
    """A one-item suite on the built-in synth data: JPEG anchor, a 4:4:4 JPEG, a missing codec with a
    stand-in (jpeg) and one without, and a published point at a rate inside the measured curve."""
    (root / "demo").mkdir(parents=True)
    item = {
        "title": "demo: synth_det mAP50 vs bpp", "paper_item": "Fig. 0",
        "grid": {"datasets": ["synth"], "tasks": ["synth_det"], "codecs": ["jpeg", "saicm_paper", "tcm_paper"],
                 "qualities": {"jpeg": [10, 30, 60, 90], "saicm_paper": [20, 50, 80, 95]}},
        "anchor": "jpeg", "metrics": ["map50", "map"], "plot": "map50", "expected_items": {"synth": 64},
        "stand_ins": {"saicm_paper": "jpeg444"},
        "published": [{"label": "demo point", "codec": "saicm_paper", "bpp": 1.0, "values": {"map50": 0.5}},
                      {"label": "far point", "codec": "saicm_paper", "bpp": 1000.0, "values": {"map50": 0.9}}],
    }  # fmt: skip
    (root / "demo" / "fig0-demo.yaml").write_text(yaml.safe_dump(item, sort_keys=False))
    (root / "demo" / "resources.yaml").write_text(yaml.safe_dump({"codecs": {"tcm_paper": "get TCM from its README"}}))
    return root


def _jpeg444_cards(root: Path) -> Path:
    jpeg = yaml.safe_load((REPO / "codecs" / "jpeg.yaml").read_text())
    jpeg.update(name="jpeg444", settings={**(jpeg.get("settings") or {}), "subsampling": "4:4:4"})
    (root / "codecs").mkdir(parents=True)
    (root / "codecs" / "jpeg444.yaml").write_text(yaml.safe_dump(jpeg))
    return root


def test_an_item_runs_end_to_end_with_stand_ins_and_the_papers_numbers(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("VCMBENCH_EXPERIMENTS", str(_suite(tmp_path / "experiments")))
    monkeypatch.setenv("VCMBENCH_CARDS_EXTRA", "")
    cards = _jpeg444_cards(tmp_path / "cards")
    monkeypatch.setattr("vcmbench.reproduce.command.CardSet", lambda: CardSet([cards]))
    monkeypatch.setattr("vcmbench.reproduce.execute.RunConfig",
                        _with_cards(cards))  # the run sees the extra card folder too
    out = tmp_path / "out"
    rc = main(["reproduce", "demo", "--stand-ins", "--limit", "6", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert rc == 1  # tcm_paper has no stand-in: the item ran without it, and the command says so
    assert "[ ] codec tcm_paper -- needed by fig0-demo" in text and "get it: get TCM from its README" in text
    item = out / "reproduce" / "demo" / "fig0-demo"
    assert (item / "fig0-demo_synth_synth_det_map50.png").is_file() and (item / "report.md").is_file()
    bd = pd.read_csv(item / "bd.csv")
    assert "jpeg444 (for saicm_paper)" in set(bd.codec)
    points = pd.read_csv(item / "points.csv", dtype={"quality": "string"})
    curve = points[points.codec == "jpeg444 (for saicm_paper)"].sort_values("bpp").rename(columns={"map50": "value"})
    assert list(curve.quality) == ["20", "50", "80", "95"]
    assert set(curve.scored_by) == {"synth_det (synth_det.pt)"}
    pub = pd.read_csv(item / "published.csv")
    row = pub.iloc[0]
    if curve.bpp.min() <= 1.0 <= curve.bpp.max():
        expected = float(np.interp(math.log(1.0), np.log(curve.bpp), curve.value))
        assert row.measured_value == pytest.approx(expected, abs=1e-12) and row.paper_value == 0.5
    else:
        assert "outside the measured" in row.measured_at and math.isnan(row.measured_value)
    far = pub.iloc[1]  # a published rate outside the measured curve is not extrapolated
    assert far.paper_value == 0.9 and "1000 bpp is outside the measured" in far.measured_at
    assert math.isnan(far.measured_value)
    report = (item / "report.md").read_text()
    assert "jpeg444 for saicm_paper" in report and "codec tcm_paper:" in report and "## BD against jpeg" in report


def _with_cards(cards: Path):
    from vcmbench.run.config import RunConfig

    def make(**kw):
        return RunConfig(cards_dirs=[str(cards)], **kw)

    return make
