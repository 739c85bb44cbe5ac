"""Behaviour tests for vcmbench.metrics.panoptic written against the mutation lane's survivors (issue 20).

Hand-computed PQ / SQ / RQ on small id maps where one matching rule decides the outcome (given ground-truth
areas, the "more than half on void" rule at exactly half, crowd regions of another category, images summed
before averaging, categories without ``isthing``), and the exact error messages a user sees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.metrics.panoptic import (
    PQ_METRICS,
    PanopticGroundTruth,
    PanopticSample,
    cityscapes_pq,
    decode_id_png,
    encode_id_png,
    evaluate_predictions,
    id2rgb,
    pq_compute,
    pq_stats,
    rgb2id,
    summarize,
)

CATS = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 10, "isthing": 0}]


def two_segments() -> tuple[np.ndarray, list[dict]]:
    """A 4x8 map: a class-1 thing on the left half (16 px), stuff 10 on the right half."""
    ids = np.zeros((4, 8), np.int64)
    ids[:, :4] = 1
    ids[:, 4:] = 10
    return ids, [{"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 10, "category_id": 10, "iscrowd": 0}]


def test_metric_names_and_counts() -> None:
    ids, segs = two_segments()
    m = pq_compute([PanopticSample("a", ids, segs, ids, segs)], CATS)
    assert set(PQ_METRICS) | {"n_all", "n_th", "n_st"} == set(m)
    assert (m["n_all"], m["n_th"], m["n_st"]) == (2.0, 1.0, 1.0)
    assert all(m[k] == 1.0 for k in PQ_METRICS)


def test_images_are_summed_before_averaging() -> None:
    """Image a: class 1 matched with IoU 12/16; image b: class 1 missed (FN). Summed: TP 1, FN 1, IoU 0.75:
    PQ 0.75 / 1.5 = 0.5, SQ 0.75, RQ 1 / 1.5; a per-image average would give (0.75 + 0) / 2 instead."""
    ids, segs = two_segments()
    pred_a = ids.copy()
    pred_a[:, 3] = 10  # 4 px of the thing given to the stuff
    pred_b = np.where(ids == 1, 0, ids)
    samples = [
        PanopticSample("a", ids, segs, pred_a, segs),
        PanopticSample("b", ids, segs, pred_b, segs[1:]),
    ]
    m = pq_compute(samples, {1: CATS[0], 10: CATS[2]})
    assert m["pq_th"] == pytest.approx(0.75 / 1.5, abs=1e-12)
    assert m["sq_th"] == pytest.approx(0.75, abs=1e-12)
    assert m["rq_th"] == pytest.approx(1 / 1.5, abs=1e-12)
    # stuff: image a IoU 16/20, image b IoU 1
    assert m["pq_st"] == pytest.approx((16 / 20 + 1) / 2, abs=1e-12)
    stat = pq_stats(samples[0])
    stat += pq_stats(samples[1])
    assert (stat.per_cat[1].tp, stat.per_cat[1].fn, stat.per_cat[1].fp) == (1, 1, 0)
    assert stat.per_cat[1].iou == pytest.approx(0.75) and stat.per_cat[10].tp == 2
    assert summarize(stat, {1: CATS[0], 10: CATS[2]}) == m


def test_given_ground_truth_areas_are_used_as_the_official_code_does() -> None:
    ids, segs = two_segments()
    pred = ids.copy()
    pred[:, 3] = 10  # IoU of the thing 12/16 with its pixel count as area
    given = [dict(s, area=24) for s in segs]  # area 24 in the JSON: IoU 12/(12 + 24 - 12) = 0.5, no match
    assert pq_compute([PanopticSample("a", ids, segs, pred, segs)], CATS)["pq_th"] == pytest.approx(0.75)
    m = pq_compute([PanopticSample("a", ids, given, pred, segs)], CATS)
    assert m["pq_th"] == 0.0 and m["rq_th"] == 0.0


def test_ground_truth_without_iscrowd_is_not_crowd() -> None:
    ids, segs = two_segments()
    plain = [{"id": s["id"], "category_id": s["category_id"]} for s in segs]
    m = pq_compute([PanopticSample("a", ids, plain, ids, plain)], CATS)
    assert m["pq"] == 1.0 and m["n_all"] == 2


def test_prediction_exactly_half_on_void_is_a_false_positive() -> None:
    ids, segs = two_segments()
    ids[:, 6:] = 0  # 8 void px
    segs = [segs[0], {"id": 10, "category_id": 10, "iscrowd": 0, "area": 8}]
    pred = ids.copy()
    pred[:, 4:] = 0
    pred[:, 5:7] = 5  # 8 px: 4 on void, 4 on stuff 10 -> exactly half on void: counted
    pred_segs = [{"id": 1, "category_id": 1}, {"id": 5, "category_id": 2}]
    m = pq_compute([PanopticSample("a", ids, segs, pred, pred_segs)], CATS)
    # class 1 TP; class 2 one FP -> 0; stuff 10 one FN -> 0
    assert m["n_th"] == 2 and m["pq_th"] == pytest.approx(0.5)
    pred[:, 5] = 0
    pred[:, 7] = 5  # 8 px: 6 on void -> more than half: ignored
    pred[0, 7] = 0
    pred[0, 5] = 5
    m = pq_compute([PanopticSample("a", ids, segs, pred, pred_segs)], CATS)
    assert m["n_th"] == 1 and m["pq_th"] == 1.0


def test_crowd_of_another_category_does_not_excuse_a_prediction() -> None:
    ids = np.zeros((4, 8), np.int64)
    ids[:, :4] = 50  # a crowd of class 1
    ids[:, 4:] = 10
    segs = [{"id": 50, "category_id": 1, "iscrowd": 1}, {"id": 10, "category_id": 10, "iscrowd": 0}]
    pred = ids.copy()
    pred[ids == 50] = 7
    own = pq_compute([PanopticSample("a", ids, segs, pred, [{"id": 7, "category_id": 1}, segs[1]])], CATS)
    assert own["n_th"] == 0 and math.isnan(own["pq_th"]) and own["pq"] == 1.0
    other = pq_compute([PanopticSample("a", ids, segs, pred, [{"id": 7, "category_id": 2}, segs[1]])], CATS)
    assert other["n_th"] == 1 and other["pq_th"] == 0.0 and other["pq"] == 0.5


def test_categories_without_isthing_are_stuff_and_keys_may_be_text() -> None:
    ids, segs = two_segments()
    cats = {"1": {"id": 1, "isthing": 1}, "10": {"id": 10}}
    m = pq_compute([PanopticSample("a", ids, segs, ids, segs)], cats)
    assert (m["n_th"], m["n_st"]) == (1.0, 1.0)


def test_sq_of_a_category_without_matches_is_zero() -> None:
    ids, segs = two_segments()
    pred = np.where(ids == 1, 0, ids)
    m = pq_compute([PanopticSample("a", ids, segs, pred, segs[1:])], CATS)
    assert (m["pq"], m["sq"], m["rq"]) == (0.5, 0.5, 0.5)


def test_error_messages_name_the_image_and_the_fix() -> None:
    ids, segs = two_segments()
    with pytest.raises(ValueError, match=r"^image 7: prediction is 4x2, ground truth 8x4$"):
        pq_stats(PanopticSample(7, ids, segs, ids[:2, :4], segs))
    with pytest.raises(ValueError, match=r"^image 7: segment id 0 is reserved for void$"):
        pq_stats(PanopticSample(7, ids, segs, ids, [*segs, {"id": 0, "category_id": 1}]))
    with pytest.raises(KeyError, match=r"image 7: segment 10 is in the id map but not in segments_info"):
        pq_stats(PanopticSample(7, ids, segs, ids, segs[:1]))
    with pytest.raises(KeyError, match=r"image 7: segment 1 has unknown category_id 1"):
        pq_stats(PanopticSample(7, ids, segs, ids, segs), {10: CATS[2]})
    with pytest.raises(
        KeyError, match=r"image 7: segments \[3, 4\] are in segments_info but not in the id map"
    ):
        pq_stats(
            PanopticSample(
                7, ids, segs, ids, [*segs, {"id": 4, "category_id": 1}, {"id": 3, "category_id": 1}]
            )
        )


def test_id_png_limits() -> None:
    ids = np.array([[0, 255, 256, 256**3 - 1]])
    assert id2rgb(ids).tolist() == [[[0, 0, 0], [255, 0, 0], [0, 1, 0], [255, 255, 255]]]
    assert rgb2id(id2rgb(ids)).tolist() == ids.tolist() and rgb2id(id2rgb(ids)).dtype == np.int64
    with pytest.raises(ValueError, match=r"segment ids must lie in \[0, 2\^24\), got \[-1, 3\]"):
        id2rgb(np.array([[-1, 3]]))
    with pytest.raises(ValueError, match=r"got \[0, 16777216\]"):
        id2rgb(np.array([[0, 256**3]]))
    assert id2rgb(np.zeros((0, 3), np.int64)).shape == (0, 3, 3)
    text = encode_id_png(ids)
    assert text.isascii() and decode_id_png(text).tolist() == ids.tolist()


def write_coco_panoptic(root: Path, evaluator: str = "coco") -> PanopticGroundTruth:
    ids, segs = two_segments()
    (root / "png").mkdir(parents=True)
    Image.fromarray(id2rgb(ids)).save(root / "png" / "a.png")
    data = {
        "images": [{"id": "a", "file_name": "a.jpg"}],
        "annotations": [{"image_id": "a", "file_name": "a.png", "segments_info": segs}],
        "categories": [CATS[2], CATS[0], CATS[1]],
    }
    (root / "gt.json").write_text(json.dumps(data))
    return PanopticGroundTruth(root / "gt.json", root / "png", evaluator)


def test_ground_truth_files(tmp_path: Path) -> None:
    gt = write_coco_panoptic(tmp_path)
    assert [c["id"] for c in gt.categories] == [1, 2, 10]
    assert gt.images == {"a": {"id": "a", "file_name": "a.jpg"}} and gt.evaluator == "coco"
    ids, segs = gt.load("a")
    assert ids.tolist() == two_segments()[0].tolist() and segs == two_segments()[1]
    with pytest.raises(KeyError, match=r"gt.json: no panoptic annotation for image 'b'"):
        gt.load("b")
    with pytest.raises(ValueError, match=r"evaluator must be 'coco' or 'cityscapes', got 'ade'"):
        PanopticGroundTruth(tmp_path / "gt.json", tmp_path / "png", "ade")


def test_evaluate_predictions_with_the_coco_scorer(tmp_path: Path) -> None:
    gt = write_coco_panoptic(tmp_path)
    ids, segs = two_segments()
    pred = ids.copy()
    pred[:, 3] = 10
    m = evaluate_predictions({"a": {"png": encode_id_png(pred), "segments_info": segs}}, gt)
    assert m["pq_th"] == pytest.approx(0.75) and m["pq_st"] == pytest.approx(16 / 20)
    assert m["n_all"] == 2.0  # category 2 has nothing: left out


def test_cityscapes_scorer_inputs_and_empty_groups(tmp_path: Path) -> None:
    gt = write_coco_panoptic(tmp_path, "cityscapes")
    ids, segs = two_segments()
    with pytest.raises(ValueError, match="^no predictions to evaluate$"):
        cityscapes_pq({}, gt)
    with pytest.raises(KeyError, match=r"gt.json: no panoptic annotation for image 'b'"):
        cityscapes_pq({"b": {"png": encode_id_png(ids), "segments_info": segs}}, gt)
    stuff_only = np.where(ids == 1, 0, ids)
    gt_only_stuff = [{"id": 10, "category_id": 10, "iscrowd": 0, "area": 16}]  # the official code reads areas
    data = json.loads((tmp_path / "gt.json").read_text())
    data["annotations"][0]["segments_info"] = gt_only_stuff
    (tmp_path / "gt.json").write_text(json.dumps(data))
    Image.fromarray(id2rgb(stuff_only)).save(tmp_path / "png" / "a.png")
    gt = PanopticGroundTruth(tmp_path / "gt.json", tmp_path / "png", "cityscapes")
    m = evaluate_predictions({"a": {"png": encode_id_png(stuff_only), "segments_info": gt_only_stuff}}, gt)
    assert m["pq_st"] == 1.0 and m["n_st"] == 1.0 and m["pq"] == 1.0
    assert math.isnan(m["pq_th"]) and math.isnan(m["sq_th"]) and math.isnan(m["rq_th"]) and m["n_th"] == 0.0


def test_unmatched_ground_truth_without_iscrowd_is_a_false_negative() -> None:
    ids, segs = two_segments()
    plain = [{"id": s["id"], "category_id": s["category_id"]} for s in segs]
    pred = np.where(ids == 1, 0, ids)
    m = pq_compute([PanopticSample("a", ids, plain, pred, plain[1:])], CATS)
    assert m["n_th"] == 1 and m["pq_th"] == 0.0


def test_one_pixel_false_positive_off_void_counts() -> None:
    ids, segs = two_segments()
    pred = ids.copy()
    pred[0, 0] = 5  # one pixel of class 2 inside the class-1 thing: no void under it
    m = pq_compute([PanopticSample("a", ids, segs, pred, [*segs, {"id": 5, "category_id": 2}])], CATS)
    assert m["n_th"] == 2 and m["rq_th"] == pytest.approx((1 + 0) / 2)


def test_void_and_own_crowd_pixels_add_up() -> None:
    """A class-1 prediction of 8 px: 3 on void, 2 on a class-1 crowd, 3 on stuff. Ignored pixels 5/8 > 1/2: no
    false positive. Without the crowd part (3/8) it would be one."""
    ids = np.zeros((4, 8), np.int64)
    ids[:, 4:] = 10
    ids[:2, :4] = 50  # crowd of class 1
    segs = [{"id": 50, "category_id": 1, "iscrowd": 1}, {"id": 10, "category_id": 10, "iscrowd": 0}]
    pred = ids.copy()
    pred[ids == 50] = 0
    pred[2, 1:4] = 7  # void
    pred[1, 2:4] = 7  # crowd
    pred[2:3, 4:7] = 7  # stuff
    assert int((pred == 7).sum()) == 8
    m = pq_compute([PanopticSample("a", ids, segs, pred, [{"id": 7, "category_id": 1}, segs[1]])], CATS)
    assert m["n_th"] == 0


def test_half_on_void_beside_an_untouched_crowd_is_a_false_positive() -> None:
    ids = np.zeros((4, 8), np.int64)
    ids[:, 4:] = 10
    ids[:2, :2] = 50  # crowd of class 1, not touched by the prediction
    segs = [{"id": 50, "category_id": 1, "iscrowd": 1}, {"id": 10, "category_id": 10, "iscrowd": 0}]
    pred = np.where(ids == 50, 0, ids)
    pred[3, 0:4] = 7  # void
    pred[3, 4:8] = 7  # stuff
    m = pq_compute([PanopticSample("a", ids, segs, pred, [{"id": 7, "category_id": 1}, segs[1]])], CATS)
    assert m["n_th"] == 1 and m["pq_th"] == 0.0


def test_coco_ground_truth_defaults(tmp_path: Path) -> None:
    gt = write_coco_panoptic(tmp_path)
    data = json.loads((tmp_path / "gt.json").read_text())
    assert gt.data == data
    del data["images"]
    (tmp_path / "bare.json").write_text(json.dumps(data))
    bare = PanopticGroundTruth(tmp_path / "bare.json", tmp_path / "png")
    assert bare.evaluator == "coco" and bare.images == {}
    ids, segs = two_segments()
    with pytest.raises(ValueError, match=r"^image a: prediction is 4x2, ground truth 8x4$"):
        evaluate_predictions({"a": {"png": encode_id_png(ids[:2, :4]), "segments_info": segs}}, bare)
