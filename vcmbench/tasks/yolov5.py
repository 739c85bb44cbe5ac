"""YOLOv5 object detection scored with COCO box mAP, following the official ``val.py``.

Jocher et al., "YOLOv5 by Ultralytics", 2020, doi:10.5281/zenodo.3908559
(https://github.com/ultralytics/yolov5). The official checkpoints are pickles
of the upstream model classes; they are unpickled by
:func:`vcmbench.models.safe_pickle.load_checkpoint`, which resolves only
tensors, torch/numpy data and the ``yolov5`` PyPI package's model classes (the
upstream ``models.*``/``utils.*`` names remapped into it) and refuses anything
else, so a checkpoint cannot run code. The package's ``letterbox``,
``non_max_suppression`` and ``scale_boxes`` are called at run time.

Pre- and post-processing match ``val.py --batch-size 1 --img 640 --conf-thres 0.001
--iou-thres 0.65`` (rectangular inference with pad 0.5, multi-label NMS, 300
detections, boxes scaled back to the original pixels). Batch size 1 is the
definition, not a shortcut: with larger batches ``val.py`` pads every image of a
batch to one rectangle sized from the aspect ratios of the images sorted next to
it, so its mAP depends on the batch size (coco-mini, yolov5n, CPU, mAP / mAP50:
0.3173 / 0.5188 at batch 1, 0.3180 / 0.5242 at 16, 0.3187 / 0.5220 at 32 with
NMS's time limit disabled). Here every image gets the rectangle of
a batch of its own, so its prediction depends on that image only, as the
per-image prediction cache requires; on coco-mini vcmbench gives 0.3173 / 0.5188,
``val.py --batch-size 1`` 0.3173 / 0.5188. Batched rect is not emulated because
an image's result would then depend on its neighbours; because ``val.py``'s
grouping of images with equal aspect ratios follows numpy's unstable sort, which
orders them differently in numpy 1.26 and 2.x; and because its NMS drops the rest
of a batch when its time limit (0.5 s + 0.05 s per image) is hit on a loaded CPU
(on 2 busy cores ``val.py`` at batch 32 scored 0.2018 / 0.3543 that way). Here
NMS runs per image, so the limit never cuts another image short. Images that end
up with the same input shape share a forward pass, which does not change their
results.

Inference runs in float32 on every device, as ``val.py`` run from the command
line does unless given ``--half``: float16 is opt-in there (only ``train.py``'s
validation and the ``speed``/``study`` tasks turn it on, on CUDA). On CUDA,
cuDNN's TF32 is turned off here too.

Classes are scored as the dataset's categories by name (:mod:`vcmbench.tasks.classes`):
the checkpoint's ``names`` against the dataset's ``categories()``; ``class_map`` in
the card overrides it. On COCO the names of the official COCO-80 checkpoints give
exactly ``val.py``'s ``coco80_to_coco91`` ids.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch

from ..contracts import Categories, CocoInstances
from ..errors import VcmbenchError, WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256
from ..models.safe_pickle import UnsafeCheckpointError, load_checkpoint
from ..registry import register
from ..weights import resolve_weights
from .base import Task, detection_rows
from .classes import check_setting, class_map

__all__ = [
    "IMPL_VERSION",
    "YOLOv5Task",
    "checkpoint_class_names",
    "load_yolov5_checkpoint",
    "missing_module_error",
    "rect_input_shape",
    "resize_long_side",
]

#: bump when pre/post-processing changes in a way that changes predictions
IMPL_VERSION = "1"

#: letterbox padding value (grey) used by the upstream dataloader
PAD_VALUE = 114


#: how to install what tasks yolov5 and yolov7 import (the yolov5 package without its own requirements)
YOLO_INSTALL = "pip install 'vcmbench[yolo]' && pip install --no-deps yolov5==7.0.14 (docs/install.md)"


def missing_module_error(task: str, exc: ModuleNotFoundError) -> VcmbenchError:
    """The error for a task whose package (or one of its imports) is not installed, naming the fix."""
    return VcmbenchError(f"task {task} cannot import {exc.name!r} ({exc}): install it with {YOLO_INSTALL}")


def _yolov5_modules() -> tuple[Any, Any, Any]:
    """Import the yolov5 package quietly; returns (models.yolo, utils.general, utils.augmentations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation and similar import-time noise
        try:
            import yolov5.models.yolo as yolo
            import yolov5.utils.augmentations as augmentations
            import yolov5.utils.general as general
        except ModuleNotFoundError as exc:
            raise missing_module_error("yolov5", exc) from None
    return yolo, general, augmentations


#: family -> (name in messages, the files it expects)
CHECKPOINT_KINDS = {
    "yolov5": ("YOLOv5", "YOLOv5 v6/v7 .pt file"),
    "yolov7": ("YOLOv7", "YOLOv7 .pt file (yolov7.pt, yolov7-tiny.pt, ...)"),
}


def read_checkpoint(path: str | Path, family: str, mmap: bool = False) -> Any:
    """The unpickled checkpoint (restricted unpickler); a refused global is re-raised as it is, any other
    failure becomes a WeightsError naming the file."""
    label, what = CHECKPOINT_KINDS[family]
    try:
        return load_checkpoint(path, family, mmap=mmap)
    except UnsafeCheckpointError:
        raise
    except Exception as exc:
        raise WeightsError(
            f"cannot load {label} checkpoint {path} ({type(exc).__name__}: {exc}); it is not an official "
            f"{what} or it is corrupt: download it again"
        ) from None


def checkpoint_model(ckpt: Any) -> Any:
    """The model of an upstream checkpoint dict: its EMA weights if present, else ``model`` (None if neither)."""
    if not isinstance(ckpt, dict):
        return None
    return ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")


def model_class_names(model: Any) -> dict[int, str]:
    """``class index -> name`` of a YOLOv5/YOLOv7 model (its ``names``, list or dict; placeholders ``"0"``,
    ``"1"``, ... for the classes of its detection head when it has none)."""
    names = getattr(model, "names", None)
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    nc = int(getattr(model, "nc", 0) or getattr(model.model[-1], "nc", 0))
    return {i: str(i) for i in range(nc)}


_NAMES_CACHE: dict[tuple[str, str, int, int], dict[int, str]] = {}


def checkpoint_class_names(path: str | Path, family: str = "yolov5") -> dict[int, str]:
    """The class names a checkpoint carries, read without building or fusing its model (cached per file)."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), family, st.st_size, st.st_mtime_ns)
    if key not in _NAMES_CACHE:
        model = checkpoint_model(read_checkpoint(path, family, mmap=True))
        if not isinstance(model, torch.nn.Module):
            raise WeightsError(f"checkpoint {path} holds no {CHECKPOINT_KINDS[family][0]} model (expected a dict "
                               "with 'model' or 'ema')")  # fmt: skip
        _NAMES_CACHE[key] = model_class_names(model)
    return dict(_NAMES_CACHE[key])


def load_yolov5_checkpoint(path: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> Any:
    """Load an official YOLOv5 ``.pt`` checkpoint as a float32 detection model in eval mode.

    Uses the EMA weights when the checkpoint has them (as upstream does), fuses
    Conv+BatchNorm, and clears the cached anchor grids so they are rebuilt on
    first use. Unpickled by the restricted unpickler: a checkpoint referencing
    anything but tensors, torch/numpy data and YOLOv5 model classes is refused
    (:class:`~vcmbench.models.safe_pickle.UnsafeCheckpointError`).
    """
    yolo, general, _ = _yolov5_modules()
    model = checkpoint_model(read_checkpoint(path, "yolov5"))
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(
            f"checkpoint {path} holds no YOLOv5 model (expected a dict with 'model' or 'ema'); "
            "use an official YOLOv5 release file"
        )
    model = model.float().requires_grad_(False)  # (a checkpoint saved before strip_optimizer still has grads on)
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
    original pixel coordinates, ``class_index`` in 0..nc-1 (the model's order);
    scored as the dataset category :meth:`category_map` gives it.
    """
    #: frames of video datasets are scored like images (against the COCO ground truth of their labels)
    media: ClassVar[tuple[str, ...]] = ("image", "video")
    requires: ClassVar[tuple[type, ...]] = (CocoInstances, Categories)

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
        class_map: str | Mapping[int, int] = "auto",
    ) -> None:
        class_map = check_setting(class_map, self.family)
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
        self._names: dict[int, str] | None = None
        self._maps: dict[str, dict[int, int]] = {}

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
        self._names = model_class_names(model)
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
    def class_names(self) -> dict[int, str]:
        """Class index -> name of the checkpoint's classes (read from the file, no model built, until loaded)."""
        if self._names is None:
            self._names = self._read_class_names(self.weights_path())
        return dict(self._names)

    def _read_class_names(self, path: Path) -> dict[int, str]:
        return checkpoint_class_names(path, "yolov5")

    def category_map(self, dataset: Categories) -> dict[int, int]:
        """Class index -> category id of ``dataset`` (by name, or the card's ``class_map``), checked: raises
        :class:`~vcmbench.tasks.classes.ClassMapError` when the classes do not fit the dataset's categories."""
        key = getattr(dataset, "name", type(dataset).__name__)
        if key not in self._maps:
            self._maps[key] = class_map(self._names_for_map(), dataset.categories(), self.class_map,
                                        f"task {self.name}", key)  # fmt: skip
        return self._maps[key]

    def _names_for_map(self) -> dict[int, str] | None:
        """The class names; None where a fixed or explicit ``class_map`` is set and no checkpoint is at hand
        (saved predictions scored without the weights: the checks needing names are skipped)."""
        if self.class_map != "auto" and self._names is None:
            try:
                self.weights_path()
            except WeightsError:
                return None
        return self.class_names()

    def coco_detections(self, predictions: Mapping[str, Any], dataset: Any) -> list[dict[str, Any]]:
        """COCO results-format dicts (xywh boxes, rounded like val.py's JSON export); detections of classes
        that map to no category of the dataset are left out. The rows :meth:`evaluate` scores, as dicts."""
        from ..metrics.coco_map import result_dicts, xyxy_results

        pairs = ((dataset.image_id(k), boxes) for k, boxes in predictions.items())
        return result_dicts(xyxy_results(pairs, self.category_map(dataset)))

    def evaluate(self, predictions: Mapping[str, Any], dataset: Any) -> dict[str, float]:
        from ..metrics.coco_map import xyxy_bbox_eval

        return xyxy_bbox_eval(predictions, dataset, self.category_map(dataset))


def _to_lists(det: torch.Tensor) -> list[list[float]]:
    """(n, 6) tensor -> JSON-ready rows: boxes to 1e-4 px, score to 1e-6, integer class."""
    return detection_rows(det.detach().cpu().double().numpy())
