"""Training sets of learned codecs: masks on any split, the record in every checkpoint (`vcmbench inspect`),
the warning of a run that scores a codec on its own training images, and the recipe of docs/learned-codecs.md
end to end (masks on train, training on train, evaluation on val) on small generated data in COCO's layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from vcmbench.cli import main
from vcmbench.media.hashing import file_sha256
from vcmbench.synth.generate import SynthConfig, ensure_split

ANNOTATIONS = "annotations/instances_{}.json"


# ---- data -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synth dataset (6 train, 3 val images of 320x240, COCO instances) with disjoint images."""
    cfg = SynthConfig(images={"train": 6, "val": 3}, clips={"train": 0, "val": 0})
    cache = tmp_path_factory.mktemp("synth")
    ensure_split(cfg, "train", cache)
    return ensure_split(cfg, "val", cache)


def coco_split(synth: Path, dst: Path, split: str, picks: dict[str, list[int]]) -> list[str]:
    """``dst/<split>/`` + ``dst/annotations/instances_<split>.json`` (the COCO layout) holding the synth
    images ``picks`` names (synth split -> positions), with their annotations; returns the image file names."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    categories: list[dict[str, Any]] = []
    (dst / split).mkdir(parents=True)
    for src_split, positions in picks.items():
        data = json.loads((synth / ANNOTATIONS.format(src_split)).read_text())
        categories = data["categories"]
        chosen = [sorted(data["images"], key=lambda im: im["id"])[i] for i in positions]
        ids = {im["id"] for im in chosen}
        images += chosen
        anns += [a for a in data["annotations"] if a["image_id"] in ids]
        for im in chosen:
            shutil.copy(synth / src_split / im["file_name"], dst / split / im["file_name"])
    (dst / "annotations").mkdir(exist_ok=True)
    (dst / ANNOTATIONS.format(split)).write_text(json.dumps({"images": images, "annotations": anns,
                                                             "categories": categories}))  # fmt: skip
    return [im["file_name"] for im in images]


def codec_card(cards: Path, name: str, points: dict[int, str], adapter: str = "objicm") -> None:
    lines = "".join(f"    {q}: {spec}\n" for q, spec in points.items())
    (cards / "codecs").mkdir(parents=True, exist_ok=True)
    (cards / "codecs" / f"{name}.yaml").write_text(
        f"adapter: {adapter}\nversion: 1\nqualities: {sorted(points)}\nsettings:\n  arch: mbt2018-mean\n"
        f"  arch_kwargs: {{N: 16, M: 24}}\n  device: cpu\n  rate_points:\n{lines}"
    )


TRAIN_ARGS = ["--lambda", "0.05", "--arch-kwargs", "N=16,M=24", "--steps", "2", "--batch-size", "2", "--crop", "64",
              "--threads", "1", "--no-progress", "--no-tensorboard", "--val-images", "2"]  # fmt: skip


def run_args(root: Path, cards: Path, out: Path, codec: str) -> list[str]:
    return ["run", "--codec", codec, "--task", "synth_det", "--dataset", "coco", "--data-root", str(root),
            "--cards", str(cards), "--out", str(out), "--no-progress", "--workers", "1"]  # fmt: skip


def run_json(out: Path) -> dict[str, Any]:
    (run_dir,) = (out / "runs").iterdir()
    return json.loads((run_dir / "run.json").read_text())


# ---- masks on any split ---------------------------------------------------------------------------
def test_masks_on_a_split_or_a_folder_with_its_annotations(synth: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    root = tmp_path / "coco"
    names = coco_split(synth, root, "train2017", {"train": [0, 1, 2]})
    coco_split(synth, root, "val2017", {"val": [0]})
    common = ["--source", "coco", "--no-progress"]
    assert main(["masks", "--dataset", "coco", "--data-root", str(root), "--split", "train2017", *common,
                 "--out", str(tmp_path / "split")]) == 0  # fmt: skip
    assert main(["masks", "--images", str(root / "train2017"), "--annotations",
                 str(root / ANNOTATIONS.format("train2017")), *common, "--out", str(tmp_path / "folder")]) == 0  # fmt: skip
    by_split = json.loads((tmp_path / "split" / "manifest.json").read_text())
    by_folder = json.loads((tmp_path / "folder" / "manifest.json").read_text())
    assert sorted(e["image"] for e in by_split["items"].values()) == sorted(names)  # train images, not val
    assert by_split["dataset"]["split"] == "train2017"
    assert by_split["dataset"]["annotations"] == str(root / ANNOTATIONS.format("train2017"))
    assert by_split["items"].keys() == by_folder["items"].keys()
    for entry in by_split["items"].values():
        assert entry["coverage"] > 0
        assert (tmp_path / "split" / entry["mask"]).read_bytes() == (tmp_path / "folder" / entry["mask"]).read_bytes()
    capsys.readouterr()
    # object masks need annotations; a split the card cannot take is refused by name
    assert main(["masks", "--images", str(root / "train2017"), *common, "--out", str(tmp_path / "x")]) == 2
    assert "--annotations FILE" in capsys.readouterr().err
    assert main(["masks", "--dataset", "coco", "--data-root", str(root), "--split", "test2017", *common,
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "annotations/instances_test2017.json" in capsys.readouterr().err


# ---- the warning -----------------------------------------------------------------------------------
def test_run_warns_when_a_codec_is_scored_on_its_training_images(synth: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Trained on the 6 synth train images, scored on 2 of them plus 2 val images: 2 of 4 (50 %) in stderr,
    provenance and report; a foreign checkpoint of the same codec gets 'training set unknown'; scored on
    val images only: no warning."""
    assert main(["train", "--codec", "lic", "--train-dir", str(synth / "train"), "--out", str(tmp_path / "t"),
                 *TRAIN_ARGS]) == 0  # fmt: skip
    ckpt = tmp_path / "t" / "final.pt"
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": torch.load(ckpt, weights_only=True)["state_dict"]}, foreign)
    cards = tmp_path / "cards"
    codec_card(cards, "mine", {1: f"{{lambda: 0.05, checkpoint: {ckpt}}}", 2: f"{{checkpoint: {foreign}}}"},
               adapter="lic")  # fmt: skip
    mixed, disjoint = tmp_path / "mixed", tmp_path / "disjoint"
    coco_split(synth, mixed, "val2017", {"train": [1, 4], "val": [0, 2]})
    coco_split(synth, disjoint, "val2017", {"val": [0, 1, 2]})
    capsys.readouterr()

    assert main(run_args(mixed, cards, tmp_path / "out", "mine")) == 0
    err = capsys.readouterr().err
    warning = (f"WARNING: codec mine at quality 1 is scored on its own training images: 2 of the 4 images of "
               f"coco/synth_det/mine@1 (50.0%) are in the training set of {ckpt}")  # fmt: skip
    assert err.count(warning) == 2  # before the work and again at the end
    assert f"note: codec mine at quality 2: training set unknown ({foreign} records none)" in err
    records = {r["quality"]: r for r in run_json(tmp_path / "out")["provenance"]["training_overlap"]}
    assert records[1]["status"] == "overlap" and records[1]["overlap"] == 2 and records[1]["fraction"] == 0.5
    mixed_ids = sorted(im["id"] for im in json.loads((mixed / ANNOTATIONS.format("val2017")).read_text())["images"])
    assert sorted(int(i) for i in records[1]["overlapping_ids"]) == [i for i in mixed_ids if i > 1_000_000]
    assert records[2]["status"] == "unknown" and records[2]["overlap"] is None
    assert main(["report", str(tmp_path / "out")]) == 0
    assert warning in capsys.readouterr().err
    (run_dir,) = (tmp_path / "out" / "runs").iterdir()
    report = (run_dir / "report.md").read_text()
    assert warning in report and "training set unknown" in report
    assert "| training_images |" in report and "| 2 of 4 (50%) |" in report

    assert main(run_args(disjoint, cards, tmp_path / "out2", "mine")) == 0
    err = capsys.readouterr().err
    assert "WARNING" not in err and "own training images" not in err and "training set unknown" in err
    records = {r["quality"]: r for r in run_json(tmp_path / "out2")["provenance"]["training_overlap"]}
    assert records[1]["status"] == "disjoint" and records[1]["overlap"] == 0 and records[1]["items"] == 3


# ---- inspect ---------------------------------------------------------------------------------------
def test_inspect_a_card_reads_what_is_here_and_downloads_nothing(synth: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["train", "--codec", "lic", "--train-dir", str(synth / "val"), "--out", str(tmp_path / "t"),
                 *TRAIN_ARGS, "--final-name", "q1.pt.xz"]) == 0  # fmt: skip
    ckpt = tmp_path / "t" / "q1.pt.xz"
    cards = tmp_path / "cards"
    url = "https://example.invalid/weights/q2.pt"
    codec_card(cards, "mine", {1: f"{{lambda: 0.05, checkpoint: {ckpt}}}", 2: f"{{url: {url}, sha256: {'ab' * 32}}}",
                               3: "{random_seed: 1}"}, adapter="lic")  # fmt: skip
    capsys.readouterr()
    assert main(["inspect", "mine", "--cards", str(cards), "--overlap", str(synth / "val"),
                 "--overlap", str(synth / "train")]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    q1, q2, q3 = info["rate_points"]
    val_hashes = sorted(file_sha256(p) for p in (synth / "val").iterdir())
    assert q1["present"] and q1["checkpoint"] == str(ckpt) and q1["sha256"] == file_sha256(ckpt)
    assert q1["train_images_sha256"] == val_hashes and q1["train_images"] == 3
    assert (q1["objective"], q1["lambda"], q1["steps"]) == ("lic", 0.05, 2)
    assert q1["overlap"][str(synth / "val")]["in_training_set"] == 3
    assert q1["overlap"][str(synth / "train")] == {"images": 6, "in_training_set": 0, "files": []}
    assert q2["present"] is False and url in q2["note"] and q2["train_images_sha256"] is None
    assert q3["train_images_sha256"] == [] and q3["training_set"] == "none (random weights)"
    # the file itself, and a card file by path, give the same record
    assert main(["inspect", str(ckpt)]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert "overlap" not in direct and direct == {k: q1[k] for k in direct}
    assert main(["inspect", str(cards / "codecs" / "mine.yaml")]) == 0
    assert json.loads(capsys.readouterr().out)["rate_points"][0] == {k: v for k, v in q1.items() if k != "overlap"}
    assert main(["inspect", "jpeg"]) == 2
    assert "has no trained checkpoints" in capsys.readouterr().err


# ---- the docs recipe (docs/learned-codecs.md) --------------------------------------------------------
def test_readme_recipe_masks_and_training_on_train_evaluation_on_val(synth: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """docs/learned-codecs.md, the training recipe: object masks on train2017, Object-ICM trained on train2017,
    scored on val2017; the run finds no training image in val, and inspect lists exactly train2017."""
    coco = tmp_path / "coco"
    coco_split(synth, coco, "train2017", {"train": [0, 1, 2, 3, 4, 5]})
    coco_split(synth, coco, "val2017", {"val": [0, 1, 2]})
    masks, run = tmp_path / "masks" / "objects", tmp_path / "runs" / "objicm"
    assert main(["masks", "--dataset", "coco", "--data-root", str(coco), "--split", "train2017", "--source", "coco",
                 "--out", str(masks), "--no-progress"]) == 0  # fmt: skip
    assert main(["train", "--codec", "objicm", "--train-dir", str(coco / "train2017"), "--masks", str(masks),
                 "--out", str(run), *TRAIN_ARGS]) == 0  # fmt: skip
    cards = tmp_path / "cards"
    codec_card(cards, "objicm_small", {1: f"{{lambda: 0.05, checkpoint: {run / 'final.pt'}}}"})
    capsys.readouterr()
    assert main(run_args(coco, cards, tmp_path / "results", "objicm_small")) == 0
    out, err = capsys.readouterr()
    assert "objicm_small" in out and "WARNING" not in err
    info = run_json(tmp_path / "results")
    assert info["status"] == "done"
    (record,) = info["provenance"]["training_overlap"]
    assert (record["status"], record["overlap"], record["items"]) == ("disjoint", 0, 3)
    assert main(["inspect", str(run / "final.pt")]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["objective"] == "objicm" and inspected["masks"] == str(masks)
    assert inspected["train_images_sha256"] == sorted(file_sha256(p) for p in (coco / "train2017").iterdir())
    assert not set(inspected["train_images_sha256"]) & {file_sha256(p) for p in (coco / "val2017").iterdir()}
