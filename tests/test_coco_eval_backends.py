"""The two COCO mAP backends (faster-coco-eval's C++ evaluator and pycocotools) give the same numbers."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vcmbench.metrics import coco_map
from vcmbench.metrics.coco_map import BACKENDS, coco_bbox_eval, coco_segm_eval, resolve_backend

SHARED = os.environ.get("VCMBENCH_SHARED")


def _stats(gt: COCO, dets: list[dict], ids: list[int], iou_type: str, backend: str) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        ev = coco_map._run(gt, [dict(d) for d in dets], ids, iou_type, backend, False)
    return np.asarray(ev.stats[:12], dtype=float)


def _coco(dataset: dict) -> COCO:
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


@pytest.mark.skipif(not SHARED, reason="VCMBENCH_SHARED is not set: no coco-mini to score")
def test_backends_agree_on_official_yolov5_detections_of_coco_images() -> None:
    root = Path(SHARED) / "data" / "coco-mini"  # type: ignore[arg-type]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    dets = json.loads((root / "reference" / "yolov5n_valpy_predictions.json").read_text())
    ids = sorted(gt.getImgIds())
    ref = _stats(gt, dets, ids, "bbox", "pycocotools")
    fast = _stats(gt, dets, ids, "bbox", "faster_coco_eval")
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12)
    assert ref[0] == pytest.approx(0.316, abs=0.01) and ref[1] == pytest.approx(0.518, abs=0.01)
    # the public function, on a subset of the images, both ways
    some = ids[::3]
    a = coco_bbox_eval(gt, [d for d in dets if d["image_id"] in set(some)], some, backend="pycocotools")
    b = coco_bbox_eval(gt, [d for d in dets if d["image_id"] in set(some)], some, backend="faster_coco_eval")
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-12), k


def _random_case(seed: int) -> tuple[COCO, list[dict], list[dict], list[int]]:
    """Ground truth of all sizes with crowd regions, and detections near it, far from it, with tied scores."""
    rng = np.random.default_rng(seed)
    w, h = 400, 300
    images, anns, boxes, masks = [], [], [], []
    aid = 1
    for img_id in range(1, 9):
        images.append({"id": img_id, "width": w, "height": h, "file_name": f"{img_id}.png"})
        for _ in range(int(rng.integers(0, 7))):
            bw, bh = (int(v) for v in rng.integers(4, 220, size=2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            m = np.zeros((h, w), np.uint8, order="F")
            m[y : y + bh, x : x + bw] = 1
            crowd = int(rng.random() < 0.15 or aid == 1)  # at least one crowd region
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": aid, "image_id": img_id, "category_id": int(rng.integers(1, 4)), "iscrowd": crowd,
                         "bbox": [x, y, bw, bh], "area": float(bw * bh), "segmentation": rle})  # fmt: skip
            aid += 1
            for _ in range(int(rng.integers(0, 3))):  # detections near this object, sometimes the wrong class
                dx, dy = (int(v) for v in rng.integers(-bw // 4 - 1, bw // 4 + 2, size=2))
                bx, by = max(0, x + dx), max(0, y + dy)
                bw2, bh2 = max(2, min(w - bx, bw + dx)), max(2, min(h - by, bh + dy))
                score = round(float(rng.random()), 2)  # two decimals: ties happen
                cat = anns[-1]["category_id"] if rng.random() < 0.8 else int(rng.integers(1, 4))
                boxes.append({"image_id": img_id, "category_id": cat, "bbox": [bx, by, bw2, bh2], "score": score})
                dm = np.zeros((h, w), np.uint8, order="F")
                dm[by : by + bh2, bx : bx + bw2] = 1
                drle = mask_utils.encode(dm)
                drle["counts"] = drle["counts"].decode()
                masks.append({"image_id": img_id, "category_id": cat, "segmentation": drle, "score": score})
        for _ in range(int(rng.integers(0, 5))):  # false positives anywhere
            bw, bh = (int(v) for v in rng.integers(3, 150, size=2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            score = round(float(rng.random()), 2)
            boxes.append({"image_id": img_id, "category_id": int(rng.integers(1, 4)), "bbox": [x, y, bw, bh], "score": score})
            dm = np.zeros((h, w), np.uint8, order="F")
            dm[y : y + bh, x : x + bw] = 1
            drle = mask_utils.encode(dm)
            drle["counts"] = drle["counts"].decode()
            masks.append({"image_id": img_id, "category_id": boxes[-1]["category_id"], "segmentation": drle, "score": score})
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    return _coco({"images": images, "annotations": anns, "categories": cats}), boxes, masks, [im["id"] for im in images]


@pytest.mark.parametrize("seed", range(6))
def test_backends_agree_on_random_boxes_and_masks_with_crowd_regions(seed: int) -> None:
    gt, boxes, masks, ids = _random_case(seed)
    assert any(a["iscrowd"] for a in gt.dataset["annotations"])
    for iou_type, dets in (("bbox", boxes), ("segm", masks)):
        ref = _stats(gt, dets, ids, iou_type, "pycocotools")
        fast = _stats(gt, dets, ids, iou_type, "faster_coco_eval")
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-12, err_msg=f"{iou_type}, seed {seed}")
        assert 0.0 < ref[0] < 1.0  # a case with something to get wrong
    a, b = (coco_segm_eval(gt, masks, ids, backend=n) for n in BACKENDS)
    assert a == pytest.approx(b, abs=1e-12)


def test_the_fast_backend_leaves_the_datasets_ground_truth_as_it_was() -> None:
    gt, boxes, _, ids = _random_case(1)
    before = json.dumps(gt.dataset, sort_keys=True)
    coco_bbox_eval(gt, boxes, ids, backend="faster_coco_eval")
    coco_bbox_eval(gt, boxes, ids, backend="faster_coco_eval")  # its cached ground truth, again
    assert json.dumps(gt.dataset, sort_keys=True) == before


def test_backend_choice_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(coco_map.BACKEND_ENV, raising=False)
    assert resolve_backend() == coco_map.DEFAULT_BACKEND == "faster_coco_eval"
    monkeypatch.setenv(coco_map.BACKEND_ENV, "pycocotools")
    assert resolve_backend() == "pycocotools"
    assert resolve_backend("faster_coco_eval") == "faster_coco_eval"  # an explicit choice wins
    monkeypatch.setenv(coco_map.BACKEND_ENV, "detectron2")
    with pytest.raises(ValueError, match=r"'detectron2' \(from \$VCMBENCH_COCO_EVAL\).*faster_coco_eval, pycocotools"):
        resolve_backend()
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'fast'"):
        coco_bbox_eval(_random_case(0)[0], [], [1], backend="fast")
