"""YOLOv5 object detection scored with COCO box mAP, following the official ``val.py``.

Jocher et al., "YOLOv5 by Ultralytics", 2020, doi:10.5281/zenodo.3908559
(https://github.com/ultralytics/yolov5). The official checkpoints are pickles
of the upstream model classes; they are loaded through the ``yolov5`` PyPI
package's model code, and its ``letterbox``, ``non_max_suppression`` and
``scale_boxes`` are called at run time.

Pre- and post-processing match ``val.py`` (``--img 640 --conf 0.001 --iou 0.65``,
rectangular inference with pad 0.5, multi-label NMS, 300 detections, boxes
scaled back to the original pixels) with one deliberate difference: ``val.py``
sizes each rectangular batch from the aspect ratios of the images sorted next to
it, whereas here every image gets the rectangle it would get in a batch of its
own, so that its prediction depends on that image only (predictions are cached
per image). Images that end up with the same input shape share a forward pass.
Inference runs in float32 on every device (``val.py`` uses float16 on CUDA).
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import types
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch

from ..contracts import CocoInstances
from ..errors import WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256
from ..registry import register
from ..weights import resolve_weights
from .base import Task

__all__ = ["IMPL_VERSION", "YOLOv5Task", "load_yolov5_checkpoint", "rect_input_shape", "resize_long_side"]

#: bump when pre/post-processing changes in a way that changes predictions
IMPL_VERSION = "1"

CLASS_MAPS = ("coco80_to_coco91", "identity")

#: letterbox padding value (grey) used by the upstream dataloader
PAD_VALUE = 114


def _yolov5_modules() -> tuple[Any, Any, Any]:
    """Import the yolov5 package quietly; returns (models.yolo, utils.general, utils.augmentations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation and similar import-time noise
        import yolov5.models.yolo as yolo
        import yolov5.utils.augmentations as augmentations
        import yolov5.utils.general as general
    return yolo, general, augmentations


class _RemapUnpickler(pickle.Unpickler):
    """Resolves the upstream module names (``models.yolo``, ``utils.*``) inside the ``yolov5`` package.

    Without this, unpickling imports a second, top-level copy of the package's
    ``models`` modules, whose classes fail the package's own ``isinstance``
    checks (so ``fuse()`` silently does nothing) and may collide with other
    packages that also ship a top-level ``models`` (e.g. YOLOv7).
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "models" or module.startswith(("models.", "utils.")) or module == "utils":
            module = "yolov5." + module
        return super().find_class(module, name)


_PICKLE = types.SimpleNamespace(
    __name__="vcmbench_yolov5_pickle",
    Unpickler=_RemapUnpickler,
    load=lambda f, **kw: _RemapUnpickler(f, **kw).load(),
)


def load_yolov5_checkpoint(path: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> Any:
    """Load an official YOLOv5 ``.pt`` checkpoint as a float32 detection model in eval mode.

    Uses the EMA weights when the checkpoint has them (as upstream does), fuses
    Conv+BatchNorm, and clears the cached anchor grids so they are rebuilt on
    first use.
    """
    yolo, general, _ = _yolov5_modules()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except Exception as exc:
        raise WeightsError(
            f"cannot load YOLOv5 checkpoint {path} ({type(exc).__name__}: {exc}); it is not an official "
            "YOLOv5 v6/v7 .pt file or it is corrupt: download it again"
        ) from None
    model = None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(
            f"checkpoint {path} holds no YOLOv5 model (expected a dict with 'model' or 'ema'); "
            "use an official YOLOv5 release file"
        )
    model = model.float()
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    logger = logging.getLogger(general.LOGGING_NAME)
    level = logger.level
    logger.setLevel(logging.WARNING)  # fuse() logs a model summary
    try:
        if fuse and hasattr(model, "fuse"):
            model = model.fuse()
    finally:
        logger.setLevel(level)
    model.eval().requires_grad_(False)
    for m in model.modules():
        if isinstance(
            m, (torch.nn.Hardswish, torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU)
        ):
            m.inplace = True
        elif isinstance(m, yolo.Detect):
            m.inplace = True
            m.grid = [torch.empty(0) for _ in range(m.nl)]
            m.anchor_grid = [torch.empty(0) for _ in range(m.nl)]
        elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    return model.to(device)


def resize_long_side(image: np.ndarray, img_size: int) -> np.ndarray:
    """Scale so the long side is ``img_size`` (sizes rounded up), as val.py's image loader does.

    Shrinking uses ``INTER_AREA``, enlarging ``INTER_LINEAR``; an image whose long
    side already is ``img_size`` is left alone.
    """
    import cv2

    h0, w0 = image.shape[:2]
    r = img_size / max(h0, w0)
    if r == 1:
        return image
    size = (math.ceil(w0 * r), math.ceil(h0 * r))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR if r > 1 else cv2.INTER_AREA)


def rect_input_shape(
    height: int, width: int, img_size: int, stride: int = 32, pad: float = 0.5
) -> tuple[int, int]:
    """The (h, w) network input of val.py's rectangular inference for a batch holding only this image."""
    a = height / width
    rel = [a, 1.0] if a < 1 else [1.0, 1.0 / a] if a > 1 else [1.0, 1.0]
    shape = np.ceil(np.array(rel) * img_size / stride + pad).astype(int) * stride
    return int(shape[0]), int(shape[1])


@register("task", "yolov5")
class YOLOv5Task(Task):
    """Official YOLOv5 checkpoint, val.py settings, COCO box mAP (pycocotools).

    Predictions per image: ``[[x1, y1, x2, y2, score, class_index], ...]`` in
    original pixel coordinates, ``class_index`` in 0..79 (YOLO order).
    """
    #: frames of video datasets are scored like images (against the COCO ground truth of their labels)
    media: ClassVar[tuple[str, ...]] = ("image", "video")
    requires: ClassVar[tuple[type, ...]] = (CocoInstances,)

    metrics: ClassVar[tuple[str, ...]] = ("map", "map50")
    location_settings: ClassVar[tuple[str, ...]] = ("weights", "url")
    #: the model family, in messages (and the default task name)
    family: ClassVar[str] = "yolov5"
    #: the checkpoint looked up in the weights folder / cache when neither ``weights`` nor ``url`` names one
    default_weights: ClassVar[str] = "yolov5n.pt"

    def __init__(
        self,
        weights: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        img_size: int = 640,
        conf_thres: float = 0.001,
        iou_thres: float = 0.65,
        max_det: int = 300,
        batch_size: int = 8,
        device: str = "auto",
        class_map: str = "coco80_to_coco91",
    ) -> None:
        if class_map not in CLASS_MAPS:
            raise ValueError(f"{self.family}: class_map must be one of {', '.join(CLASS_MAPS)}, got {class_map!r}")
        if not (isinstance(img_size, int) and img_size > 0):
            raise ValueError(f"{self.family}: img_size must be a positive integer, got {img_size!r}")
        if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
            raise ValueError(
                f"{self.family}: conf_thres and iou_thres must lie in [0, 1], got {conf_thres}, {iou_thres}"
            )
        if int(max_det) < 1 or int(batch_size) < 1:
            raise ValueError(
                f"{self.family}: max_det and batch_size must be at least 1, got {max_det}, {batch_size}"
            )
        self.weights = weights
        self.url = url
        self.sha256 = sha256
        self.img_size = int(img_size)
        self.conf_thres = float(conf_thres)
        self.iou_thres = float(iou_thres)
        self.max_det = int(max_det)
        self.batch_size = int(batch_size)
        self.device = device
        self.class_map = class_map
        self.name = self.family
        self._weights_path: Path | None = None
        self._model: Any = None
        self._device: torch.device | None = None
        self._stride = 32
        self._input_size = self.img_size

    # -- identity -------------------------------------------------------------------------------
    def weights_path(self) -> Path:
        """The verified checkpoint file (resolved once: explicit path, weights dir, cache, download)."""
        if self._weights_path is None:
            if self.weights:
                filename = Path(self.weights).name
            elif self.url:
                filename = Path(urlparse(self.url).path).name or self.default_weights
            else:
                filename = self.default_weights
            self._weights_path = resolve_weights(
                self.weights, self.url, self.sha256, filename, f"task {self.name}"
            )
        return self._weights_path

    def version(self) -> str:
        return f"{IMPL_VERSION}+weights.sha256:{file_sha256(self.weights_path())}"

    # -- model ----------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        self._device = resolve_device(self.device, self.family)
        model = self._load_checkpoint(self.weights_path(), self._device)
        self._stride = max(int(model.stride.max()), 32)
        self._input_size = math.ceil(self.img_size / self._stride) * self._stride  # val.py's check_img_size
        self._model = model

    def _load_checkpoint(self, path: Path, device: torch.device) -> Any:
        """The detection model of a checkpoint, in eval mode on ``device``."""
        return load_yolov5_checkpoint(path, device)

    # -- inference ------------------------------------------------------------------------------
    def _resize(self, image: np.ndarray) -> np.ndarray:
        """The image with its long side scaled to the input size, as the upstream dataloader does."""
        return resize_long_side(image, self._input_size)

    def _letterbox(self) -> Any:
        """The upstream ``letterbox`` function."""
        return _yolov5_modules()[2].letterbox

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, tuple[float, float]]]:
        """Letterboxed HxWx3 uint8 network input and (gain, (pad_w, pad_h)) to map boxes back."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{self.family}: expected an HxWx3 uint8 RGB image, got shape {image.shape} {image.dtype}"
            )
        h0, w0 = image.shape[:2]
        resized = self._resize(image)
        shape = rect_input_shape(h0, w0, self._input_size, self._stride)
        boxed, _, pad = self._letterbox()(
            resized, shape, color=(PAD_VALUE,) * 3, auto=False, scaleup=False, stride=self._stride
        )
        gain = resized.shape[0] / h0  # val.py maps boxes back with the height ratio of the resize
        return boxed, (gain, (float(pad[0]), float(pad[1])))

    def _inference_context(self) -> Any:
        if self._device is not None and self._device.type == "cuda":
            # full float32 convolutions (no TF32), fixed algorithms: GPU results stay close to the CPU's
            return torch.backends.cudnn.flags(
                enabled=True, benchmark=False, deterministic=True, allow_tf32=False
            )
        return contextlib.nullcontext()

    def predict(self, images: Sequence[np.ndarray]) -> list[list[list[float]]]:
        if self._model is None:
            self.load()
        _, general, _ = _yolov5_modules()
        prepared = [self.preprocess(np.asarray(im)) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (boxed, _) in enumerate(prepared):
            groups.setdefault(boxed.shape, []).append(i)
        out: list[list[list[float]]] = [[] for _ in images]
        with torch.inference_mode(), self._inference_context():
            for members in groups.values():
                for start in range(0, len(members), self.batch_size):
                    chunk = members[start : start + self.batch_size]
                    batch = np.stack([prepared[i][0] for i in chunk]).transpose(0, 3, 1, 2)
                    x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device).float() / 255
                    raw = self._model(x)
                    raw = raw[0] if isinstance(raw, (list, tuple)) else raw
                    for j, i in enumerate(chunk):
                        # one image per NMS call: its time limit then never cuts other images short
                        det = general.non_max_suppression(
                            raw[j : j + 1],
                            self.conf_thres,
                            self.iou_thres,
                            multi_label=True,
                            max_det=self.max_det,
                        )[0]
                        gain, pad = prepared[i][1]
                        general.scale_boxes(x.shape[2:], det[:, :4], images[i].shape[:2], ((gain, gain), pad))
                        out[i] = _to_lists(det)
        return out

    # -- scoring --------------------------------------------------------------------------------
    def category_ids(self) -> list[int]:
        """Dataset category id of each class index (empty for ``identity``: the index is the id)."""
        if self.class_map == "identity":
            return []
        _, general, _ = _yolov5_modules()
        return list(general.coco80_to_coco91_class())

    def coco_detections(self, predictions: Mapping[str, Any], dataset: CocoInstances) -> list[dict[str, Any]]:
        """COCO results-format dicts (xywh boxes, rounded like val.py's JSON export)."""
        cats = self.category_ids()
        dets = []
        for item_id, boxes in predictions.items():
            image_id = dataset.image_id(item_id)
            for x1, y1, x2, y2, score, cls in boxes:
                dets.append(
                    {
                        "image_id": image_id,
                        "category_id": cats[int(cls)] if cats else int(cls),
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(score, 5),
                    }
                )
        return dets

    def evaluate(self, predictions: Mapping[str, Any], dataset: CocoInstances) -> dict[str, float]:
        from ..metrics.coco_map import coco_bbox_eval

        dets = self.coco_detections(predictions, dataset)
        img_ids = [dataset.image_id(k) for k in predictions]
        return coco_bbox_eval(dataset.coco_gt(), dets, img_ids)


def _to_lists(det: torch.Tensor) -> list[list[float]]:
    """(n, 6) tensor -> JSON-ready rows: boxes to 1e-4 px, score to 1e-6, integer class."""
    rows = []
    for x1, y1, x2, y2, score, cls in det.detach().cpu().double().tolist():
        rows.append([round(x1, 4), round(y1, 4), round(x2, 4), round(y2, 4), round(score, 6), int(cls)])
    return rows
