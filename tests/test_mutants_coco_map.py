"""vcmbench.metrics.coco_map's checks and plumbing (the mutation lane's tests for coco_map.py): backend choice,
the empty cases, the refusal of unknown image ids, the metric names and the mask encoding."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vcmbench.metrics.coco_map import (
    BACKENDS,
    BBOX_METRICS,
    DEFAULT_BACKEND,
    SEGM_METRICS,
    coco_bbox_eval,
    coco_segm_eval,
    encode_masks,
    resolve_backend,
)


def _gt(with_masks: bool = True) -> COCO:
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    anns = []
    for n, img in enumerate((1, 2, 3)):
        ann = {"id": n + 1, "image_id": img, "category_id": 1, "bbox": [8.0, 8.0, 40.0, 40.0], "area": 1600.0, "iscrowd": 0}
        if with_masks:
            ann["segmentation"] = [[8, 8, 48, 8, 48, 48, 8, 48]]
        anns.append(ann)
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    coco.createIndex()
    return coco


def test_backend_names_and_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BACKENDS == ("faster_coco_eval", "pycocotools") and DEFAULT_BACKEND == "faster_coco_eval"
    monkeypatch.delenv("VCMBENCH_COCO_EVAL", raising=False)
    assert resolve_backend() == "faster_coco_eval"
    assert resolve_backend("pycocotools") == "pycocotools"
    monkeypatch.setenv("VCMBENCH_COCO_EVAL", "pycocotools")
    assert resolve_backend() == "pycocotools"
    assert resolve_backend("faster_coco_eval") == "faster_coco_eval"  # the argument wins over the environment
    with pytest.raises(ValueError, match=r"unknown COCO evaluation backend 'nope' \(from \$VCMBENCH_COCO_EVAL\)"):
        monkeypatch.setenv("VCMBENCH_COCO_EVAL", "nope")
        resolve_backend()
    with pytest.raises(ValueError, match=r"'bad' \(from backend\); choose one of faster_coco_eval, pycocotools"):
        resolve_backend("bad")


def test_metric_names_and_indices() -> None:
    assert BBOX_METRICS == {"map": 0, "map50": 1, "map75": 2, "map_small": 3, "map_medium": 4, "map_large": 5, "ar100": 8}
    assert SEGM_METRICS == {f"segm_{k}": v for k, v in BBOX_METRICS.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_or_ids_score_zero(backend: str) -> None:
    gt = _gt()
    det = [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.9}]
    assert coco_bbox_eval(gt, [], [1], backend=backend) == dict.fromkeys(BBOX_METRICS, 0.0)
    assert coco_bbox_eval(gt, det, [], backend=backend) == dict.fromkeys(BBOX_METRICS, 0.0)
    assert coco_segm_eval(gt, [], [1], backend=backend) == dict.fromkeys(SEGM_METRICS, 0.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_perfect_detection_on_the_scored_images_only(backend: str) -> None:
    gt = _gt()
    det = [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.9}]
    got = coco_bbox_eval(gt, det, [1, 1.0], backend=backend)  # ids are deduplicated as ints
    assert got["map"] == pytest.approx(1.0) and got["ar100"] == pytest.approx(1.0)
    assert got["map_small"] == -1.0 and got["map_medium"] == pytest.approx(1.0) and got["map_large"] == -1.0
    half = coco_bbox_eval(gt, det, [1, 2], backend=backend)  # image 2's object is missed
    assert half["ar100"] == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unknown_and_missing_image_ids_are_refused(backend: str) -> None:
    gt = _gt()
    dets = [{"image_id": i, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.5} for i in range(100, 112)]
    with pytest.raises(ValueError, match=r"absent from the ground truth: \[100, 101, .*109\] and 2 more"):
        coco_bbox_eval(gt, dets, [1], backend=backend)
    with pytest.raises(ValueError, match=r"absent from the ground truth: \[100\]$"):
        coco_bbox_eval(gt, dets[:1], [1], backend=backend)
    ok = [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.5}]
    with pytest.raises(ValueError, match=r"img_ids absent from the ground truth: \[7\]"):
        coco_bbox_eval(gt, ok, [1, 7], backend=backend)
    seg = [{"image_id": 9, "category_id": 1, "segmentation": encode_masks(np.ones((1, 64, 64), bool))[0], "score": 1}]
    with pytest.raises(ValueError, match=r"detections name image ids absent from the ground truth: \[9\]"):
        coco_segm_eval(gt, seg, [1], backend=backend)
    seg[0]["image_id"] = 1
    with pytest.raises(ValueError, match=r"img_ids absent from the ground truth: \[8\]"):
        coco_segm_eval(gt, seg, [1, 8], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_segm_uses_the_mask_not_a_box(backend: str) -> None:
    gt = _gt()
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 8:48, 8:48] = True  # area 1600: a medium object (32² < area < 96²)
    det = {"image_id": 1, "category_id": 1, "segmentation": encode_masks(mask)[0], "score": 0.9,
           "bbox": [0, 0, 2, 2]}  # fmt: skip  a wrong box, dropped
    got = coco_segm_eval(gt, [det], [1], backend=backend)
    assert set(got) == set(SEGM_METRICS)
    assert got["segm_map"] > 0.9 and got["segm_map_medium"] > 0.9 and got["segm_map_small"] == -1.0
    with pytest.raises(ValueError, match="no instance masks"):
        coco_segm_eval(_gt(with_masks=False), [det], [1], backend=backend)


def test_encode_masks_round_trips() -> None:
    assert encode_masks(np.zeros((0, 4, 5), bool)) == []
    masks = np.zeros((2, 4, 5), bool)
    masks[0, 1:3, 2:4] = True
    masks[1, 0, 0] = True
    rles = encode_masks(masks)
    assert [r["size"] for r in rles] == [[4, 5], [4, 5]]
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(np.moveaxis(decoded, -1, 0).astype(bool), masks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_at_most_ten_ids_are_listed(backend: str) -> None:
    gt = _gt()

    def dets(n: int) -> list[dict]:
        return [{"image_id": i, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.5} for i in range(100, 100 + n)]

    with pytest.raises(ValueError, match=r"\[100, 101, 102, 103, 104, 105, 106, 107, 108, 109\]$"):
        coco_bbox_eval(gt, dets(10), [1], backend=backend)
    with pytest.raises(ValueError, match=r"109\] and 1 more$"):
        coco_bbox_eval(gt, dets(11), [1], backend=backend)
    with pytest.raises(ValueError, match=r"img_ids absent from the ground truth: \[20, 21, 22, 23, 24, 25, 26, 27, 28, 29\]$"):
        coco_bbox_eval(gt, [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.5}],
                       [1, *range(20, 32)], backend=backend)  # fmt: skip
    seg = encode_masks(np.ones((1, 64, 64), bool))[0]
    many = [{"image_id": i, "category_id": 1, "segmentation": seg, "score": 1.0} for i in range(100, 112)]
    with pytest.raises(ValueError, match=r"\[100, 101, 102, 103, 104, 105, 106, 107, 108, 109\]$"):
        coco_segm_eval(gt, many, [1], backend=backend)
    with pytest.raises(ValueError, match=r"img_ids absent from the ground truth: \[20, 21, 22, 23, 24, 25, 26, 27, 28, 29\]$"):
        coco_segm_eval(gt, [{**many[0], "image_id": 1}], [1, *range(20, 32)], backend=backend)
    with pytest.raises(ValueError, match=r"^the ground truth has no instance masks \('segmentation'\); mask mAP cannot be computed$"):
        coco_segm_eval(_gt(with_masks=False), [{**many[0], "image_id": 1}], [1], backend=backend)


def test_an_unknown_backend_is_refused_by_both_evaluators() -> None:
    gt = _gt()
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'bad'"):
        coco_bbox_eval(gt, [], [1], backend="bad")
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'bad'"):
        coco_segm_eval(gt, [], [1], backend="bad")


@pytest.mark.parametrize("backend", BACKENDS)
def test_quiet_unless_verbose(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    gt = _gt()
    det = [{"image_id": 1, "category_id": 1, "bbox": [8, 8, 40, 40], "score": 0.9}]
    seg = [{"image_id": 1, "category_id": 1, "segmentation": encode_masks(np.ones((1, 64, 64), bool))[0], "score": 1.0}]
    capsys.readouterr()
    coco_bbox_eval(gt, det, [1], backend=backend)
    coco_segm_eval(gt, seg, [1], backend=backend)
    assert "Average Precision" not in capsys.readouterr().out
    coco_bbox_eval(gt, det, [1], verbose=True, backend=backend)
    assert "Average Precision" in capsys.readouterr().out
    coco_segm_eval(gt, seg, [1], verbose=True, backend=backend)
    assert "Average Precision" in capsys.readouterr().out
