"""Training masks: SAM edges through the real segment-anything code (tiny random SAM), classical edges, COCO objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.cli import main
from vcmbench.masks import (
    EdgeParams,
    MaskError,
    MaskItem,
    MaskParams,
    label_edges,
    make_masks,
    mask_index,
    read_manifest,
)


def photo_folder(tmp_path: Path, n: int = 2) -> list[MaskItem]:
    """Small natural images (scikit-image's bundled photographs) written as JPEG files."""
    from skimage import data

    folder = tmp_path / "images"
    folder.mkdir()
    items = []
    for i, img in enumerate((data.astronaut()[::2, ::2], data.coffee()[::2, ::2], data.chelsea())[:n]):
        path = folder / f"img{i}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(path, quality=95)
        items.append(MaskItem(f"img{i}", path))
    return items


def read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_label_edges_separates_labels_with_close_values() -> None:
    labels = np.zeros((40, 40), dtype=np.int32)
    labels[:, 20:] = 1  # labels 0 and 1: a single Canny on the label image would see a step of 1 and miss it
    labels[10:30, 5:15] = 2
    edges = label_edges(labels, EdgeParams())
    assert set(np.unique(edges)) == {0, 255}
    assert edges[:, 19:21].any(axis=1).all()  # the 0|1 boundary, on every row
    assert edges[10:30, 4:6].any() and not edges[0:5, 0:15].any()
    wide = label_edges(labels, EdgeParams(dilate=5))
    assert (wide > 0).sum() > (edges > 0).sum() and np.all(wide[edges > 0] == 255)


def test_sam_masks_through_the_real_code_path(tmp_path: Path) -> None:
    """A tiny random-weight SAM runs the automatic mask generator; edges, PNGs and the manifest come out."""
    items = photo_folder(tmp_path, 1)
    params = MaskParams("sam", sam_model="tiny-random", alpha=0.0, stability_score_thresh=0.0, points_per_side=2,
                        edges=EdgeParams(canny_low=50, canny_high=150, dilate=3))  # fmt: skip
    run = make_masks(items, tmp_path / "sam", params, progress=False, device="cpu")
    assert (run.made, run.skipped, run.failed) == (1, 0, {})
    mask = read_mask(tmp_path / "sam" / "img0.png")
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255} and (mask == 255).any()
    manifest = read_manifest(tmp_path / "sam")
    p = manifest["params"]
    assert p["alpha"] == 0.0 and p["sam_model"] == "tiny-random" and p["points_per_side"] == 2
    assert p["edges"] == {"canny_low": 50, "canny_high": 150, "canny_aperture": 3, "canny_l2": False, "dilate": 3,
                          "dilate_iterations": 1}  # fmt: skip
    assert "pred_iou_thresh" in manifest["interpretation"]
    assert manifest["source_detail"]["sam_weights"].startswith("random (seed 0)")
    assert "segment-anything" in manifest["software"]
    entry = manifest["items"]["img0"]
    assert entry["segments"] >= 1 and 0 < entry["coverage"] < 1 and len(entry["image_sha256"]) == 64


def test_sam_without_weights_names_the_fix(tmp_path: Path) -> None:
    items = photo_folder(tmp_path, 1)
    with pytest.raises(MaskError, match="SAM checkpoint .* not found"):
        make_masks(items, tmp_path / "m", MaskParams("sam"), sam_checkpoint=str(tmp_path / "none.pth"), progress=False)
    with pytest.raises(MaskError, match="unknown SAM model"):
        make_masks(items, tmp_path / "m", MaskParams("sam", sam_model="vit_x"), progress=False)


def test_classical_masks_resume_and_refuse_other_parameters(tmp_path: Path) -> None:
    items = photo_folder(tmp_path, 2)
    out = tmp_path / "fz"
    first = make_masks(items, out, MaskParams("felzenszwalb"), progress=False)
    assert first.made == 2
    for it in items:
        m = read_mask(out / f"{it.id}.png")
        assert 0.005 < (m > 0).mean() < 0.5
    stamp = (out / "img0.png").stat().st_mtime_ns
    again = make_masks(items, out, MaskParams("felzenszwalb"), progress=False)
    assert (again.made, again.skipped) == (0, 2) and (out / "img0.png").stat().st_mtime_ns == stamp
    (out / "img1.png").unlink()  # an interrupted run: only the missing mask is made again
    resumed = make_masks(items, out, MaskParams("felzenszwalb"), progress=False)
    assert (resumed.made, resumed.skipped) == (1, 1)
    other = MaskParams("felzenszwalb", edges=EdgeParams(dilate=3))
    with pytest.raises(MaskError, match="other parameters .*dilate"):
        make_masks(items, out, other, progress=False)
    redone = make_masks(items, out, other, overwrite=True, progress=False)
    assert redone.made == 2 and read_manifest(out)["params"]["edges"]["dilate"] == 3
    assert set(mask_index(out)) == {"img0.jpg", "img1.jpg"}


def test_coco_object_masks_are_the_union_of_annotations(coco_mini: Path, tmp_path: Path) -> None:
    from vcmbench.datasets.coco import CocoDataset

    ds = CocoDataset(coco_mini)
    ds.check()
    chosen = ds.all_items()[:2]
    items = [MaskItem(it.id, it.path, int(it.id)) for it in chosen]
    run = make_masks(items, tmp_path / "obj", MaskParams("coco"), dataset=ds, progress=False)
    assert run.made == 2
    coco = ds.coco_gt()
    for it in items:
        union = np.zeros_like(read_mask(tmp_path / "obj" / f"{it.id}.png"))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[it.image_id])):
            union |= coco.annToMask(ann).astype(np.uint8)
        assert np.array_equal(read_mask(tmp_path / "obj" / f"{it.id}.png") > 0, union > 0)
    assert len(read_manifest(tmp_path / "obj")["source_detail"]["annotations_sha256"]) == 64


def test_masks_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo_folder(tmp_path, 2)
    out = tmp_path / "cli"
    rc = main(["masks", "--images", str(tmp_path / "images"), "--source", "slic", "--slic-segments", "40",
               "--dilate", "3", "--out", str(out), "--no-progress"])  # fmt: skip
    assert rc == 0
    assert "2 masks made" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["slic_segments"] == 40 and manifest["params"]["edges"]["dilate"] == 3
    assert manifest["dataset"]["images"] == str((tmp_path / "images").resolve())
    rc = main(["masks", "--images", str(tmp_path / "images"), "--source", "slic", "--out", str(out), "--no-progress"])
    assert rc == 2  # other parameters than the folder holds: a configuration error, nothing overwritten
