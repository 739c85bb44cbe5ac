"""TL-ICM's task loss: YOLOv5's detection loss of the decoded crop against ground-truth boxes (the default
objective), boxes from a COCO instances JSON, the feature loss kept as an option, and the codec's check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vcmbench.cli import main
from vcmbench.codecs.learned import TLICMCodec
from vcmbench.errors import CodecError
from vcmbench.models.lic import build_model, read_checkpoint_file, save_checkpoint
from vcmbench.train.detection import DetectionLoss, TaskLossError, crop_boxes, read_boxes, yolo_targets
from vcmbench.train.lic import CropSampler, TrainConfig, TrainError, list_images, rd_terms, read_log, train

#: photograph -> (COCO category id, [x, y, w, h]) of the object it shows (scikit-image's bundled photos)
OBJECTS = {"astronaut.png": (1, [120, 20, 300, 490]), "coffee.png": (47, [150, 60, 300, 280]),
           "chelsea.png": (17, [40, 10, 360, 290])}  # fmt: skip
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 47, "name": "cup"},
              {"id": 999, "name": "unicorn"}]  # fmt: skip


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three photographs and a COCO instances JSON with a box around the object of each, one crowd region and
    one box of a category no YOLOv5 class has."""
    from skimage import data

    root = tmp_path_factory.mktemp("labelled")
    folder = root / "train"
    folder.mkdir()
    images, anns = [], []
    for i, (name, img) in enumerate((("astronaut.png", data.astronaut()), ("coffee.png", data.coffee()),
                                     ("chelsea.png", data.chelsea())), start=1):  # fmt: skip
        Image.fromarray(np.ascontiguousarray(img)).save(folder / name)
        images.append({"id": i, "file_name": name, "height": img.shape[0], "width": img.shape[1]})
        cid, bbox = OBJECTS[name]
        anns.append({"id": i, "image_id": i, "category_id": cid, "bbox": bbox, "iscrowd": 0})
    anns.append({"id": 10, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1})
    anns.append({"id": 11, "image_id": 2, "category_id": 999, "bbox": [10, 10, 80, 80], "iscrowd": 0})
    annotations = root / "instances.json"
    annotations.write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return folder, annotations


def tl_config(out: Path, folder: Path, detector: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        codec="tlicm", train_dir=str(folder), out=str(out), arch="mbt2018-mean", arch_kwargs={"N": 16, "M": 24},
        lmbda=0.01, lambda2=2.0, steps=3, batch_size=2, crop=128, lr=1e-3, log_every=1, val_every=3, val_images=3,
        ckpt_every=3, threads=1, tensorboard=False, progress=False, detector_weights=str(detector),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# ---- ground truth --------------------------------------------------------------------------------------
def test_crop_boxes_clips_and_drops_remnants() -> None:
    boxes = np.array([[0, 10, 10, 50, 50],     # inside the crop at (0, 0)
                      [1, 90, 20, 150, 60],    # crosses the right edge: clipped to x 90..100 (1/6 of it stays)
                      [2, 99, 0, 140, 40],     # 1 px left inside: dropped (YOLOv5 keeps > 2 px)
                      [3, 300, 300, 320, 320]], dtype=np.float32)  # fmt: skip
    out = crop_boxes(boxes, 0, 0, 100)
    assert out[:, 0].tolist() == [0, 1]
    assert out[1, 1:].tolist() == [90, 20, 100, 60]
    shifted = crop_boxes(boxes, 5, 80, 100)  # the crop from (y 5, x 80): coordinates move with it
    assert shifted[shifted[:, 0] == 1, 1:].tolist() == [[10, 15, 70, 55]]
    targets = yolo_targets([out, np.zeros((0, 5), np.float32), shifted], 100)
    assert targets.shape == (len(out) + len(shifted), 6)
    assert targets[:2, 0].tolist() == [0, 0] and set(targets[2:, 0].tolist()) == {2}
    assert targets[0, 2:].tolist() == pytest.approx([0.3, 0.3, 0.4, 0.4])  # centre and size / crop side


def test_read_boxes_maps_categories_to_the_detector_by_name(labelled: tuple[Path, Path],
                                                            yolov5n_weights: Path) -> None:  # fmt: skip
    folder, annotations = labelled
    names = DetectionLoss(yolov5n_weights, 128).class_names()
    boxes = read_boxes(annotations, list_images(folder), names)
    index = {v: k for k, v in names.items()}
    assert boxes["astronaut.png"].tolist() == [[index["person"], 120, 20, 420, 510]]  # the crowd region is left out
    assert boxes["coffee.png"][:, 0].tolist() == [index["cup"]]  # the unicorn has no YOLOv5 class: dropped
    assert boxes["chelsea.png"][:, 0].tolist() == [index["cat"]]
    stray = folder.parent / "stray"
    stray.mkdir(exist_ok=True)
    Image.new("RGB", (64, 64)).save(stray / "unlisted.png")
    with pytest.raises(TaskLossError, match="1 training image.*unlisted.png"):
        read_boxes(annotations, [stray / "unlisted.png"], names)


def test_sampler_crops_carry_their_boxes(labelled: tuple[Path, Path]) -> None:
    folder, _ = labelled
    files = list_images(folder)
    sizes = {f.name: Image.open(f).size for f in files}
    # a 100 px box around the centre of each image: inside its centre crop, whole
    boxes = {n: np.array([[5, w / 2 - 50, h / 2 - 50, w / 2 + 50, h / 2 + 50]], np.float32) for n, (w, h) in sizes.items()}
    sampler = CropSampler(files, 128, boxes=boxes)
    batch = sampler.fixed_batch(3)
    assert batch.x.shape == (3, 3, 128, 128) and batch.mask is None
    assert batch.targets is not None and batch.targets[:, :2].tolist() == [[0, 5], [1, 5], [2, 5]]
    assert batch.targets[:, 2:].numpy() == pytest.approx(np.tile([0.5, 0.5, 100 / 128, 100 / 128], (3, 1)), abs=0.01)
    random = sampler.batch(np.random.default_rng([0, 1]), 4)
    assert random.targets is not None and set(random.targets[:, 0].tolist()) <= {0, 1, 2, 3}
    assert (random.targets[:, 2:] > 0).all() and (random.targets[:, 2:] <= 1).all()
    assert CropSampler(files, 128).batch(np.random.default_rng([0, 1]), 4).targets is None


# ---- the loss ------------------------------------------------------------------------------------------
def test_detection_loss_reaches_the_codec_and_falls(labelled: tuple[Path, Path], yolov5n_weights: Path) -> None:
    folder, annotations = labelled
    files = list_images(folder)
    detection = DetectionLoss(yolov5n_weights, 128)
    sampler = CropSampler(files, 128, boxes=read_boxes(annotations, files, detection.class_names()))
    batch = sampler.fixed_batch(3)
    assert batch.targets is not None and len(batch.targets) == 3  # every centre crop shows its object
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24).train()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.endswith("quantiles")], lr=1e-3)
    losses = []
    for step in range(8):
        torch.manual_seed(step)
        opt.zero_grad()
        terms = rd_terms(model(batch.x), batch.x, None, detection=detection, targets=batch.targets)
        terms["task_loss"].backward()
        if step == 0:  # the detector is frozen; the gradient reaches both transforms of the codec
            assert all(p.grad is None for p in detection.parameters())
            for name in ("g_a.0.weight", "g_s.6.weight"):
                grad = dict(model.named_parameters())[name].grad
                assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        opt.step()
        losses.append(float(terms["task_loss"].detach()))
    assert all(np.isfinite(losses)) and losses[0] > 0
    assert np.mean(losses[-3:]) < losses[0]


def test_task_loss_training_records_its_objective(labelled: tuple[Path, Path], yolov5n_weights: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    folder, annotations = labelled
    result = train(tl_config(tmp_path / "task", folder, yolov5n_weights, annotations=str(annotations)))
    rows = read_log(tmp_path / "task" / "log.csv")
    assert len(rows) == 5  # eval 0, train 1..3, eval 3
    for r in rows:
        assert np.isfinite(r["task_loss"]) and r["task_loss"] > 0 and np.isnan(r["feature_mse"])
        assert r["loss"] == pytest.approx(r["bpp"] + 0.01 * 255**2 * r["mse"] + 2.0 * r["task_loss"], rel=1e-4)
    meta = read_checkpoint_file(result.checkpoint)["meta"]
    assert meta["loss"] == "tlicm" and meta["tl_objective"] == "task" and meta["lambda2"] == 2.0
    assert meta["annotations"] == str(annotations) and len(meta["annotations_sha256"]) == 64
    assert len(meta["detector_weights_sha256"]) == 64 and meta["feature_layers"] is None
    # the codec checks the objective as it checks lambda
    spec = {"checkpoint": str(result.checkpoint), "lambda": 0.01, "lambda2": 2.0}
    image = np.asarray(Image.open(folder / "coffee.png"))[:64, :64]
    TLICMCodec("mbt2018-mean", {1: {**spec, "tl_objective": "task"}}, device="cpu").encode(image, 1)
    with pytest.raises(CodecError, match="says tl_objective features .* trained with the task objective"):
        TLICMCodec("mbt2018-mean", {1: {**spec, "tl_objective": "features"}}, device="cpu").encode(image, 1)


def test_the_task_objective_needs_boxes(labelled: tuple[Path, Path], yolov5n_weights: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    folder, _ = labelled
    with pytest.raises(TrainError, match="--annotations"):
        train(tl_config(tmp_path / "x", folder, yolov5n_weights))
    with pytest.raises(TrainError, match="--tl-objective"):
        train(tl_config(tmp_path / "x", folder, yolov5n_weights, tl_objective="boxes"))
    rc = main(["train", "--codec", "tlicm", "--train-dir", str(folder), "--lambda", "0", "--lambda2", "1",
               "--detector-weights", str(yolov5n_weights), "--out", str(tmp_path / "cli"), "--no-progress"])  # fmt: skip
    assert rc != 0 and "--annotations" in capsys.readouterr().err


def test_feature_objective_is_still_offered(labelled: tuple[Path, Path], yolov5n_weights: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    folder, _ = labelled
    rc = main(["train", "--codec", "tlicm", "--tl-objective", "features", "--train-dir", str(folder), "--lambda",
               "0.01", "--lambda2", "0.5", "--detector-weights", str(yolov5n_weights), "--arch-kwargs", "N=16,M=24",
               "--steps", "2", "--batch-size", "2", "--crop", "64", "--threads", "1", "--out", str(tmp_path / "f"),
               "--no-progress", "--no-tensorboard"])  # fmt: skip
    assert rc == 0
    assert "N: {lambda: 0.01, lambda2: 0.5, tl_objective: features, checkpoint:" in capsys.readouterr().out
    rows = read_log(tmp_path / "f" / "log.csv")
    assert all(r["feature_mse"] > 0 and np.isnan(r["task_loss"]) for r in rows)
    for r in rows:
        assert r["loss"] == pytest.approx(r["bpp"] + 0.01 * 255**2 * r["mse"] + 0.5 * r["feature_mse"], rel=1e-4)
    meta = read_checkpoint_file(tmp_path / "f" / "final.pt")["meta"]
    assert meta["tl_objective"] == "features" and meta["feature_layers"] == 5 and meta["annotations"] is None


def test_a_tlicm_checkpoint_without_an_objective_record_counts_as_features(tmp_path: Path) -> None:
    """Checkpoints trained before the task loss existed record no tl_objective: they were trained on features."""
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24)
    path = save_checkpoint(model, tmp_path / "old.pt", "mbt2018-mean", {"N": 16, "M": 24},
                           {"loss": "tlicm", "lambda": 0.01, "lambda2": 50})  # fmt: skip
    image = np.zeros((64, 64, 3), np.uint8)
    TLICMCodec("mbt2018-mean", {1: {"checkpoint": str(path), "tl_objective": "features"}}, device="cpu").encode(image, 1)
    with pytest.raises(CodecError, match="trained with the features objective"):
        TLICMCodec("mbt2018-mean", {1: {"checkpoint": str(path), "tl_objective": "task"}}, device="cpu").encode(image, 1)
    with pytest.raises(CodecError, match="tl_objective must be one of task, features"):
        TLICMCodec("mbt2018-mean", {1: {"checkpoint": str(path), "tl_objective": "boxes"}}, device="cpu")


def test_a_run_saved_before_the_task_loss_still_resumes(labelled: tuple[Path, Path], tmp_path: Path) -> None:
    """A ``last.pt`` written before tl_objective / annotations existed resumes (they were features / none)."""
    folder, _ = labelled
    cfg = dict(codec="lic", train_dir=str(folder), arch_kwargs={"N": 16, "M": 24}, lmbda=0.01, batch_size=1,
               crop=64, val_images=1, ckpt_every=1, threads=1, tensorboard=False, progress=False)  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "r"), steps=1, **cfg))  # type: ignore[arg-type]
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    for key in ("tl_objective", "annotations"):
        del state["config"][key]
    torch.save(state, tmp_path / "r" / "last.pt")
    assert train(TrainConfig(out=str(tmp_path / "r"), steps=2, **cfg)).resumed_from == 1  # type: ignore[arg-type]
    with pytest.raises(TrainError, match="other settings .*lmbda"):
        train(TrainConfig(out=str(tmp_path / "r"), steps=3, **{**cfg, "lmbda": 0.02}))  # type: ignore[arg-type]
