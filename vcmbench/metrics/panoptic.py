"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ).

Kirillov et al., "Panoptic Segmentation", CVPR 2019 (arXiv:1801.00868). The definition
follows the COCO panoptic evaluator (``panopticapi/evaluation.py``), which Cityscapes'
``evalPanopticSemanticLabeling`` reproduces:

- a predicted and a ground-truth segment of the same category match when their IoU
  exceeds 0.5 (then the match is unique); the IoU's union leaves out the predicted
  segment's pixels that fall on void (id 0) ground truth;
- crowd ground-truth segments (``iscrowd: 1``) are never matched nor counted as false
  negatives; an unmatched predicted segment is not a false positive when more than half
  of it lies on void or on the crowd region of its own category;
- PQ_c = sum(IoU of matches) / (TP + FP/2 + FN/2) per category; PQ, SQ, RQ are averages
  over the categories with at least one TP, FP or FN (all, things, stuff).

:func:`pq_compute` is our implementation; :func:`cityscapes_pq` runs cityscapesscripts'
own evaluator on the same predictions (the official Cityscapes scoring).

Panoptic maps travel as COCO panoptic PNGs: segment id = R + 256 G + 256^2 B, 0 = void.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "PQ_METRICS",
    "PanopticGroundTruth",
    "PanopticSample",
    "cityscapes_pq",
    "decode_id_png",
    "encode_id_png",
    "evaluate_predictions",
    "id2rgb",
    "pq_compute",
    "pq_stats",
    "rgb2id",
    "summarize",
]

#: metric names returned by :func:`pq_compute` (values are fractions in [0, 1])
PQ_METRICS: tuple[str, ...] = ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st")

VOID = 0
_OFFSET = 256 * 256 * 256


def rgb2id(color: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours (HxWx3) -> segment ids (HxW int64)."""
    c = np.asarray(color).astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids (HxW, < 2^24) -> COCO panoptic PNG colours (HxWx3 uint8)."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _OFFSET):
        raise ValueError(f"segment ids must lie in [0, 2^24), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def encode_id_png(ids: np.ndarray) -> str:
    """Segment id map -> base64 text of its COCO panoptic PNG (compact, JSON-friendly)."""
    buf = io.BytesIO()
    Image.fromarray(id2rgb(ids)).save(buf, format="PNG", optimize=False, compress_level=6)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_id_png(text: str) -> np.ndarray:
    """Inverse of :func:`encode_id_png`."""
    with Image.open(io.BytesIO(base64.b64decode(text))) as im:
        return rgb2id(np.asarray(im.convert("RGB")))


@dataclass
class PanopticSample:
    """One image: ground-truth and predicted id maps with their segment lists.

    ``gt_segments``: dicts with ``id``, ``category_id``, ``iscrowd`` (and ``area``; computed
    from the map when absent). ``pred_segments``: dicts with ``id`` and ``category_id``.
    Pixels of ids absent from a segment list must be void (0) in predictions; in the
    ground truth they are treated as unlabelled (as the official evaluators do).
    """

    image_id: Any
    gt: np.ndarray
    gt_segments: Sequence[Mapping[str, Any]]
    pred: np.ndarray
    pred_segments: Sequence[Mapping[str, Any]]


@dataclass
class _CatStat:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


@dataclass
class PQStat:
    """Per-category sums of matched IoU, TP, FP, FN, accumulated over images."""

    per_cat: dict[int, _CatStat] = field(default_factory=lambda: defaultdict(_CatStat))

    def __iadd__(self, other: PQStat) -> PQStat:
        for cat, s in other.per_cat.items():
            mine = self.per_cat[cat]
            mine.iou += s.iou
            mine.tp += s.tp
            mine.fp += s.fp
            mine.fn += s.fn
        return self


def pq_stats(sample: PanopticSample, categories: Mapping[int, Mapping[str, Any]] | None = None) -> PQStat:
    """Matching of one image (see the module docstring); returns its per-category counts."""
    gt = np.asarray(sample.gt).astype(np.int64)
    pred = np.asarray(sample.pred).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(
            f"image {sample.image_id}: prediction is {pred.shape[1]}x{pred.shape[0]}, "
            f"ground truth {gt.shape[1]}x{gt.shape[0]}"
        )
    gt_segs = {int(s["id"]): dict(s) for s in sample.gt_segments}
    pred_segs = {int(s["id"]): dict(s) for s in sample.pred_segments}
    if VOID in pred_segs:
        raise ValueError(f"image {sample.image_id}: segment id 0 is reserved for void")

    labels, counts = np.unique(pred, return_counts=True)
    seen = set()
    for label, cnt in zip(labels.tolist(), counts.tolist(), strict=True):
        if label == VOID:
            continue
        if label not in pred_segs:
            raise KeyError(f"image {sample.image_id}: segment {label} is in the id map but not in segments_info")
        pred_segs[label]["area"] = cnt
        seen.add(label)
        cat = pred_segs[label]["category_id"]
        if categories is not None and cat not in categories:
            raise KeyError(f"image {sample.image_id}: segment {label} has unknown category_id {cat}")
    absent = sorted(set(pred_segs) - seen)
    if absent:
        raise KeyError(f"image {sample.image_id}: segments {absent} are in segments_info but not in the id map")
    if any("area" not in s for s in gt_segs.values()):
        g_labels, g_counts = np.unique(gt, return_counts=True)
        g_area = dict(zip(g_labels.tolist(), g_counts.tolist(), strict=True))
        for gid, s in gt_segs.items():
            s.setdefault("area", g_area.get(gid, 0))

    joint = gt * _OFFSET + pred
    pair_labels, pair_counts = np.unique(joint, return_counts=True)
    inter: dict[tuple[int, int], int] = {
        (int(p // _OFFSET), int(p % _OFFSET)): int(c)
        for p, c in zip(pair_labels.tolist(), pair_counts.tolist(), strict=True)
    }

    stat = PQStat()
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (gid, pid), n in inter.items():
        if gid not in gt_segs or pid not in pred_segs:
            continue
        g, p = gt_segs[gid], pred_segs[pid]
        if g.get("iscrowd", 0) == 1 or g["category_id"] != p["category_id"]:
            continue
        union = p["area"] + g["area"] - n - inter.get((VOID, pid), 0)
        iou = n / union
        if iou > 0.5:
            s = stat.per_cat[g["category_id"]]
            s.tp += 1
            s.iou += iou
            gt_matched.add(gid)
            pred_matched.add(pid)

    crowd_of: dict[int, int] = {}
    for gid, g in gt_segs.items():
        if gid in gt_matched:
            continue
        if g.get("iscrowd", 0) == 1:
            crowd_of[g["category_id"]] = gid  # as the official code: one crowd region per category
            continue
        stat.per_cat[g["category_id"]].fn += 1
    for pid, p in pred_segs.items():
        if pid in pred_matched:
            continue
        ignored = inter.get((VOID, pid), 0)
        if p["category_id"] in crowd_of:
            ignored += inter.get((crowd_of[p["category_id"]], pid), 0)
        if ignored / p["area"] > 0.5:
            continue
        stat.per_cat[p["category_id"]].fp += 1
    return stat


def _average(stat: PQStat, categories: Mapping[int, Mapping[str, Any]], isthing: bool | None) -> dict[str, float]:
    pq = sq = rq = 0.0
    n = 0
    for cat, info in categories.items():
        if isthing is not None and (int(info.get("isthing", 0)) == 1) != isthing:
            continue
        s = stat.per_cat.get(cat)
        if s is None or s.tp + s.fp + s.fn == 0:
            continue
        n += 1
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        pq += s.iou / denom
        sq += s.iou / s.tp if s.tp else 0.0
        rq += s.tp / denom
    if n == 0:
        nan = float("nan")
        return {"pq": nan, "sq": nan, "rq": nan, "n": 0}
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}


def summarize(stat: PQStat, categories: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    """Flat metric dict: pq/sq/rq over all categories, ``_th`` things, ``_st`` stuff.

    A group with no category to average over (no ground truth and no prediction of its
    categories) is NaN, not 0: the quantity is undefined there.
    """
    out: dict[str, float] = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        avg = _average(stat, categories, isthing)
        for k in ("pq", "sq", "rq"):
            out[k + suffix] = float(avg[k])
        out["n" + (suffix or "_all")] = float(avg["n"])
    return out


def pq_compute(
    samples: Iterable[PanopticSample], categories: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]]
) -> dict[str, float]:
    """PQ / SQ / RQ (all, things ``_th``, stuff ``_st``) over ``samples``.

    ``categories``: the dataset's panoptic categories (dicts with ``id`` and ``isthing``),
    as a list or keyed by id. Only these categories enter the averages.
    """
    cats = _cat_dict(categories)
    total = PQStat()
    for sample in samples:
        total += pq_stats(sample, cats)
    return summarize(total, cats)


def _cat_dict(
    categories: Sequence[Mapping[str, Any]] | Mapping[int, Mapping[str, Any]],
) -> dict[int, Mapping[str, Any]]:
    if isinstance(categories, Mapping):
        return {int(k): v for k, v in categories.items()}
    return {int(c["id"]): c for c in categories}


class PanopticGroundTruth:
    """Ground truth in the COCO panoptic format: a JSON file and a folder of id PNGs.

    Kirillov et al. 2019; the format of http://cocodataset.org/#format-data. The same
    format is what cityscapesscripts' ``createPanopticImgs`` writes. ``evaluator``
    says which official scorer applies: ``"coco"`` (our :func:`pq_compute`) or
    ``"cityscapes"`` (cityscapesscripts' ``evaluatePanoptic``).
    """

    def __init__(self, json_file: str | Path, png_folder: str | Path, evaluator: str = "coco") -> None:
        if evaluator not in ("coco", "cityscapes"):
            raise ValueError(f"evaluator must be 'coco' or 'cityscapes', got {evaluator!r}")
        self.json_file = Path(json_file)
        self.png_folder = Path(png_folder)
        self.evaluator = evaluator
        with open(self.json_file) as f:
            data = json.load(f)
        self.data = data
        self.categories: list[dict[str, Any]] = sorted(data["categories"], key=lambda c: int(c["id"]))
        self.annotations: dict[Any, dict[str, Any]] = {a["image_id"]: a for a in data["annotations"]}
        self.images: dict[Any, dict[str, Any]] = {im["id"]: im for im in data.get("images", [])}

    def load(self, image_id: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(id map, segments_info) of one image."""
        try:
            ann = self.annotations[image_id]
        except KeyError:
            raise KeyError(f"{self.json_file}: no panoptic annotation for image {image_id!r}") from None
        with Image.open(self.png_folder / ann["file_name"]) as im:
            ids = rgb2id(np.asarray(im.convert("RGB")))
        return ids, list(ann["segments_info"])


def evaluate_predictions(
    predictions: Mapping[Any, Mapping[str, Any]], gt: PanopticGroundTruth
) -> dict[str, float]:
    """Score predictions ``{panoptic image id: {"png": ..., "segments_info": [...]}}`` with the
    evaluator the ground truth asks for."""
    if gt.evaluator == "cityscapes":
        return cityscapes_pq(predictions, gt)
    samples = (
        PanopticSample(image_id, *gt.load(image_id), decode_id_png(p["png"]), p["segments_info"])
        for image_id, p in predictions.items()
    )
    return pq_compute(samples, gt.categories)


def cityscapes_pq(predictions: Mapping[Any, Mapping[str, Any]], gt: PanopticGroundTruth) -> dict[str, float]:
    """PQ with cityscapesscripts' ``evalPanopticSemanticLabeling`` (the official Cityscapes scorer).

    Predictions are written as COCO panoptic PNGs + JSON into a temporary folder and
    read back by the official code, exactly as ``evaluatePanoptic`` does: its
    ``pq_compute_single_core`` does the matching and its ``PQStat.pq_average`` the
    averaging. (``evaluatePanoptic`` itself forks one process per core and divides by
    zero when a group, e.g. stuff, has no category to average; here that group is NaN.)
    """
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as cs_eval

    if not predictions:
        raise ValueError("no predictions to evaluate")
    with tempfile.TemporaryDirectory(prefix="vcmbench-cs-pq-") as tmp:
        pred_dir = Path(tmp)
        matched = []
        for image_id, p in predictions.items():
            if image_id not in gt.annotations:
                raise KeyError(f"{gt.json_file}: no panoptic annotation for image {image_id!r}")
            name = f"{image_id}_panoptic.png"
            (pred_dir / name).write_bytes(base64.b64decode(p["png"]))
            segs = [{"id": int(s["id"]), "category_id": int(s["category_id"])} for s in p["segments_info"]]
            matched.append((gt.annotations[image_id], {"image_id": image_id, "file_name": name, "segments_info": segs}))
        categories = {c["id"]: c for c in gt.categories}
        with contextlib.redirect_stdout(io.StringIO()):
            stat = cs_eval.pq_compute_single_core(0, matched, str(gt.png_folder), str(pred_dir), categories)
    out: dict[str, float] = {}
    for suffix, isthing in (("", None), ("_th", True), ("_st", False)):
        try:
            res, _ = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:
            res = {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        for k in ("pq", "sq", "rq"):
            out[k + suffix] = float(res[k])
        out["n" + (suffix or "_all")] = float(res["n"])
    return out
