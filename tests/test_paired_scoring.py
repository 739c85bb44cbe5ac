"""Codec-paired scoring (issue 16): a codec card's ``task_weights:`` (or the run's) names the task card whose
model scores each rate point, e.g. a detector fine-tuned on that codec's decoded images. The plan pairs
them, the other points keep the plain cross product, and every table row says which model scored it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from vcmbench.cards import CardError, CardSet, parse_task_weights
from vcmbench.run.config import RunConfig
from vcmbench.run.resolve import pair_scorers
from vcmbench.run.runner import run

REPO = Path(__file__).resolve().parents[1]


def write_detuned_detector(dst: Path) -> Path:
    """The synth detector with the weights of its first convolution scaled by 0.7: another detector of the
    same architecture and classes, whose predictions (and mAP) differ."""
    ck = torch.load(REPO / "weights" / "synth" / "synth_det.pt", weights_only=False, map_location="cpu")
    conv = next(m for m in ck["model"].modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        conv.weight.mul_(0.7)
    ck["ema"] = None
    torch.save(ck, dst)
    return dst


def write_cards(root: Path, weights: Path) -> Path:
    """A task card for the other detector and a JPEG card whose quality 10 it scores."""
    (root / "tasks").mkdir(parents=True)
    (root / "codecs").mkdir()
    det = yaml.safe_load((REPO / "tasks" / "synth_det.yaml").read_text())
    det.update(name="synth_det_detuned", settings={**det["settings"], "weights": str(weights), "sha256": None})
    (root / "tasks" / "synth_det_detuned.yaml").write_text(yaml.safe_dump(det))
    jpeg = yaml.safe_load((REPO / "codecs" / "jpeg.yaml").read_text())
    jpeg.update(name="jpeg_paired", task_weights={"synth_det": {10: "synth_det_detuned"}})
    (root / "codecs" / "jpeg_paired.yaml").write_text(yaml.safe_dump(jpeg))
    return root


def grid(out: Path, cards: Path, codec: str) -> RunConfig:
    return RunConfig(codecs=[codec], tasks=["synth_det"], datasets=["synth"], qualities={codec: [10, 40]}, limit=6,
                     out=str(out), progress=False, cards_dirs=[str(cards)], background_scoring="off")  # fmt: skip


def test_two_rate_points_of_one_codec_are_scored_by_two_detectors(tmp_path: Path) -> None:
    cards = write_cards(tmp_path / "cards", write_detuned_detector(tmp_path / "synth_det_detuned.pt"))
    paired = run(grid(tmp_path / "out", cards, "jpeg_paired"))
    plain = run(grid(tmp_path / "out", cards, "jpeg"))  # the same JPEG ladder, every point by synth_det
    assert paired.ok and plain.ok
    table = pd.read_csv(paired.run_dir / "results.csv", dtype={"quality": "string"})
    ref = pd.read_csv(plain.run_dir / "results.csv", dtype={"quality": "string"})
    pick = lambda df, q: df[(df.metric == "map50") & (df.quality == q)].iloc[0]  # noqa: E731
    # the table says which model scored each point; the task column stays the curve's task
    assert pick(table, "10").scored_by == "synth_det_detuned (synth_det_detuned.pt)"
    assert pick(table, "40").scored_by == "synth_det (synth_det.pt)"
    assert set(table.task) == {"synth_det"} and pick(table, "10").task_id != pick(table, "40").task_id
    uncompressed = table[(table.metric == "map50") & (table.codec == "uncompressed")].iloc[0]
    assert uncompressed.scored_by == "synth_det (synth_det.pt)"
    # the figure names the other detector in the legend and at the point it scored
    from vcmbench.report.plot import rd_figures

    fig = dict(rd_figures(table[table.metric == "map50"]))[("synth", "synth_det", "map50")]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "jpeg_paired [scored by synth_det_detuned (synth_det_detuned.pt)]" in legend
    assert [t.get_text() for t in fig.axes[0].texts] == ["synth_det_detuned"]
    plain_fig = dict(rd_figures(ref[ref.metric == "map50"]))[("synth", "synth_det", "map50")]
    assert "jpeg" in [t.get_text() for t in plain_fig.axes[0].get_legend().get_texts()] and not plain_fig.axes[0].texts
        # quality 40 is the plain pair: the same predictions as the unpaired run (shared by key, not redone) ...
    assert pick(table, "40").value == pick(ref, "40").value
    assert plain.work["inferences"] == 6  # only quality 10 had to be predicted by synth_det
    # ... and quality 10 was scored by the other detector: same bitstreams, another mAP
    assert pick(table, "10").bpp == pick(ref, "10").bpp
    assert pick(table, "10").value != pick(ref, "10").value


def test_pairing_rules(tmp_path: Path) -> None:
    cards = CardSet([write_cards(tmp_path / "cards", tmp_path / "missing.pt")])
    chosen = {"jpeg_paired": cards.get("codec", "jpeg_paired"), "synth_det": cards.get("task", "synth_det")}
    cfg = RunConfig(codecs=["jpeg_paired"], tasks=["synth_det"], datasets=["synth"])
    assert pair_scorers(cfg, chosen, {"jpeg_paired": [10, 40]}) == {("jpeg_paired", "10", "synth_det"): "synth_det_detuned"}
    # the run's task_weights override the card's; "*" pairs every quality; a quality's own entry wins
    cfg.task_weights = {"jpeg_paired": {"synth_det": {"*": "synth_det_detuned", "40": "synth_det"}}}
    assert pair_scorers(cfg, chosen, {"jpeg_paired": [10, 40, 80]}) == {
        ("jpeg_paired", "10", "synth_det"): "synth_det_detuned", ("jpeg_paired", "80", "synth_det"): "synth_det_detuned"}
    # a quality outside the ladder is refused, naming it
    cfg.task_weights = {"jpeg_paired": {"synth_det": {"55": "synth_det_detuned"}}}
    with pytest.raises(CardError, match=r"task_weights.synth_det names qualities \['55'\]"):
        pair_scorers(cfg, chosen, {"jpeg_paired": [10, 40]})
    # a task the run does not score is ignored
    cfg.tasks = ["other"]
    assert pair_scorers(cfg, chosen, {"jpeg_paired": [10]}) == {}


def test_task_weights_syntax_errors_name_the_place() -> None:
    assert parse_task_weights({"yolov5": "yolov5_saicm93"}, "x") == {"yolov5": {"*": "yolov5_saicm93"}}
    assert parse_task_weights({"yolov5": {1: "a", 2: "b"}}, "x") == {"yolov5": {"1": "a", "2": "b"}}
    for bad, msg in ((["a"], "task_weights: must map"), ({"yolov5": {}}, "task_weights.yolov5: give"),
                     ({"yolov5": {1: 3}}, r"task_weights.yolov5.1: 3 is not a task card name")):  # fmt: skip
        with pytest.raises(CardError, match=msg):
            parse_task_weights(bad, "codecs/c.yaml")


def test_a_scorer_of_another_adapter_is_refused(tmp_path: Path) -> None:
    root = write_cards(tmp_path / "cards", tmp_path / "w.pt")
    jpeg = yaml.safe_load((root / "codecs" / "jpeg_paired.yaml").read_text())
    jpeg["task_weights"] = {"synth_det": {10: "synth_seg"}}
    (root / "codecs" / "jpeg_paired.yaml").write_text(yaml.safe_dump(jpeg))
    with pytest.raises(CardError, match="cannot stand in for task synth_det"):
        run(grid(tmp_path / "out", root, "jpeg_paired"))


def test_the_official_saicm_card_pairs_the_authors_detectors() -> None:
    """The paper's protocol: each released SA-ICM model is scored by the YOLOv5 its authors fine-tuned on its
    decoded images (α 0.93 -> yolov5_saicm93, α 0.78 -> yolov5_saicm78)."""
    cards = CardSet()
    chosen = {"saicm_official": cards.get("codec", "saicm_official"), "yolov5": cards.get("task", "yolov5")}
    cfg = RunConfig(codecs=["saicm_official"], tasks=["yolov5"], datasets=["coco"])
    assert pair_scorers(cfg, chosen, {"saicm_official": [1, 2]}) == {
        ("saicm_official", "1", "yolov5"): "yolov5_saicm93", ("saicm_official", "2", "yolov5"): "yolov5_saicm78"}
    cfg.task_weights = {"saicm_official": {"yolov5": {"*": "yolov5"}}}  # the plain cross product, asked for
    assert pair_scorers(cfg, chosen, {"saicm_official": [1, 2]}) == {}
