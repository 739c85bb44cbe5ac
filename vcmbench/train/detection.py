"""TL-ICM's task loss: YOLOv5's own detection loss of the decoded image against ground-truth boxes.

The task-loss approach to image coding for machines trains the codec through the frozen
recognition model it serves: the decoded image x̂ goes through the detector and the
detector's training loss against the ground truth is the distortion (Le et al., "Image
Coding for Machines: an End-to-End Learned Approach", ICASSP 2021; the TL-ICM baseline of
Shindo et al., ICIP 2024, Eq. 2). Here the detector is the YOLOv5 checkpoint used for
evaluation, loaded by the evaluation task's loader (restricted unpickler), Conv+BN fused,
every parameter frozen, BatchNorm in eval mode; only its detection head answers in training
form (raw per-level outputs) so that the ``yolov5`` package's ``ComputeLoss`` (CIoU box
loss, objectness and class BCE, YOLOv5's anchor matching) scores them as ``train.py`` does.

Loss gains (``hyp``): the checkpoint's own ``hyp`` (what it was trained with; ``train.py``
stores it already scaled for its 3 detection layers and 80 classes at 640 px) or, when it
has none, the package's ``hyp.scratch-low.yaml`` scaled the way ``train.py`` scales it. The
objectness gain is then scaled by ``(crop / 640)²``, as ``train.py`` does for
``--img crop``: its BCE is a mean over the grid cells, whose number grows with the image.
The loss is per image: ``ComputeLoss`` returns the batch sum, divided here by the batch size.

Ground truth (:func:`read_boxes`): a COCO instances JSON. Boxes of crowd annotations are left
out (as in YOLOv5's COCO labels); categories become the detector's class indices by name
(:func:`vcmbench.tasks.classes.class_map`, the map evaluation scores with), and categories the
detector has no class for are dropped. A crop keeps the part of each box inside it when that
part passes YOLOv5's own filter for augmented boxes (``box_candidates``: over 2 px wide and
high, over 10 % of the box's area, aspect ratio under 100).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import VcmbenchError

__all__ = ["DetectionLoss", "TaskLossError", "crop_boxes", "detection_hyp", "read_boxes", "yolo_targets"]

#: YOLOv5 ``train.py``'s reference image size for the loss gains
HYP_IMG_SIZE = 640


class TaskLossError(VcmbenchError):
    """A problem with the task loss's detector or ground truth; the message says how to fix it."""


# ---- ground truth --------------------------------------------------------------------------------
def read_boxes(annotations: str | os.PathLike[str], files: Sequence[Path],
               class_names: Mapping[int, str]) -> dict[str, np.ndarray]:  # fmt: skip
    """Image file name -> its ground-truth boxes, float32 (n, 5): detector class index, x1, y1, x2, y2 (pixels).

    Every image of ``files`` must be listed in ``annotations`` (an image without objects is listed with none).
    """
    from ..tasks.classes import ClassMapError, class_map

    data = _read_json(annotations)
    by_name = {Path(str(im["file_name"])).name: int(im["id"]) for im in data.get("images", [])}
    missing = [f.name for f in files if f.name not in by_name]
    if missing:
        raise TaskLossError(f"{len(missing)} training image(s) are not in {annotations} (e.g. {', '.join(missing[:3])}); "
                            "pass the instances JSON of the images in --train-dir")  # fmt: skip
    try:
        index_of = {cid: idx for idx, cid in class_map(class_names, data.get("categories", []), "auto",
                                                       "the TL-ICM detector", str(annotations)).items()}  # fmt: skip
    except ClassMapError as exc:
        raise TaskLossError(str(exc)) from None
    per_image: dict[int, list[list[float]]] = {}
    for ann in data.get("annotations", []):
        x, y, w, h = (float(v) for v in ann["bbox"])
        cls = index_of.get(int(ann["category_id"]))
        if ann.get("iscrowd") or cls is None or w <= 0 or h <= 0:
            continue
        per_image.setdefault(int(ann["image_id"]), []).append([cls, x, y, x + w, y + h])
    return {f.name: np.asarray(per_image.get(by_name[f.name], []), dtype=np.float32).reshape(-1, 5) for f in files}


def _read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TaskLossError(f"--annotations {path} not found (a COCO instances JSON)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise TaskLossError(f"cannot read --annotations {path}: {exc}") from None
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise TaskLossError(f"--annotations {path} is not a COCO instances JSON (no images / annotations)")
    return data


def crop_boxes(boxes: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """The boxes (n, 5: class, x1, y1, x2, y2) seen in the ``size`` x ``size`` crop at (y0, x0), in crop pixels,
    clipped to it; the remnants YOLOv5's ``box_candidates`` rejects are dropped."""
    from yolov5.utils.augmentations import box_candidates

    if not len(boxes):
        return boxes.reshape(0, 5)
    shifted = boxes[:, 1:] - np.array([x0, y0, x0, y0], dtype=np.float32)
    clipped = shifted.clip(0, size)
    keep = box_candidates(shifted.T, clipped.T)
    return np.concatenate([boxes[keep, :1], clipped[keep]], axis=1).astype(np.float32)


def yolo_targets(per_image: Sequence[np.ndarray], size: int) -> Tensor:
    """YOLOv5's target rows (image index, class, centre x, centre y, width, height; coordinates / ``size``)."""
    rows = []
    for i, boxes in enumerate(per_image):
        if len(boxes):
            xy = (boxes[:, 1:3] + boxes[:, 3:5]) / 2
            wh = boxes[:, 3:5] - boxes[:, 1:3]
            rows.append(np.concatenate([np.full((len(boxes), 1), i), boxes[:, :1], xy / size, wh / size], axis=1))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32)) if rows else torch.zeros(0, 6)


# ---- the loss ------------------------------------------------------------------------------------
def _package_hyp(nl: int, nc: int) -> dict[str, float]:
    """``hyp.scratch-low.yaml`` of the yolov5 package, scaled as ``train.py`` scales it at 640 px."""
    import yaml
    import yolov5

    path = Path(yolov5.__file__).parent / "data" / "hyps" / "hyp.scratch-low.yaml"
    hyp = dict(yaml.safe_load(path.read_text()))
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= 3 / nl
    return hyp


def detection_hyp(model: Any, crop: int) -> dict[str, float]:
    """The loss gains for ``crop`` px inputs (see the module docstring)."""
    detect = model.model[-1]
    stored = getattr(model, "hyp", None)
    hyp = dict(stored) if isinstance(stored, Mapping) else _package_hyp(int(detect.nl), int(detect.nc))
    hyp["obj"] *= (crop / HYP_IMG_SIZE) ** 2
    return hyp


class DetectionLoss(nn.Module):
    """YOLOv5's detection loss of an image batch against :func:`yolo_targets` rows; the detector is frozen."""

    def __init__(self, weights: str | os.PathLike[str], crop: int) -> None:
        super().__init__()
        from ..tasks.yolov5 import load_yolov5_checkpoint

        model = load_yolov5_checkpoint(weights, "cpu", fuse=True)
        for m in model.modules():
            if hasattr(m, "inplace"):
                m.inplace = False  # in-place activations break backpropagation into x̂
        if not hasattr(model.model[-1], "anchors"):
            raise TaskLossError(f"--detector-weights {weights}: its last layer is not a YOLOv5 Detect head")
        model.hyp = detection_hyp(model, crop)
        self.detector = model.eval().requires_grad_(False)
        self.weights = str(weights)
        self._compute: tuple[torch.device, Any] | None = None

    def class_names(self) -> dict[int, str]:
        from ..tasks.yolov5 import model_class_names

        return model_class_names(self.detector)

    def train(self, mode: bool = True) -> DetectionLoss:
        return super().train(False)  # always frozen, BatchNorm statistics included

    def _loss_fn(self, device: torch.device) -> Any:
        if self._compute is None or self._compute[0] != device:
            from yolov5.utils.loss import ComputeLoss

            self._compute = (device, ComputeLoss(self.detector))
        return self._compute[1]

    def forward(self, x: Tensor, targets: Tensor) -> Tensor:
        """Mean per-image loss (box + objectness + class) of ``x`` (N, 3, H, W in [0, 1])."""
        head = self.detector.model[-1]
        head.training = True  # raw per-level outputs, as the loss expects; everything else stays in eval mode
        try:
            preds = self.detector(x)
        finally:
            head.training = False
        loss, _ = self._loss_fn(x.device)(preds, targets.to(x.device))
        return loss.reshape(()) / x.shape[0]
