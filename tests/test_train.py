"""Learned-codec training: objectives, loss falls, exact resume, TL-ICM feature loss, CLI -> usable codec checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vcmbench.cli import main
from vcmbench.codecs.learned import ObjectICMCodec
from vcmbench.masks import MaskItem, MaskParams, make_masks
from vcmbench.models.lic import XZ_MAGIC, read_checkpoint_file
from vcmbench.train.lic import TrainConfig, TrainError, objective, rd_terms, read_log, train


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three natural photographs (scikit-image's bundled ones) as a training folder."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for i, img in enumerate((data.astronaut(), data.coffee(), data.chelsea())):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"p{i}.png")
    return folder


def tiny(out: Path, photos: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        codec="lic", train_dir=str(photos), out=str(out), arch="mbt2018-mean", arch_kwargs={"N": 16, "M": 24},
        lmbda=0.01, steps=6, batch_size=2, crop=64, lr=1e-3, milestones=[4], log_every=1, val_every=2,
        val_images=3, ckpt_every=3, threads=1, tensorboard=False, progress=False,
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_objectives() -> None:
    x = torch.rand(2, 3, 8, 8)
    x_hat = x + 0.1
    lik = torch.full((2, 4, 2, 2), 0.5)
    out = {"x_hat": x_hat, "likelihoods": {"y": lik}}
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1
    t = rd_terms(out, x, mask)
    bpp = 2 * 4 * 2 * 2 / (2 * 8 * 8)  # one bit per latent element
    assert t["bpp"].item() == pytest.approx(bpp)
    assert t["mse"].item() == pytest.approx(0.01)
    assert t["masked_mse"].item() == pytest.approx(0.005)  # half the pixels count, averaged over all of them
    assert objective("lic", t, 0.1).item() == pytest.approx(bpp + 0.1 * 255**2 * 0.01)
    assert objective("saicm", t, 0.1).item() == pytest.approx(bpp + 0.1 * 255**2 * 0.005)
    t0 = rd_terms(out, x, torch.zeros(2, 1, 8, 8))
    assert objective("objicm", t0, 0.1).item() == pytest.approx(bpp)  # outside the mask nothing is paid for


def test_loss_falls_and_resume_continues_exactly(photos: Path, tmp_path: Path) -> None:
    straight = train(tiny(tmp_path / "a", photos, steps=8, milestones=[6]))
    evals = [r for r in read_log(tmp_path / "a" / "log.csv") if r["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 8
    assert evals[-1]["loss"] < 0.9 * evals[0]["loss"]
    assert evals[-1]["mse"] < evals[0]["mse"]
    # the same run in two sessions: 4 steps, then resumed from last.pt to 8
    train(tiny(tmp_path / "b", photos, steps=4, milestones=[6]))
    resumed = train(tiny(tmp_path / "b", photos, steps=8, milestones=[6]))
    assert resumed.resumed_from == 4
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = [r for r in read_log(tmp_path / "a" / "log.csv") if r["kind"] == "train"]
    rows_b = [r for r in read_log(tmp_path / "b" / "log.csv") if r["kind"] == "train"]
    assert [(r["step"], r["loss"], r["lr"]) for r in rows_a] == [(r["step"], r["loss"], r["lr"]) for r in rows_b]
    assert rows_a[-1]["lr"] == pytest.approx(1e-4)  # x0.1 from step 6 on
    assert straight.sha256 == resumed.sha256  # identical final checkpoints
    with pytest.raises(TrainError, match="other settings .*lmbda"):
        train(tiny(tmp_path / "b", photos, steps=9, lmbda=0.02))


def test_masked_training_needs_masks_for_every_image(photos: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="--masks"):
        train(tiny(tmp_path / "x", photos, codec="saicm"))
    items = [MaskItem(p.stem, p) for p in sorted(photos.glob("*.png"))[:2]]
    make_masks(items, tmp_path / "m", MaskParams("felzenszwalb"), progress=False)
    with pytest.raises(TrainError, match="1 training image"):
        train(tiny(tmp_path / "x", photos, codec="saicm", masks=str(tmp_path / "m")))


def test_tlicm_feature_loss_uses_the_detector(photos: Path, tmp_path: Path, yolov5n_weights: Path) -> None:
    cfg = tiny(tmp_path / "tl", photos, codec="tlicm", tl_objective="features", lambda2=0.5,
               detector_weights=str(yolov5n_weights), steps=2, val_every=1)  # fmt: skip
    result = train(cfg)
    rows = read_log(tmp_path / "tl" / "log.csv")
    assert all(r["feature_mse"] > 0 for r in rows)
    for r in rows:
        expected = r["bpp"] + 0.01 * 255**2 * r["mse"] + 0.5 * r["feature_mse"]
        assert r["loss"] == pytest.approx(expected, rel=1e-4)
    assert torch.load(result.checkpoint, weights_only=True)["meta"]["loss"] == "tlicm"
    with pytest.raises(TrainError, match="--detector-weights"):
        train(tiny(tmp_path / "tl2", photos, codec="tlicm", tl_objective="features", lambda2=0.5))


def test_train_cli_writes_a_checkpoint_the_codec_uses(photos: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["masks", "--images", str(photos), "--source", "felzenszwalb", "--out", str(tmp_path / "m"),
                 "--dilate", "3", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    rc = main(["train", "--codec", "objicm", "--train-dir", str(photos), "--masks", str(tmp_path / "m"),
               "--lambda", "0.05", "--arch-kwargs", "N=16,M=24", "--steps", "3", "--batch-size", "2", "--crop", "64",
               "--lr", "1e-3", "--out", str(tmp_path / "run"), "--save-dtype", "float16", "--threads", "1",
               "--final-name", "codec.pt.xz", "--no-progress", "--no-tensorboard"])  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    info = json.loads(out[: out.index("\ncard entry")])
    ckpt = Path(info["checkpoint"])
    assert ckpt.name == "codec.pt.xz" and ckpt.read_bytes().startswith(XZ_MAGIC)
    blob = read_checkpoint_file(ckpt)
    assert blob["meta"]["loss"] == "objicm" and blob["meta"]["lambda"] == 0.05
    assert blob["meta"]["masks_params"]["params"]["edges"]["dilate"] == 3
    assert any(k.endswith("_quantized_cdf") and v.numel() for k, v in blob["state_dict"].items())
    codec = ObjectICMCodec("mbt2018-mean", {1: {"checkpoint": str(ckpt), "lambda": 0.05, "sha256": info["sha256"]}},
                           arch_kwargs={"N": 16, "M": 24}, device="cpu")  # fmt: skip
    image = np.asarray(Image.open(photos / "p1.png"))[:100, :130]
    decoded = codec.decode(codec.encode(image, 1))
    assert decoded.shape == image.shape
    assert np.array_equal(decoded, codec.estimate(image, 1)["image"])


def test_crops_are_the_same_from_memory_and_from_disk(photos: Path) -> None:
    from vcmbench.train.lic import CropSampler, list_images

    files = list_images(photos)
    in_memory, from_disk = CropSampler(files, 64), CropSampler(files, 64, preload=0)
    a = in_memory.batch(np.random.default_rng([0, 5]), 4)[0]
    b = from_disk.batch(np.random.default_rng([0, 5]), 4)[0]
    assert torch.equal(a, b) and a.shape == (4, 3, 64, 64)
    assert not torch.equal(a, in_memory.batch(np.random.default_rng([0, 6]), 4)[0])
