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
from pycocotools.cocoeval import COCOeval

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


# ---- detections as one array (the tasks' path) ------------------------------------------------------
def _dict_path(per_image: list[tuple[int, list[list[float]]]], cats: dict[int, int]) -> list[dict]:
    """The detection dicts the tasks built before the array path, written out as they were."""
    dets = []
    for image_id, rows in per_image:
        for x1, y1, x2, y2, score, cls in rows:
            if int(cls) not in cats:
                continue
            dets.append({"image_id": image_id, "category_id": cats[int(cls)], "score": round(score, 5),
                         "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]})  # fmt: skip
    return dets


def _as_rows(dets: list[dict]) -> np.ndarray:
    return np.array([[d["image_id"], *d["bbox"], d["score"], d["category_id"]] for d in dets], dtype=np.float64)


def test_round_like_python_is_pythons_round_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    # box corners and scores as the tasks store them (Python's round to 1e-4 px and 1e-6)
    stored = np.array([round(float(v), 4) for v in rng.uniform(-5, 700, 200_000)])
    scores = np.array([round(float(v), 6) for v in rng.uniform(0, 1, 50_000)])
    values = np.concatenate([
        stored, stored[1:] - stored[:-1], scores, rng.uniform(0, 1, 50_000),
        np.arange(-4000, 4000) / 2000, np.arange(0, 64) / 16,  # exact ties (x * 1000 is a half): to even
        [0.0, -0.0, 1e-9, 2.675, 1.0005, 123456.7895, 3e12, np.inf, -np.inf, np.nan],
    ])  # fmt: skip
    for ndigits in (3, 5):
        want = np.array([round(float(v), ndigits) for v in values])
        got = coco_map.round_like_python(values, ndigits)
        assert got.dtype == np.float64 and got.shape == values.shape
        assert np.array_equal(got.view(np.int64), want.view(np.int64)), ndigits  # same bits, nan and -0.0 too
        # numpy's own rounding differs on some of these: the fallback is needed
        assert not np.array_equal(np.round(values, ndigits), want, equal_nan=True)


@pytest.mark.skipif(not SHARED, reason="VCMBENCH_SHARED is not set: no coco-mini to score")
def test_array_results_score_exactly_like_dicts_on_real_detections() -> None:
    root = Path(SHARED) / "data" / "coco-mini"  # type: ignore[arg-type]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "annotations" / "instances_val2017.json"))
    ref_dets = json.loads((root / "reference" / "yolov5n_valpy_predictions.json").read_text())
    ids = sorted(gt.getImgIds())
    # the array of the reference detections scores exactly as each evaluator does on the dicts themselves
    for backend in BACKENDS:
        want = _stats(gt, ref_dets, ids, "bbox", backend)
        got = coco_bbox_eval(gt, _as_rows(ref_dets), ids, backend=backend)
        assert [got[k] for k in coco_map.BBOX_METRICS] == [want[i] for i in coco_map.BBOX_METRICS.values()], backend
    with contextlib.redirect_stdout(io.StringIO()):  # and as pycocotools itself, untouched by this module
        ev = COCOeval(gt, gt.loadRes(json.loads(json.dumps(ref_dets))), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    got = coco_bbox_eval(gt, _as_rows(ref_dets), ids, backend="pycocotools")
    assert [got[k] for k in coco_map.BBOX_METRICS] == [ev.stats[i] for i in coco_map.BBOX_METRICS.values()]
    # the tasks' rows ([x1, y1, x2, y2, score, class], stored to 1e-4 px and 1e-6) of these detections:
    # xyxy_results gives the dict path's numbers bit for bit, row for row
    cat_ids = sorted(gt.getCatIds())
    cats = {i: c for i, c in enumerate(cat_ids) if i != 7}  # one class maps to no category: left out
    per_image: dict[int, list[list[float]]] = {i: [] for i in ids}
    for d in ref_dets:
        x, y, w, h = d["bbox"]
        per_image[d["image_id"]].append([round(x, 4), round(y, 4), round(x + w + 1e-4 / 3, 4),
                                         round(y + h, 4), round(d["score"] + 3e-6, 6), cat_ids.index(d["category_id"])])  # fmt: skip
    pairs = list(per_image.items())
    dicts = _dict_path(pairs, cats)
    rows = coco_map.xyxy_results(pairs, cats)
    assert 1000 < len(dicts) < len(ref_dets)
    assert np.array_equal(rows, _as_rows(dicts))
    assert coco_bbox_eval(gt, rows, ids) == coco_bbox_eval(gt, dicts, ids)
    assert coco_bbox_eval(gt, rows, ids, backend="pycocotools") == coco_bbox_eval(gt, dicts, ids, backend="pycocotools")


def test_array_results_edge_cases_and_errors() -> None:
    gt, boxes, _, ids = _random_case(2)
    assert coco_map.xyxy_results([(1, []), (2, [])], {0: 1}).shape == (0, 7)
    assert coco_bbox_eval(gt, np.zeros((0, 7)), ids) == dict.fromkeys(coco_map.BBOX_METRICS, 0.0)
    with pytest.raises(ValueError, match=r"image 2: a detection must be \[x1, y1, x2, y2, score, class\], got \[1, 2\]"):
        coco_map.xyxy_results([(1, [[0, 0, 5, 5, 0.5, 0]]), (2, [[1, 2]])], {0: 1})
    with pytest.raises(ValueError, match=r"N x 7 .* got shape \(3, 6\)"):
        coco_bbox_eval(gt, np.zeros((3, 6)), ids)
    with pytest.raises(ValueError, match=r"image ids absent from the ground truth: \[99\]"):
        coco_bbox_eval(gt, np.array([[99, 0, 0, 5, 5, 0.5, 1]]), ids)
