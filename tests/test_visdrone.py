"""VisDrone2019-DET loader on a tiny fixture in the official layout; ignored regions; COCO box mAP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.datasets.visdrone import CATEGORIES, VisDroneDataset, parse_annotation_file
from vcmbench.errors import DatasetLayoutError
from vcmbench.metrics.coco_map import coco_bbox_eval

SPLIT = "VisDrone2019-DET-val"
# image stem -> annotation lines (x,y,w,h,score,category,truncation,occlusion)
FIXTURE = {
    "0000001_02999_d_0000005": [
        "10,20,30,40,1,4,0,0",  # car
        "100,50,20,60,1,1,0,1",  # pedestrian
        "150,10,40,40,0,0,0,0",  # ignored region
        "60,120,30,20,1,11,0,0",  # others: excluded
        "",
    ],
    "0000002_00005_d_0000014": [
        "5,5,50,30,1,9,1,2,",  # bus (trailing comma, as in some official files)
        "80,80,25,25,1,10,0,0",  # motor
    ],
}


def write_visdrone(root: Path) -> Path:
    for sub in ("images", "annotations"):
        (root / SPLIT / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for stem, lines in FIXTURE.items():
        Image.fromarray(rng.integers(0, 256, (160, 240, 3), dtype=np.uint8)).save(root / SPLIT / "images" / f"{stem}.jpg")
        (root / SPLIT / "annotations" / f"{stem}.txt").write_text("\n".join(lines))
    return root


@pytest.fixture()
def ds(tmp_path: Path) -> VisDroneDataset:
    d = VisDroneDataset(write_visdrone(tmp_path / "visdrone"))
    d.check()
    return d


def test_items_and_ids(ds: VisDroneDataset) -> None:
    items = ds.items()
    assert [it.id for it in items] == sorted(FIXTURE)
    assert [ds.image_id(it.id) for it in items] == [1, 2]
    assert ds.load_image(items[0]).shape == (160, 240, 3)


def test_coco_ground_truth(ds: VisDroneDataset) -> None:
    gt = ds.coco_gt()
    assert [c["id"] for c in gt.dataset["categories"]] == list(range(1, 11))
    assert gt.imgs[1]["width"] == 240 and gt.imgs[1]["height"] == 160
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[1]))
    normal = [a for a in anns if not a["iscrowd"]]
    crowd = [a for a in anns if a["iscrowd"]]
    assert sorted((a["category_id"], tuple(a["bbox"])) for a in normal) == [(1, (100, 50, 20, 60)), (4, (10, 20, 30, 40))]
    # the ignored region is a crowd region of every evaluated class; "others" is gone
    assert sorted(a["category_id"] for a in crowd) == [c for c, _ in CATEGORIES]
    assert all(a["bbox"] == [150, 10, 40, 40] for a in crowd)
    assert not any(a["bbox"] == [60, 120, 30, 20] for a in anns)
    anns2 = gt.loadAnns(gt.getAnnIds(imgIds=[2]))
    assert sorted(a["category_id"] for a in anns2) == [9, 10]


def _dets_from_gt(ds: VisDroneDataset) -> list[dict]:
    gt = ds.coco_gt()
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt.dataset["annotations"] if not a["iscrowd"]]  # fmt: skip


def test_perfect_detections_and_ignored_regions(ds: VisDroneDataset) -> None:
    gt = ds.coco_gt()
    dets = _dets_from_gt(ds)
    assert coco_bbox_eval(gt, dets, [1, 2])["map"] == pytest.approx(1.0)
    # a confident detection inside the ignored region costs nothing, whatever its class...
    inside = [{"image_id": 1, "category_id": 4, "bbox": [152, 12, 30, 30], "score": 0.99},
              {"image_id": 1, "category_id": 7, "bbox": [155, 15, 20, 20], "score": 0.99}]  # fmt: skip
    assert coco_bbox_eval(gt, dets + inside, [1, 2])["map"] == pytest.approx(1.0)
    # ...but the same detection elsewhere is a false positive that lowers AP
    outside = [dict(d, bbox=[180, 100, 30, 30]) for d in inside]
    assert coco_bbox_eval(gt, dets + outside, [1, 2])["map"] < 0.95
    # and one on the excluded "others" box is a false positive too
    on_others = [{"image_id": 1, "category_id": 4, "bbox": [60, 120, 30, 20], "score": 0.99}]
    assert coco_bbox_eval(gt, dets + on_others, [1, 2])["map"] < 1.0


def test_layout_errors_name_the_missing_path(tmp_path: Path) -> None:
    root = write_visdrone(tmp_path / "v")
    (root / SPLIT / "annotations" / "0000002_00005_d_0000014.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="0000002_00005_d_0000014.txt"):
        VisDroneDataset(root).check()
    with pytest.raises(DatasetLayoutError, match="VisDrone2019-DET-test-dev"):
        VisDroneDataset(root, split="VisDrone2019-DET-test-dev").check()
    with pytest.raises(DatasetLayoutError, match="no root folder"):
        VisDroneDataset(None).check()
    bad = write_visdrone(tmp_path / "bad")
    (bad / SPLIT / "annotations" / "0000001_02999_d_0000005.txt").write_text("1,2,3\n")
    ds = VisDroneDataset(bad)
    with pytest.raises(DatasetLayoutError, match=r"0000001_02999_d_0000005.txt:1: expected"):
        ds.coco_gt()


def test_parse_annotation_file(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("684,8,273,116,0,0,0,0\n406,119,265,70,1,5,0,0,\n\n")
    assert parse_annotation_file(f) == [(684, 8, 273, 116, 0, 0, 0, 0), (406, 119, 265, 70, 1, 5, 0, 0)]
    f.write_text("1,2,3,4,1,12,0,0\n")
    with pytest.raises(DatasetLayoutError, match="category 12"):
        parse_annotation_file(f)


def test_card(tmp_path: Path) -> None:
    root = write_visdrone(tmp_path / "v")
    ds = build(CardSet().get("dataset", "visdrone").with_settings(root=str(root)))
    assert isinstance(ds, VisDroneDataset)
    assert len(ds.items()) == 2
