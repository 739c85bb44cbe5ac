"""COCO box and mask mAP with the official pycocotools evaluator (``COCOeval``, ``iouType="bbox"`` / ``"segm"``).

Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["BBOX_METRICS", "SEGM_METRICS", "coco_bbox_eval", "coco_segm_eval"]

#: metric name -> index into ``COCOeval.stats``
BBOX_METRICS: dict[str, int] = {
    "map": 0,
    "map50": 1,
    "map75": 2,
    "map_small": 3,
    "map_medium": 4,
    "map_large": 5,
    "ar100": 8,
}


def coco_bbox_eval(
    coco_gt: Any,
    detections: Iterable[Mapping[str, Any]],
    img_ids: Iterable[int],
    verbose: bool = False,
) -> dict[str, float]:
    """Score COCO-format detections (``image_id``, ``category_id``, ``bbox`` xywh, ``score``).

    Evaluation is restricted to ``img_ids`` (images with no detections count as misses).
    ``verbose`` lets pycocotools print its usual summary. With no detections
    at all every metric is 0 (pycocotools' ``loadRes`` cannot take an empty list).
    As in pycocotools, a metric with no ground truth to score against (e.g.
    ``map_small`` when no small objects are annotated) is -1.
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted({int(i) for i in img_ids})
    dets = [dict(d) for d in detections]
    if not ids or not dets:
        return dict.fromkeys(BBOX_METRICS, 0.0)
    known = set(coco_gt.getImgIds())
    unknown = sorted({int(d["image_id"]) for d in dets} - known)
    if unknown:
        raise ValueError(
            f"detections name image ids absent from the ground truth: {unknown[:10]}"
            + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        )
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValueError(f"img_ids absent from the ground truth: {missing[:10]}")
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco_gt.loadRes(dets)  # adds 'area', 'id', 'segmentation' keys: dets are our own copies
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(ev.stats[i]) for name, i in BBOX_METRICS.items()}


#: instance-mask metrics: the box metric names with a ``segm_`` prefix, same ``COCOeval.stats`` indices
SEGM_METRICS: dict[str, int] = {f"segm_{name}": i for name, i in BBOX_METRICS.items()}


def coco_segm_eval(
    coco_gt: Any,
    detections: Iterable[Mapping[str, Any]],
    img_ids: Iterable[int],
    verbose: bool = False,
) -> dict[str, float]:
    """Instance-mask mAP (``COCOeval``, ``iouType="segm"``) of detections with RLE ``segmentation``.

    Each detection needs ``image_id``, ``category_id``, ``score`` and ``segmentation``
    (a compressed RLE dict, ``counts`` as str). Any ``bbox`` is dropped first, as
    detectron2's COCOEvaluator does: with a box present pycocotools would take the box
    area, not the mask area, for the small/medium/large split. Empty detections give 0;
    metrics with no ground truth to score are -1, as in pycocotools.
    """
    from pycocotools.cocoeval import COCOeval

    ids = sorted({int(i) for i in img_ids})
    dets = [{k: v for k, v in d.items() if k != "bbox"} for d in detections]
    if not ids or not dets:
        return dict.fromkeys(SEGM_METRICS, 0.0)
    known = set(coco_gt.getImgIds())
    unknown = sorted({int(d["image_id"]) for d in dets} - known)
    if unknown:
        raise ValueError(f"detections name image ids absent from the ground truth: {unknown[:10]}")
    missing = [i for i in ids if i not in known]
    if missing:
        raise ValueError(f"img_ids absent from the ground truth: {missing[:10]}")
    anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=ids))
    if any("segmentation" not in a for a in anns):
        raise ValueError("the ground truth has no instance masks ('segmentation'); mask mAP cannot be computed")
    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_dt = coco_gt.loadRes(dets)  # adds 'area' (mask area), 'bbox', 'id' to our copies
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.imgIds = ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(ev.stats[i]) for name, i in SEGM_METRICS.items()}
