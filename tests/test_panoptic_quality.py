"""PQ / SQ / RQ: hand-made cases, and equality with cityscapesscripts' own evaluator on the same predictions."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_cityscapes import CAR, PERSON, ROAD, write_cityscapes
from vcmbench.datasets.cityscapes import CityscapesDataset
from vcmbench.metrics.panoptic import (
    PanopticGroundTruth,
    PanopticSample,
    cityscapes_pq,
    decode_id_png,
    encode_id_png,
    evaluate_predictions,
    id2rgb,
    pq_compute,
    rgb2id,
)

# categories: 1 and 2 things, 10 and 11 stuff
CATS = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 10, "isthing": 0}, {"id": 11, "isthing": 0}]


def gt_scene() -> tuple[np.ndarray, list[dict]]:
    ids = np.zeros((20, 20), np.int64)
    ids[:10] = 100  # stuff 10
    ids[10:] = 110  # stuff 11
    ids[2:6, 2:6] = 1  # thing of class 1 (16 px)
    ids[12:17, 12:17] = 2  # thing of class 2 (25 px)
    ids[18:, :2] = 0  # void (4 px)
    segs = [{"id": 100, "category_id": 10, "iscrowd": 0}, {"id": 110, "category_id": 11, "iscrowd": 0},
            {"id": 1, "category_id": 1, "iscrowd": 0}, {"id": 2, "category_id": 2, "iscrowd": 0}]  # fmt: skip
    return ids, segs


def score(pred: np.ndarray, pred_segs: list[dict], gt: tuple[np.ndarray, list[dict]] | None = None) -> dict[str, float]:
    ids, segs = gt if gt is not None else gt_scene()
    return pq_compute([PanopticSample("x", ids, segs, pred, pred_segs)], CATS)


def test_perfect_prediction_is_one() -> None:
    ids, segs = gt_scene()
    relabel = {100: 7, 110: 8, 1: 9, 2: 5}  # other segment ids, same segments
    pred = np.vectorize(lambda v: relabel.get(v, 0))(ids)
    m = score(pred, [{"id": relabel[s["id"]], "category_id": s["category_id"]} for s in segs])
    for k in ("pq", "sq", "rq", "pq_th", "pq_st", "sq_th", "rq_st"):
        assert m[k] == 1.0, (k, m)
    assert m["n_all"] == 4


def test_empty_prediction_is_zero() -> None:
    m = score(np.zeros((20, 20), np.int64), [])
    assert m["pq"] == m["sq"] == m["rq"] == 0.0
    assert m["pq_th"] == 0.0 and m["pq_st"] == 0.0
    assert m["n_all"] == 4  # every category has a false negative


def test_one_swapped_segment() -> None:
    """The class-2 thing predicted as class 1. Class 1: TP 1 (IoU 1) + FP 1 -> PQ 1/(1 + 1/2) = 2/3;
    class 2: FN 1 -> 0; stuff: 1 each. PQ = (2/3 + 0 + 1 + 1) / 4 = 2/3; things 1/3; stuff 1;
    SQ = (1 + 0 + 1 + 1) / 4 = 3/4; RQ = PQ here (every IoU is 1)."""
    ids, segs = gt_scene()
    pred_segs = [{"id": s["id"], "category_id": 1 if s["id"] == 2 else s["category_id"]} for s in segs]
    pred = np.where(ids == 0, 0, ids)
    m = score(pred, pred_segs)
    assert m["pq"] == pytest.approx(2 / 3, abs=1e-12)
    assert m["pq_th"] == pytest.approx(1 / 3, abs=1e-12)
    assert m["pq_st"] == pytest.approx(1.0, abs=1e-12)
    assert m["sq"] == pytest.approx(3 / 4, abs=1e-12)
    assert m["rq"] == pytest.approx(2 / 3, abs=1e-12)


def test_iou_threshold_is_strictly_above_half() -> None:
    ids, segs = gt_scene()
    # class-1 thing: 16 px in GT. Prediction covers 12 of them + 8 stuff-10 px: IoU 12/(20+16-12) = 1/2 -> no match
    pred = ids.copy()
    pred[2:6, 2:6] = 100
    pred[2:6, 2:5] = 1
    pred[6:8, 2:6] = 1
    assert int((pred == 1).sum()) == 20 and int(((pred == 1) & (ids == 1)).sum()) == 12
    m = score(pred, segs)
    # class 1: no TP, FP 1, FN 1 -> 0; its stuff-10 region still matches (IoU > 0.5)
    assert m["pq_th"] == pytest.approx((0 + 1) / 2)
    # one pixel more on the object: IoU 13/(20+16-13)=13/23 > 1/2 -> a match with that IoU
    pred[2, 5] = 1
    pred[7, 5] = 100
    m = score(pred, segs)
    assert m["pq_th"] == pytest.approx((13 / 23 + 1) / 2)


def test_void_pixels_leave_the_union_and_do_not_make_false_positives() -> None:
    ids, segs = gt_scene()
    pred = ids.copy()
    pred[18:, :2] = 110  # stuff 11 predicted over the void corner: union excludes those 4 px
    m = score(pred, segs)
    assert m["pq"] == 1.0
    # a predicted thing lying mostly on void is not a false positive
    gt_ids = ids.copy()
    gt_ids[0:4, 14:20] = 0  # 24 void px
    pred = gt_ids.copy()
    pred[0:4, 13:20] = 77  # 28 px: 24 on void, 4 on stuff 10
    m = score(pred, segs + [{"id": 77, "category_id": 2}], (gt_ids, segs))
    # stuff 10 has 160 px left, 156 of them predicted: IoU 156/160; segment 77 (24 of 28 px on void) is ignored
    assert m["pq_th"] == 1.0
    assert m["pq_st"] == pytest.approx((156 / 160 + 1) / 2, abs=1e-12)


def test_crowd_regions_are_ignored() -> None:
    ids, segs = gt_scene()
    ids[0:5, 10:20] = 50  # a crowd of class 2 (50 px)
    segs = segs + [{"id": 50, "category_id": 2, "iscrowd": 1}]
    pred = ids.copy()
    pred[ids == 50] = 60  # one class-2 segment over the crowd: neither TP nor FP
    pred_segs = [s for s in segs if s["id"] != 50] + [{"id": 60, "category_id": 2}]
    m = score(pred, pred_segs, (ids, segs))
    assert m["pq"] == 1.0
    # the same segment labelled class 1 is a false positive (the crowd is of class 2)
    pred_segs[-1] = {"id": 60, "category_id": 1}
    m = score(pred, pred_segs, (ids, segs))
    assert m["pq_th"] == pytest.approx((1 / 1.5 + 1) / 2)


def test_inconsistent_predictions_are_errors() -> None:
    ids, segs = gt_scene()
    with pytest.raises(KeyError, match="not in segments_info"):
        score(ids, segs[:-1])
    with pytest.raises(KeyError, match="not in the id map"):
        score(ids, segs + [{"id": 999, "category_id": 1}])
    with pytest.raises(KeyError, match="unknown category_id"):
        score(ids, [dict(s, category_id=3) if s["id"] == 1 else s for s in segs])
    with pytest.raises(ValueError, match="prediction is"):
        score(ids[:10], segs)


def test_no_stuff_is_nan_not_zero() -> None:
    ids = np.zeros((8, 8), np.int64)
    ids[2:5, 2:5] = 1
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0}]
    m = pq_compute([PanopticSample("x", ids, segs, ids, segs)], CATS)
    assert m["pq"] == 1.0 and m["pq_th"] == 1.0
    assert math.isnan(m["pq_st"]) and m["n_st"] == 0


def test_png_roundtrip() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 256**3, (17, 23))
    np.testing.assert_array_equal(rgb2id(id2rgb(ids)), ids)
    np.testing.assert_array_equal(decode_id_png(encode_id_png(ids)), ids)
    with pytest.raises(ValueError):
        id2rgb(np.array([[256**3]]))


# ---- against cityscapesscripts ---------------------------------------------------------------------
def _perturbed_predictions(gt: PanopticGroundTruth, seed: int) -> dict[str, dict]:
    """Predictions made from the GT with errors of every kind: shifted and relabelled things,
    a missed segment, a spurious segment, stuff over void, things over the crowd region."""
    rng = np.random.default_rng(seed)
    preds = {}
    for n, image_id in enumerate(sorted(gt.annotations)):
        ids, segs = gt.load(image_id)
        pred = np.zeros_like(ids)
        out_segs = []
        next_id = 1
        for s in segs:
            m = ids == s["id"]
            if s.get("iscrowd"):
                m = np.roll(m, 3, axis=1)  # predicted over the crowd, shifted
            elif s["category_id"] == CAR:
                m = np.roll(m, int(rng.integers(-12, 13)), axis=1)  # some keep IoU > 0.5, some do not
            if n % 2 and s["category_id"] == ROAD:
                continue  # a missed stuff segment: FN, and its pixels stay void
            cat = s["category_id"]
            if s.get("iscrowd") and n % 2:
                cat = CAR  # over a person crowd but labelled car: FP unless mostly void
            pred[m] = next_id
            out_segs.append({"id": next_id, "category_id": cat})
            next_id += 1
        pred[ids == 0] = next_id - 1 if n % 3 == 0 else 0  # sometimes the last segment grows into void
        extra = np.zeros_like(ids, bool)
        extra[: 6 + n, -6:] = True  # a spurious person
        pred[extra] = next_id
        out_segs.append({"id": next_id, "category_id": PERSON})
        present = set(np.unique(pred).tolist())
        out_segs = [s for s in out_segs if s["id"] in present]
        preds[image_id] = {"png": encode_id_png(pred), "segments_info": out_segs}
    return preds


@pytest.fixture()
def cs_gt(tmp_path: Path) -> PanopticGroundTruth:
    root = tmp_path / "cs"
    write_cityscapes(root, n_per_city=3)
    return CityscapesDataset(root, cache=tmp_path / "cache").panoptic_gt()


def _ours(preds: dict[str, dict], gt: PanopticGroundTruth) -> dict[str, float]:
    samples = [PanopticSample(k, *gt.load(k), decode_id_png(p["png"]), p["segments_info"]) for k, p in preds.items()]
    return pq_compute(samples, gt.categories)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_cityscapesscripts_evaluate_panoptic(cs_gt: PanopticGroundTruth, tmp_path: Path, seed: int) -> None:
    """Our PQ/SQ/RQ equal cityscapesscripts' ``evaluatePanoptic`` (its own entry point, files on disk) to 1e-6."""
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic

    preds = _perturbed_predictions(cs_gt, seed)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    anns = []
    for image_id, p in preds.items():
        Image.fromarray(id2rgb(decode_id_png(p["png"]))).save(pred_dir / f"{image_id}.png")
        anns.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": p["segments_info"]})
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": anns}))
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        with contextlib.redirect_stdout(io.StringIO()):
            ref = evaluatePanoptic(str(cs_gt.json_file), str(cs_gt.png_folder), str(tmp_path / "pred.json"),
                                   str(pred_dir), str(tmp_path / "res.json"))  # fmt: skip
    finally:
        os.chdir(cwd)
    ours = _ours(preds, cs_gt)
    for suffix, key in (("", "All"), ("_th", "Things"), ("_st", "Stuff")):
        for k in ("pq", "sq", "rq"):
            assert ours[k + suffix] == pytest.approx(ref[key][k], abs=1e-6), (k + suffix, ours, ref)
        assert ours["n" + (suffix or "_all")] == ref[key]["n"]
    # the case is not trivial: errors of every kind happened
    assert 0.2 < ours["pq"] < 0.95 and ours["pq_th"] < ours["pq_st"]
    # and the in-process wrapper around the official code gives the same numbers
    wrapped = cityscapes_pq(preds, cs_gt)
    for k, v in ours.items():
        assert wrapped[k] == pytest.approx(v, abs=1e-9), k
    assert evaluate_predictions(preds, cs_gt) == wrapped  # the Cityscapes GT asks for the official scorer
