"""YOLOv5 task: parity with the official val.py --batch-size 1 on coco-mini, batching invariance, output format.

The reference is val.py at batch size 1 because that is what the task defines (see vcmbench/tasks/yolov5.py):
at larger batch sizes val.py pads each image to a rectangle shared with its neighbours, and its mAP moves
with the batch size. The model is loaded once and coco-mini (79 images) is predicted once per session
(~1 min on 2 CPU cores).
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.adapters import build
from vcmbench.cards import load_card
from vcmbench.datasets.coco import CocoDataset
from vcmbench.errors import WeightsError
from vcmbench.metrics.coco_map import coco_bbox_eval

torch = pytest.importorskip("torch")
pytest.importorskip("yolov5")

from vcmbench.tasks.yolov5 import YOLOv5Task, rect_input_shape, resize_long_side  # noqa: E402

YOLOV5N_SHA256 = "4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3"
# official val.py of the yolov5 7.0.14 package, `--batch-size 1 --img 640 --conf-thres 0.001 --iou-thres 0.65
# --save-json` on coco-mini, CPU (its pycocotools figures, rescored over all 79 images: 0.317311 / 0.518834)
VALPY_B1_MAP, VALPY_B1_MAP50 = 0.3173, 0.5188
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def task(yolov5n_weights: Path) -> Iterator[YOLOv5Task]:
    if not yolov5n_weights.exists():
        pytest.fail(f"{yolov5n_weights} is missing from the shared folder")
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before conftest's per-test env
        mp.setenv("YOLO_OFFLINE", "1")  # (conftest's pytest_configure sets it too, with YOLO_CONFIG_DIR)
        t = YOLOv5Task(weights=str(yolov5n_weights), sha256=YOLOV5N_SHA256, device="cpu")
        t.load()
        yield t


@pytest.fixture(scope="session")
def dataset(coco_mini: Path) -> CocoDataset:
    ds = CocoDataset(coco_mini)
    ds.check()
    return ds


@pytest.fixture(scope="session")
def predictions(task: YOLOv5Task, dataset: CocoDataset) -> dict[str, Any]:
    items = dataset.items()
    out: dict[str, Any] = {}
    for i in range(0, len(items), task.batch_size):
        chunk = items[i : i + task.batch_size]
        for item, pred in zip(chunk, task.predict([dataset.load_image(it) for it in chunk]), strict=True):
            out[item.id] = pred
    return out


# -- (a) mAP parity ---------------------------------------------------------------------------------
def test_coco_mini_map_matches_valpy_batch_1(
    task: YOLOv5Task, dataset: CocoDataset, predictions: dict[str, Any]
) -> None:
    """Against val.py --batch-size 1 (the reference quoted above); measured here: 0.317309 / 0.518834."""
    assert len(predictions) == 79
    metrics = task.evaluate(predictions, dataset)
    assert set(task.metrics) <= set(metrics)
    assert metrics["map"] == pytest.approx(VALPY_B1_MAP, abs=0.001), metrics
    assert metrics["map50"] == pytest.approx(VALPY_B1_MAP50, abs=0.001), metrics


# -- (b) per-image agreement with val.py's own detections -----------------------------------------
def _iou_xywh(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _matched(ref: dict[str, Any], ours: list[dict[str, Any]], min_iou: float, max_dscore: float) -> bool:
    return any(
        d["category_id"] == ref["category_id"]
        and abs(d["score"] - ref["score"]) <= max_dscore
        and _iou_xywh(d["bbox"], ref["bbox"]) > min_iou
        for d in ours
    )


def _same(ref: dict[str, Any], ours: list[dict[str, Any]]) -> bool:
    return any(
        d["category_id"] == ref["category_id"]
        and abs(d["score"] - ref["score"]) <= 1e-4
        and max(abs(x - y) for x, y in zip(d["bbox"], ref["bbox"], strict=True)) <= 0.05
        for d in ours
    )


def test_per_image_agreement_with_valpy_reference(
    task: YOLOv5Task, dataset: CocoDataset, predictions: dict[str, Any], coco_mini: Path
) -> None:
    """The shared reference detections are val.py's with batched rect (a batch size above 1; its mAP 0.3158 /
    0.5185), not the batch-1 reference of the mAP test: a batch gives an image the input shape of its
    neighbours (sorted by aspect ratio), we give each image its own. Images whose two shapes coincide reproduce val.py to rounding;
    the others see a different letterbox (e.g. 448 vs 512 px high) and agree only approximately.

    Measured (CPU): top-10 of 41/79 images identical; top-1 of 75/79 images within IoU > 0.9 and
    |d score| <= 0.1; 724/790 (91.6 %) of the top-10 within IoU > 0.8 and |d score| <= 0.05.
    """
    ref_file = coco_mini / "reference" / "yolov5n_valpy_predictions.json"
    ref: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for d in json.loads(ref_file.read_text()):
        ref[d["image_id"]].append(d)
    ours: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for d in task.coco_detections(predictions, dataset):
        ours[d["image_id"]].append(d)
    assert set(ref) == {dataset.image_id(k) for k in predictions}

    identical = top1 = top10 = n10 = 0
    for image_id, dets in ref.items():
        best = sorted(dets, key=lambda d: -d["score"])[:10]
        mine = ours[image_id]
        identical += all(_same(d, mine) for d in best)
        top1 += _matched(best[0], mine, 0.9, 0.1)
        top10 += sum(_matched(d, mine, 0.8, 0.05) for d in best)
        n10 += len(best)
    n = len(ref)
    summary = f"identical top-10: {identical}/{n}, top-1: {top1}/{n}, top-10 dets: {top10}/{n10}"
    assert identical >= 38, summary
    assert top1 >= math.ceil(0.9 * n), summary
    assert top10 >= 0.88 * n10, summary


# -- (c) batching does not change results ---------------------------------------------------------
def test_batch_of_mixed_sizes_equals_images_alone(task: YOLOv5Task, dataset: CocoDataset) -> None:
    by_id = {it.id: it for it in dataset.items()}
    # 640x426, 640x480 (twice: one forward pass for both), 424x640, 612x612, and a 200x150 crop (upscaled)
    images = [dataset.load_image(by_id[i]) for i in ("139", "18575", "73326", "802", "165518")]
    images.append(np.ascontiguousarray(images[1][100:250, 200:400]))
    batched = task.predict(images)
    assert len(batched) == len(images)
    for image, together in zip(images, batched, strict=True):
        (alone,) = task.predict([image])
        assert len(together) == len(alone)
        if alone:
            a, b = np.array(alone), np.array(together)
            np.testing.assert_allclose(b[:, :4], a[:, :4], atol=1e-2)
            np.testing.assert_allclose(b[:, 4], a[:, 4], atol=1e-4)
            np.testing.assert_array_equal(b[:, 5], a[:, 5])


# -- output format and helpers --------------------------------------------------------------------
def test_prediction_format(predictions: dict[str, Any], dataset: CocoDataset) -> None:
    json.dumps(predictions)  # JSON-serialisable
    sizes = {it.id: (it.meta["height"], it.meta["width"]) for it in dataset.items()}
    for item_id, dets in predictions.items():
        assert len(dets) <= 300
        h, w = sizes[item_id]
        scores = [d[4] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for x1, y1, x2, y2, score, cls in dets:
            assert all(type(v) is float for v in (x1, y1, x2, y2, score))
            assert type(cls) is int and 0 <= cls < 80
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert 0.001 <= score <= 1


def test_version_is_keyed_by_weights(task: YOLOv5Task) -> None:
    assert YOLOV5N_SHA256 in task.version()
    assert task.weights_path().name == "yolov5n.pt"


def test_model_is_fused_float_eval(task: YOLOv5Task) -> None:
    model = task._model
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert type(model).__module__.startswith("yolov5.")


@pytest.mark.parametrize(
    ("hw", "expected"),
    [((480, 640), (512, 672)), ((426, 640), (448, 672)), ((640, 424), (672, 448)), ((612, 612), (672, 672))],
)
def test_rect_input_shape(hw: tuple[int, int], expected: tuple[int, int]) -> None:
    assert rect_input_shape(*hw, img_size=640) == expected


def test_resize_long_side() -> None:
    assert resize_long_side(np.zeros((480, 640, 3), np.uint8), 640).shape == (480, 640, 3)
    assert resize_long_side(np.zeros((612, 612, 3), np.uint8), 640).shape == (640, 640, 3)
    assert resize_long_side(np.zeros((333, 1000, 3), np.uint8), 640).shape == (214, 640, 3)  # sizes round up


def test_evaluate_empty_predictions_gives_zeros(task: YOLOv5Task, dataset: CocoDataset) -> None:
    metrics = task.evaluate({"139": [], "802": []}, dataset)
    assert metrics["map"] == 0.0 and metrics["map50"] == 0.0
    assert coco_bbox_eval(dataset.coco_gt(), [], [])["map"] == 0.0


def test_evaluate_scores_the_predicted_images_only(task: YOLOv5Task, dataset: CocoDataset) -> None:
    """Predictions for 3 of the 79 images (what ``--limit 3`` scores) are scored against those 3 images' ground
    truth only. Detections equal to the ground-truth boxes give mAP 1. With one image's detections left out,
    each category reaches recall found/annotated at precision 1, so its AP is the share of COCO's 101 recall
    thresholds (0, 0.01, ..., 1) up to that recall, and mAP their mean over the categories annotated."""
    gt = dataset.coco_gt()
    to_class = {cat: cls for cls, cat in task.category_map(dataset).items()}

    def annotations(item_id: str) -> list[dict]:
        return gt.loadAnns(gt.getAnnIds(imgIds=[int(item_id)], iscrowd=False))

    def perfect(item_id: str) -> list[list[float]]:
        return [[x, y, x + w, y + h, 1.0, to_class[a["category_id"]]]
                for a in annotations(item_id) for x, y, w, h in [a["bbox"]]]  # fmt: skip

    ids = ("139", "18575", "73326")
    assert all(0 < len(annotations(i)) <= 100 for i in ids)  # COCO's mAP counts at most 100 detections an image
    metrics = task.evaluate({i: perfect(i) for i in ids}, dataset)
    assert (metrics["map"], metrics["map50"]) == pytest.approx((1.0, 1.0), abs=1e-12)

    found = {i: perfect(i) for i in ids[:2]} | {ids[2]: []}
    annotated = collections.Counter(a["category_id"] for i in ids for a in annotations(i))
    hit = collections.Counter(a["category_id"] for i in ids[:2] for a in annotations(i))
    thresholds = np.linspace(0.0, 1.0, 101)
    ap = [float(np.mean(thresholds <= hit[c] / n)) for c, n in annotated.items()]
    assert len(ap) > 1 and 0 < np.mean(ap) < 1
    assert task.evaluate(found, dataset)["map"] == pytest.approx(float(np.mean(ap)), abs=1e-12)


def test_corrupt_checkpoint_is_a_weights_error(tmp_path: Path) -> None:
    bad = tmp_path / "yolov5n.pt"
    bad.write_bytes(b"not a checkpoint")
    t = YOLOv5Task(weights=str(bad), device="cpu")
    with pytest.raises(WeightsError, match=str(bad)):
        t.load()


def test_missing_weights_path_is_a_weights_error(tmp_path: Path) -> None:
    t = YOLOv5Task(weights=str(tmp_path / "absent.pt"), url="https://example.org/yolov5n.pt")
    with pytest.raises(WeightsError, match="absent.pt"):
        t.version()


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="class_map"):
        YOLOv5Task(class_map="coco91")
    with pytest.raises(ValueError, match="conf_thres"):
        YOLOv5Task(conf_thres=2.0)


def test_card(yolov5n_weights: Path) -> None:
    card = load_card(REPO / "tasks" / "yolov5.yaml", "task")
    assert card.adapter == "yolov5"
    assert card.settings["sha256"] == YOLOV5N_SHA256
    t = build(card)
    assert isinstance(t, YOLOv5Task) and t.name == "yolov5"
    assert t.img_size == 640 and t.conf_thres == 0.001 and t.iou_thres == 0.65 and t.max_det == 300
    # location settings stay out of the identity: same result key wherever the weights live
    moved = build(card.with_settings(weights=str(yolov5n_weights)))
    assert set(YOLOv5Task.location_settings) == {"weights", "url"}
    assert {k: v for k, v in moved.card_settings.items() if k not in ("weights", "url")} == {
        k: v for k, v in t.card_settings.items() if k not in ("weights", "url")
    }


def test_coco_bbox_eval_scores_ground_truth_as_perfect(dataset: CocoDataset) -> None:
    gt = dataset.coco_gt()
    ids = gt.getImgIds()[:20]
    dets = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt.loadAnns(gt.getAnnIds(imgIds=ids, iscrowd=False))
    ]
    metrics = coco_bbox_eval(gt, dets, ids)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0)
    assert set(metrics) == {"map", "map50", "map75", "map_small", "map_medium", "map_large", "ar100"}
    with pytest.raises(ValueError, match="absent from the ground truth"):
        coco_bbox_eval(gt, [dict(dets[0], image_id=-5)], ids)
