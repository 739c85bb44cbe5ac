"""Face recall: a privacy metric for coding for machines (lower recall = more private).

SA-ICM (Shindo et al., "Image Coding for Machines with Edge Information Learning
Using Segment Anything", ICIP 2024) claims that coding only edge information removes
facial texture on the encoder side. This task measures it: a face detector runs on
the original and on the decoded image, and **face recall** is the fraction of the
faces found on the originals that are found again (IoU >= ``iou_thres``) on the
decoded images, pooled over the dataset. The uncompressed point has recall 1 by
construction.

Detector: MTCNN (Zhang et al., "Joint Face Detection and Alignment Using Multitask
Cascaded Convolutional Networks", IEEE SPL 2016) as packaged by ``facenet-pytorch``,
whose wheel ships the P/R/O-Net weights (``facenet_pytorch/data/*.pt``): nothing is
downloaded. Install with ``pip install facenet-pytorch --no-deps`` (its metadata pins
an old torch; the MTCNN code runs on current torch and torchvision).

Design: the task contract's ``evaluate(predictions, dataset)`` only receives the
predictions of the images being scored, so the reference detections (on the
originals) are computed inside :meth:`FacesTask.evaluate` from
``dataset.load_image(item)``, once per image content: they are cached in memory
and on disk under ``$VCMBENCH_CACHE/faces/<detector identity>/<image sha256>.json``.
The cache key holds the detector settings and weights, so it can never serve stale
detections.

Metrics: ``face_recall`` (headline; declared lower-is-better, so reports sign its BD values to read
as a privacy gain when a codec keeps fewer faces), ``faces_ref`` (faces on the originals),
``faces_found`` (detections on the decoded images), ``face_precision`` (share of
those that match a reference face), ``images_with_faces``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256, stable_hash
from ..media.paths import cache_root
from ..registry import register
from .base import Task

if TYPE_CHECKING:
    from ..datasets.base import Dataset

IMPL_VERSION = "1"


def _package_weights() -> list[Path]:
    """The MTCNN weight files inside the installed facenet-pytorch package."""
    try:
        import facenet_pytorch
    except ImportError:
        raise WeightsError(
            "task faces needs facenet-pytorch (MTCNN, weights inside the wheel): "
            "pip install --no-deps facenet-pytorch==2.6.0 (its metadata pins torch<2.3; docs/install.md)"
        ) from None
    data = Path(facenet_pytorch.__file__).parent / "data"
    files = [data / f"{n}.pt" for n in ("pnet", "rnet", "onet")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise WeightsError(f"task faces: MTCNN weights missing from the facenet-pytorch install: {missing}; reinstall it")
    return files


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``a`` (n, 4) and ``b`` (m, 4) in x1, y1, x2, y2."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_count(ref: np.ndarray, found: np.ndarray, iou_thres: float) -> int:
    """Reference boxes matched one-to-one by found boxes (greedy on IoU, highest first)."""
    iou = box_iou(ref, found)
    if iou.size == 0:
        return 0
    matched = 0
    used_r: set[int] = set()
    used_f: set[int] = set()
    for flat in np.argsort(-iou, axis=None):
        r, f = divmod(int(flat), iou.shape[1])
        if iou[r, f] < iou_thres:
            break
        if r in used_r or f in used_f:
            continue
        used_r.add(r)
        used_f.add(f)
        matched += 1
    return matched


@register("task", "faces")
class FacesTask(Task):
    """MTCNN face detection on decoded images, scored as recall of the faces found on the originals.

    Predictions per image: ``[[x1, y1, x2, y2, score], ...]`` with score >= ``score_thres``.
    """

    metrics: ClassVar[tuple[str, ...]] = ("face_recall",)
    #: the privacy metric: the fewer faces found again on the decoded images, the more private
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"face_recall"})
    background_scoring: ClassVar[bool] = False  # evaluate runs the detector on the originals (when not cached)
    location_settings: ClassVar[tuple[str, ...]] = ("device", "cache")

    def __init__(
        self,
        score_thres: float = 0.9,
        iou_thres: float = 0.5,
        min_face_size: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str = "auto",
        batch_size: int = 8,
        cache: bool = True,
    ) -> None:
        if not 0 <= score_thres <= 1 or not 0 < iou_thres <= 1:
            raise ValueError(f"faces: score_thres must lie in [0, 1] and iou_thres in (0, 1], got {score_thres}, {iou_thres}")
        if len(thresholds) != 3:
            raise ValueError(f"faces: thresholds needs one value per MTCNN stage (3), got {thresholds!r}")
        self.score_thres = float(score_thres)
        self.iou_thres = float(iou_thres)
        self.min_face_size = int(min_face_size)
        self.thresholds = [float(t) for t in thresholds]
        self.factor = float(factor)
        self.device = device
        self.batch_size = int(batch_size)
        self.cache = bool(cache)
        self.name = "faces"
        self._model: Any = None
        self._lock = threading.Lock()
        self._reference: dict[str, list[list[float]]] = {}

    # ---- identity -----------------------------------------------------------------------------
    def version(self) -> str:
        from importlib.metadata import version

        h = hashlib.sha256()
        for f in _package_weights():
            h.update(f.read_bytes())
        return f"{IMPL_VERSION}+facenet-pytorch-{version('facenet-pytorch')}+weights.sha256:{h.hexdigest()[:16]}"

    def detector_identity(self) -> str:
        """What determines a detection (settings + weights), not where it runs."""
        return stable_hash({"settings": {"min_face_size": self.min_face_size, "thresholds": self.thresholds,
                                         "factor": self.factor}, "version": self.version()})  # fmt: skip

    # ---- model --------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        _package_weights()
        from facenet_pytorch import MTCNN

        dev = resolve_device(self.device, self.name)
        self._model = MTCNN(keep_all=True, min_face_size=self.min_face_size, thresholds=self.thresholds,
                            factor=self.factor, post_process=False, select_largest=False, device=dev)  # fmt: skip

    def detect(self, image: np.ndarray) -> list[list[float]]:
        """Every MTCNN detection of one HxWx3 uint8 RGB image: ``[x1, y1, x2, y2, score]`` rows."""
        import torch

        if self._model is None:
            self.load()
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"faces: expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        with self._lock, torch.inference_mode():
            boxes, probs = self._model.detect(np.ascontiguousarray(image))
        if boxes is None:
            return []
        rows = []
        for box, p in zip(np.asarray(boxes, dtype=np.float64), np.asarray(probs, dtype=np.float64), strict=True):
            rows.append([round(float(v), 3) for v in box] + [round(float(p), 6)])
        return rows

    def predict(self, images: Sequence[np.ndarray]) -> list[list[list[float]]]:
        return [[r for r in self.detect(np.asarray(im)) if r[4] >= self.score_thres] for im in images]

    # ---- scoring ------------------------------------------------------------------------------
    def _cache_file(self, sha: str) -> Path:
        return cache_root() / "faces" / self.detector_identity() / f"{sha}.json"

    def reference(self, item: Any, dataset: Dataset) -> list[list[float]]:
        """Detections on the original image of ``item`` (memory cache, then disk cache, then MTCNN)."""
        sha = file_sha256(item.path)
        if sha in self._reference:
            return self._reference[sha]
        path = self._cache_file(sha)
        rows: list[list[float]] | None = None
        if self.cache and path.is_file():
            try:
                rows = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                rows = None
        if rows is None:
            rows = self.detect(dataset.load_image(item))
            if self.cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(rows))
                os.replace(tmp, path)
        self._reference[sha] = rows
        return rows

    def evaluate(self, predictions: Mapping[str, Any], dataset: Dataset) -> dict[str, float]:
        items = {it.id: it for it in dataset.all_items()}
        ref_total = found_total = matched_total = with_faces = 0
        for item_id, dets in predictions.items():
            if item_id not in items:
                raise ValueError(f"faces: prediction for item {item_id!r}, which dataset {dataset.name} does not have")
            ref = np.array([r[:4] for r in self.reference(items[item_id], dataset) if r[4] >= self.score_thres],
                           dtype=np.float64).reshape(-1, 4)  # fmt: skip
            found = np.array([r[:4] for r in dets if r[4] >= self.score_thres], dtype=np.float64).reshape(-1, 4)
            ref_total += len(ref)
            found_total += len(found)
            with_faces += int(len(ref) > 0)
            matched_total += match_count(ref, found, self.iou_thres)
        nan = float("nan")
        return {
            "face_recall": matched_total / ref_total if ref_total else nan,
            "faces_ref": float(ref_total),
            "faces_found": float(found_total),
            "face_precision": matched_total / found_total if found_total else nan,
            "images_with_faces": float(with_faces),
        }
