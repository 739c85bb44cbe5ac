"""Cityscapes loader on a tiny fixture written in the official layout; panoptic GT made by cityscapesscripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.datasets.cityscapes import CityscapesDataset
from vcmbench.errors import DatasetLayoutError
from vcmbench.metrics.panoptic import rgb2id

# label ids (cityscapesscripts.helpers.labels): 0 unlabeled (void), 7 road, 11 building, 21 vegetation,
# 23 sky, 24 person, 26 car (things: hasInstances)
ROAD, BUILDING, VEGETATION, SKY, PERSON, CAR = 7, 11, 21, 23, 24, 26
H, W = 64, 128


def scene(variant: int) -> np.ndarray:
    """An instanceIds map: stuff by label id, things as label*1000 + k, a crowd of persons (id 24), void 0."""
    ids = np.full((H, W), ROAD, np.int32)
    ids[:20] = SKY
    ids[20:30, : 60 + 4 * variant] = BUILDING
    ids[20:30, 100:] = VEGETATION
    ids[35:50, 10:40] = CAR * 1000 + 0  # car #0
    ids[38:55, 50 + variant : 80 + variant] = CAR * 1000 + 1
    ids[30:60, 90:96] = PERSON * 1000 + 0
    ids[40:60, 100:110] = PERSON  # crowd of persons (no instance id)
    ids[60:, :8] = 0  # unlabeled -> void
    return ids


def write_cityscapes(root: Path, split: str = "val", n_per_city: int = 2, cities: tuple[str, ...] = ("aachen", "bonn")) -> list[str]:
    """A Cityscapes tree: leftImg8bit PNG, gtFine instanceIds (16-bit) + labelIds + polygons per image."""
    ids_out = []
    rng = np.random.default_rng(0)
    for c, city in enumerate(cities):
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for k in range(n_per_city):
            stem = f"{city}_{c:06d}_{k:06d}"
            inst = scene(2 * c + k)
            label = np.where(inst >= 1000, inst // 1000, inst).astype(np.uint8)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(inst.astype(np.uint16)).save(root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png")
            Image.fromarray(label).save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")
            (root / "gtFine" / split / city / f"{stem}_gtFine_polygons.json").write_text(
                json.dumps({"imgHeight": H, "imgWidth": W, "objects": []}))
            ids_out.append(stem)
    return sorted(ids_out)


@pytest.fixture()
def cs_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    write_cityscapes(root)
    return root


def test_items_and_layout(cs_root: Path, tmp_path: Path) -> None:
    ds = CityscapesDataset(cs_root, cache=tmp_path / "cache")
    ds.check()
    items = ds.items()
    assert [it.id for it in items] == ["aachen_000000_000000", "aachen_000000_000001", "bonn_000001_000000",
                                       "bonn_000001_000001"]  # fmt: skip
    assert items[0].path == cs_root / "leftImg8bit/val/aachen/aachen_000000_000000_leftImg8bit.png"
    assert ds.load_image(items[0]).shape == (H, W, 3)
    assert ds.panoptic_image_id(items[0].id) == items[0].id


def test_panoptic_gt_made_by_cityscapesscripts_and_cached(cs_root: Path, tmp_path: Path) -> None:
    ds = CityscapesDataset(cs_root, cache=tmp_path / "cache")
    gt = ds.panoptic_gt()
    assert gt.evaluator == "cityscapes"
    assert len(gt.categories) == 19  # the evaluated classes, by label id
    assert {c["id"] for c in gt.categories if c["isthing"]} == {24, 25, 26, 27, 28, 31, 32, 33}
    ids, segs = gt.load("aachen_000000_000000")
    assert ids.shape == (H, W)
    by_id = {s["id"]: s for s in segs}
    assert by_id[CAR * 1000]["category_id"] == CAR and by_id[CAR * 1000]["iscrowd"] == 0
    assert by_id[PERSON]["iscrowd"] == 1  # a thing label without an instance id is a crowd region
    assert by_id[ROAD]["category_id"] == ROAD
    assert (ids[60:, :8] == 0).all()  # unlabeled stays void
    assert by_id[CAR * 1000 + 1]["area"] == int((ids == CAR * 1000 + 1).sum()) == 17 * 30
    # cached: a second dataset object finds the same folder and does not rebuild it
    folder = ds.panoptic_folder()
    stamp = (folder / ".complete").stat().st_mtime_ns
    ds2 = CityscapesDataset(cs_root, cache=tmp_path / "cache")
    assert ds2.panoptic_gt().json_file == gt.json_file
    assert (folder / ".complete").stat().st_mtime_ns == stamp
    # the key follows the annotations: touching one changes the folder
    f = cs_root / "gtFine/val/bonn/bonn_000001_000001_gtFine_instanceIds.png"
    Image.fromarray(scene(9).astype(np.uint16)).save(f)
    assert CityscapesDataset(cs_root, cache=tmp_path / "cache").panoptic_folder() != folder


def test_panoptic_png_matches_instance_ids(cs_root: Path, tmp_path: Path) -> None:
    ds = CityscapesDataset(cs_root, cache=tmp_path / "cache")
    gt = ds.panoptic_gt()
    ann = gt.annotations["bonn_000001_000000"]
    with Image.open(gt.png_folder / ann["file_name"]) as im:
        ids = rgb2id(np.asarray(im))
    inst = np.asarray(Image.open(cs_root / "gtFine/val/bonn/bonn_000001_000000_gtFine_instanceIds.png")).astype(np.int64)
    np.testing.assert_array_equal(ids, inst)  # label ids kept, every label here is evaluated or 0


def test_missing_paths_are_named(tmp_path: Path) -> None:
    root = tmp_path / "cs"
    write_cityscapes(root, n_per_city=1)
    (root / "gtFine/val/bonn/bonn_000001_000000_gtFine_instanceIds.png").unlink()
    with pytest.raises(DatasetLayoutError, match="bonn_000001_000000_gtFine_instanceIds.png"):
        CityscapesDataset(root).check()
    with pytest.raises(DatasetLayoutError, match=r"gtFine/test"):
        CityscapesDataset(root, split="test").check()
    empty = tmp_path / "empty"
    (empty / "leftImg8bit/val").mkdir(parents=True)
    (empty / "gtFine/val").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="_leftImg8bit.png"):
        CityscapesDataset(empty).check()
    with pytest.raises(DatasetLayoutError, match="no root folder"):
        CityscapesDataset(None).check()


def test_card_builds_with_root(cs_root: Path) -> None:
    card = CardSet().get("dataset", "cityscapes").with_settings(root=str(cs_root))
    ds = build(card)
    assert isinstance(ds, CityscapesDataset)
    assert len(ds.items(limit=3)) == 3
