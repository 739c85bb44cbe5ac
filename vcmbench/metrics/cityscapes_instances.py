"""Cityscapes instance-level AP (AP and AP50), as the official benchmark defines them.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016. The
definition is that of cityscapesscripts' ``evaluation/evalInstanceLevelSemanticLabeling.py``
(without distance information, so only the first min region size counts); this is our own
implementation of it, checked equal to that evaluator to 1e-6 (``tests/test_cityscapes_instances.py``).

Ground truth: a gtFine ``*_instanceIds.png`` map. A pixel value ``v >= 1000`` is one object of label
id ``v // 1000``; ``v < 1000`` is the label id itself (stuff, void, or a *group* of objects of a thing
class, e.g. a crowd of cars). The evaluated classes are the 8 labels with instances that are not
``ignoreInEval`` (person, rider, car, truck, bus, train, motorcycle, bicycle); void pixels are those
whose raw value is the id of an ``ignoreInEval`` label.

Predictions: binary masks (any non-zero pixel belongs to the mask) with a Cityscapes label id (not a
train id) and a confidence. Masks of other labels and empty masks are skipped.

For each class and each overlap threshold t in 0.50:0.95:0.05:

- the ground-truth instances scored are the single objects (``v >= 1000``) of at least
  :data:`MIN_REGION_SIZE` pixels; groups and smaller objects are neither hits nor misses;
- IoU = |P n G| / (|P| + |G| - |P n G|) over all pixels of both regions; a prediction *matches* an
  instance when IoU > t. An instance matched by several predictions is a true positive with the
  highest confidence, the others are false positives with their own; an instance that nothing
  matches is a false negative (it never enters the ranking, it only lowers recall);
- a prediction that matches no region of its class (groups and small objects included) is a false
  positive unless more than t of its pixels lie on void, on groups of its class or on small objects of
  its class (pixels on a small group count twice, as in the evaluator);
- the precision-recall curve has one point per distinct confidence c (precision and recall of the
  predictions with confidence >= c) plus the point (recall 0, precision 1). AP is the sum of each
  point's precision times half the recall gap between its two neighbours (the first point's left
  neighbour is itself, the last's right neighbour is recall 0): the evaluator's step integration;
- a class without scored ground truth in any image has AP NaN (left out of the means); a class with
  ground truth but no prediction of it has AP 0. When every prediction of a class is ignored, the
  official script fails (an empty ranking); here the AP is then 0.

Per class: ``ap`` is the mean of the 10 thresholds' APs, ``ap50`` the AP at t = 0.5. Overall: ``ap`` is
the mean over the classes with ground truth of the per-class AP (the evaluator's ``allAp``, a NaN-mean
over class x threshold), ``ap50`` the same at t = 0.5 (``allAp50%``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "MIN_REGION_SIZE",
    "OVERLAPS",
    "ImageRegions",
    "InstanceAP",
    "InstancePrediction",
    "average_precision",
    "class_ap",
    "class_ranking",
    "evaluate",
    "image_regions",
    "image_regions_from_segments",
    "instance_classes",
    "read_instance_ids",
    "read_predictions",
    "void_label_ids",
]

#: IoU thresholds: 0.50, 0.55, ..., 0.95 (the evaluator's ``np.arange(0.5, 1., 0.05)``)
OVERLAPS: np.ndarray = np.arange(0.5, 1.0, 0.05)
#: smallest ground-truth object scored, in pixels (the evaluator's first ``minRegionSizes`` entry)
MIN_REGION_SIZE = 100
#: values of an instanceIds map from this one up are single objects: label id * 1000 + instance number
INSTANCE_OFFSET = 1000


def instance_classes() -> dict[int, str]:
    """Label id -> name of the evaluated classes: labels with instances, not ignored in evaluation, in
    cityscapesscripts' label-table order."""
    from cityscapesscripts.helpers.labels import labels

    return {int(lb.id): str(lb.name) for lb in labels if lb.hasInstances and not lb.ignoreInEval}


def void_label_ids() -> frozenset[int]:
    """Label ids whose pixels are void: the labels ignored in evaluation."""
    from cityscapesscripts.helpers.labels import labels

    return frozenset(int(lb.id) for lb in labels if lb.ignoreInEval)


def label_of(value: int) -> int:
    """Label id of an instanceIds value."""
    return value // INSTANCE_OFFSET if value >= INSTANCE_OFFSET else value


@dataclass(frozen=True)
class InstancePrediction:
    """One predicted instance: a mask (HxW, non-zero = inside), its Cityscapes label id, its confidence."""

    mask: np.ndarray
    label_id: int
    score: float


@dataclass
class PredRegion:
    """A non-empty prediction reduced to counts: its pixels, those on void, and its intersection with each
    ground-truth region (instanceIds value) of its class that it touches."""

    score: float
    pixels: int
    void: int
    inter: dict[int, int]


@dataclass
class ImageRegions:
    """One image reduced to what the AP needs, per evaluated class (label id): the ground-truth regions
    (instanceIds value -> pixels, groups included) and the predictions."""

    gt: dict[int, dict[int, int]] = field(default_factory=dict)
    preds: dict[int, list[PredRegion]] = field(default_factory=dict)


# ---- one image ------------------------------------------------------------------------------------
def gt_regions(gt_ids: np.ndarray, classes: Iterable[int]) -> dict[int, dict[int, int]]:
    """Evaluated class -> {instanceIds value: pixel count} of one map."""
    out: dict[int, dict[int, int]] = {c: {} for c in classes}
    lo = int(gt_ids.min()) if gt_ids.size else 0
    counts = np.bincount((gt_ids - lo).ravel())
    values = np.flatnonzero(counts)
    for v, n in zip((values + lo).tolist(), counts[values].tolist(), strict=True):
        c = label_of(int(v))
        if c in out:
            out[c][int(v)] = int(n)
    return out


def pred_region(score: float, pixels: int, void: int, touched: Mapping[int, int], regions: Mapping[int, int]) -> PredRegion:
    """A prediction's counts; ``touched`` is instanceIds value -> overlap over all values under it, of which
    those of ``regions`` (its class's ground truth) are kept."""
    return PredRegion(float(score), int(pixels), int(void), {v: int(n) for v, n in touched.items() if v in regions and n > 0})


def _check_shapes(gt_ids: np.ndarray, pred: np.ndarray, what: str) -> None:
    if gt_ids.shape != pred.shape:
        raise ValueError(f"{what} is {pred.shape[1]}x{pred.shape[0]}, its ground truth {gt_ids.shape[1]}x{gt_ids.shape[0]}")


def image_regions(gt_ids: np.ndarray, predictions: Sequence[InstancePrediction], name: str = "image") -> ImageRegions:
    """Counts of one image from its instanceIds map and predicted masks (they may overlap)."""
    classes = instance_classes()
    gt_ids = np.asarray(gt_ids).astype(np.int64)
    void = np.isin(gt_ids, sorted(void_label_ids()))
    out = ImageRegions(gt=gt_regions(gt_ids, classes), preds={c: [] for c in classes})
    for k, p in enumerate(predictions):
        if p.label_id not in classes:
            continue
        mask = np.asarray(p.mask) != 0
        _check_shapes(gt_ids, mask, f"{name}: prediction {k}")
        pixels = int(mask.sum())
        if not pixels:
            continue
        values, counts = np.unique(gt_ids[mask], return_counts=True)
        touched = dict(zip(values.tolist(), counts.tolist(), strict=True))
        nvoid = int(void[mask].sum())
        out.preds[p.label_id].append(pred_region(p.score, pixels, nvoid, touched, out.gt[p.label_id]))
    return out


def image_regions_from_segments(
    gt_ids: np.ndarray, seg_ids: np.ndarray, segments: Sequence[tuple[int, int, float]], name: str = "image"
) -> ImageRegions:
    """Counts of one image whose predictions are the segments of an id map (non-overlapping masks, as in a
    panoptic prediction): ``segments`` lists (segment id, label id, confidence); id 0 is no segment."""
    classes = instance_classes()
    gt_ids = np.asarray(gt_ids).astype(np.int64)
    seg_ids = np.asarray(seg_ids).astype(np.int64)
    _check_shapes(gt_ids, seg_ids, f"{name}: segment map")
    out = ImageRegions(gt=gt_regions(gt_ids, classes), preds={c: [] for c in classes})
    wanted = [(s, c, score) for s, c, score in segments if c in classes and s != 0]
    if not wanted:
        return out
    inside = np.isin(seg_ids, [s for s, _, _ in wanted])
    seg_in, gt_in = seg_ids[inside], gt_ids[inside]
    lo = int(gt_in.min()) if gt_in.size else 0
    span = int(gt_in.max()) - lo + 1 if gt_in.size else 1
    pairs, counts = np.unique(seg_in * span + (gt_in - lo), return_counts=True)
    touched: dict[int, dict[int, int]] = {}
    for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        touched.setdefault(pair // span, {})[pair % span + lo] = n
    voids = void_label_ids()
    for s, c, score in wanted:
        under = touched.get(int(s), {})
        pixels = sum(under.values())
        if pixels:
            nvoid = sum(n for v, n in under.items() if v in voids)
            out.preds[c].append(pred_region(score, pixels, nvoid, under, out.gt[c]))
    return out


# ---- ranking and AP ---------------------------------------------------------------------------------
def iou(inter: int, a: int, b: int) -> float:
    return float(inter) / (a + b - inter)


def class_ranking(images: Sequence[ImageRegions], label: int, overlap: float, min_size: int) -> tuple[list[int], list[float], int]:
    """(is true positive, confidence) of every ranked prediction of one class at one threshold, and the number
    of scored ground-truth instances that nothing matched."""
    hits: list[int] = []
    scores: list[float] = []
    missed = 0
    for im in images:
        regions = im.gt.get(label, {})
        scored = {v for v, n in regions.items() if v >= INSTANCE_OFFSET and n >= min_size}
        found: dict[int, list[float]] = {v: [] for v in scored}
        for p in im.preds.get(label, []):
            matched = [v for v, n in p.inter.items() if iou(n, p.pixels, regions[v]) > overlap]
            for v in matched:
                if v in scored:
                    found[v].append(p.score)
            if matched:
                continue  # counted with its object, or it matches a group / small object: not a false positive
            ignored = p.void + sum(n * ((v < INSTANCE_OFFSET) + (regions[v] < min_size)) for v, n in p.inter.items())
            if ignored / p.pixels <= overlap:
                hits.append(0)
                scores.append(p.score)
        for confidences in found.values():
            if not confidences:
                missed += 1
                continue
            ranked = sorted(confidences, reverse=True)  # the best is the hit, the others false positives
            hits += [1] + [0] * (len(ranked) - 1)
            scores += ranked
    return hits, scores, missed


def average_precision(hits: Sequence[int], scores: Sequence[float], missed: int) -> float:
    """Area under the precision-recall curve, integrated as the evaluator does (see the module docstring)."""
    if not hits:
        return 0.0
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    y = np.asarray(hits, dtype=np.float64)[order]
    positives = y.sum() + missed
    thresholds = np.unique(s)  # ascending: recall falls along the curve
    n = np.searchsorted(-s[order], -thresholds, side="right")  # predictions with confidence >= threshold
    tp = np.cumsum(y)[n - 1]
    precision = np.append(tp / n, 1.0)
    recall = np.append(tp / positives, 0.0)
    padded = np.concatenate([recall[:1], recall, [0.0]])
    widths = (padded[:-2] - padded[2:]) / 2
    return float(np.dot(precision, widths))


def class_ap(images: Sequence[ImageRegions], label: int, overlap: float, min_size: int = MIN_REGION_SIZE) -> float:
    """AP of one class at one threshold: NaN without scored ground truth, 0 without predictions."""
    has_gt = any(v >= INSTANCE_OFFSET and n >= min_size for im in images for v, n in im.gt.get(label, {}).items())
    if not has_gt:
        return math.nan
    if not any(im.preds.get(label) for im in images):
        return 0.0
    return average_precision(*class_ranking(images, label, overlap, min_size))


@dataclass
class InstanceAP:
    """AP of each class (label id) at each threshold of :data:`OVERLAPS`: ``table[class index, threshold]``."""

    classes: dict[int, str]
    table: np.ndarray

    def ap_of(self, label: int) -> float:
        """One class's AP: the mean over the thresholds (NaN without ground truth)."""
        return float(np.mean(self.table[list(self.classes).index(label)]))

    def ap50_of(self, label: int) -> float:
        return float(self.table[list(self.classes).index(label), 0])

    @property
    def ap(self) -> float:
        return _nanmean(self.table)

    @property
    def ap50(self) -> float:
        return _nanmean(self.table[:, 0])

    def metrics(self, per_class: bool = True) -> dict[str, float]:
        """``ap``, ``ap50`` and, per class, ``ap_<name>``, ``ap50_<name>`` (NaN for a class without ground truth;
        no ``/`` in the names: that marks a group's metric in a run's store)."""
        out = {"ap": self.ap, "ap50": self.ap50}
        if per_class:
            for label, name in self.classes.items():
                out[f"ap_{name}"] = self.ap_of(label)
                out[f"ap50_{name}"] = self.ap50_of(label)
        return out


def _nanmean(a: np.ndarray) -> float:
    kept = a[~np.isnan(a)]
    return float(kept.mean()) if kept.size else math.nan


def evaluate(images: Iterable[ImageRegions], min_size: int = MIN_REGION_SIZE) -> InstanceAP:
    """AP of every evaluated class at every threshold over a set of images."""
    images = list(images)
    classes = instance_classes()
    table = np.array([[class_ap(images, c, float(t), min_size) for t in OVERLAPS] for c in classes])
    return InstanceAP(classes, table)


# ---- files in the official layout -------------------------------------------------------------------
def read_instance_ids(path: str | Path) -> np.ndarray:
    """A gtFine ``*_instanceIds.png`` as an int64 array."""
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def read_predictions(path: str | Path) -> list[InstancePrediction]:
    """A prediction file of the official evaluator's input format: one line per instance, ``<mask PNG path
    relative to the file> <label id> <confidence>``; a mask is its PNG read as 8-bit grey, non-zero inside."""
    path = Path(path)
    out = []
    seen: set[Path] = set()
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"{path}:{n}: expected '<mask png> <label id> <confidence>', got {line!r}")
        mask_file = (path.parent / parts[0]).resolve()
        if mask_file in seen:
            raise ValueError(f"{path}:{n}: mask {parts[0]} is listed twice; list each mask once")
        seen.add(mask_file)
        with Image.open(mask_file) as im:
            mask = np.asarray(im.convert("L")) != 0
        out.append(InstancePrediction(mask, int(float(parts[1])), float(parts[2])))
    return out
