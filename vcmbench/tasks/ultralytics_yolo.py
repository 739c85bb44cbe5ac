"""Ultralytics YOLO detection and instance segmentation, scored with COCO box / mask mAP (pycocotools).

Jocher, Chaurasia, Qiu, "Ultralytics YOLOv8", 2023 (https://github.com/ultralytics/ultralytics);
masks from YOLACT-style prototypes (Bolya et al., ICCV 2019). Checkpoints are loaded and
run through the package's own predictor (``YOLO(weights).predict``): letterbox to
``img_size`` with minimal (stride-aligned) padding, NMS at ``conf_thres``/``iou_thres``
(Ultralytics' validation defaults: 0.001 / 0.7), boxes and masks mapped back to the
original pixels (``retina_masks``). Images are grouped by shape before each predictor
call, so an image's prediction does not depend on which images share its batch.

Model class names are matched to the dataset's category names (:mod:`vcmbench.tasks.classes`;
``class_map`` in the card overrides it), so the same adapter scores the synth models on synth and
COCO-trained checkpoints on COCO, and a model trained for other classes is refused before any work.

Checkpoints are pickles of Ultralytics model objects. The package's own loader
(``ultralytics.nn.tasks.torch_safe_load``) unpickles them with ``weights_only=False`` unless
``ULTRALYTICS_SAFE_LOAD`` is set, so while a model is loaded here it is replaced by the restricted
unpickler of :mod:`vcmbench.models.safe_pickle` (tensors, torch/numpy data, ``ultralytics.nn`` model
classes): a checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..cards import Card
from ..contracts import Categories, CocoInstances
from ..errors import WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256
from ..metrics.coco_map import encode_masks
from ..models.safe_pickle import UnsafeCheckpointError, load_checkpoint
from ..registry import register
from ..weights import resolve_weights
from .base import Task, detection_rows
from .classes import check_setting, class_map

__all__ = [
    "IMPL_VERSION",
    "UltralyticsDetectTask",
    "UltralyticsSegmentTask",
    "UltralyticsYOLOTask",
    "restricted_ultralytics_loading",
]

#: bump when pre/post-processing changes in a way that changes predictions
IMPL_VERSION = "1"

_PATCH_LOCK = threading.Lock()


def _safe_torch_load(weight: Any, safe_only: Any = None) -> tuple[Any, str]:
    """Stands in for ``ultralytics.nn.tasks.torch_safe_load``: the checkpoint through the restricted unpickler."""
    ckpt = load_checkpoint(weight, "ultralytics")
    if not isinstance(ckpt, dict):  # a whole model saved with torch.save(model), as upstream accepts
        ckpt = {"model": getattr(ckpt, "model", ckpt)}
    return ckpt, str(weight)


@contextlib.contextmanager
def restricted_ultralytics_loading() -> Iterator[None]:
    """While active, Ultralytics loads ``.pt`` checkpoints through the restricted unpickler only."""
    import ultralytics.nn.tasks as ul_tasks

    with _PATCH_LOCK:
        original = ul_tasks.torch_safe_load
        ul_tasks.torch_safe_load = _safe_torch_load
        try:
            yield
        finally:
            ul_tasks.torch_safe_load = original


def checkpoint_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Class index -> name of an Ultralytics checkpoint, read without building a predictor."""
    ckpt = load_checkpoint(path, "ultralytics", mmap=True)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else getattr(ckpt, "model", ckpt)
    names = getattr(model, "names", None)
    if isinstance(names, Mapping):
        return {int(k): str(v) for k, v in names.items()}
    if isinstance(names, (list, tuple)):
        return {i: str(v) for i, v in enumerate(names)}
    raise WeightsError(f"{path}: the checkpoint's model states no class names")


class UltralyticsYOLOTask(Task):
    """Base of the Ultralytics adapters: weights, predictor settings, class-name mapping."""

    requires: ClassVar[tuple[type, ...]] = (CocoInstances, Categories)
    location_settings: ClassVar[tuple[str, ...]] = ("weights",)
    #: the Ultralytics task name the checkpoint must have
    yolo_task: ClassVar[str] = "detect"

    def __init__(
        self,
        weights: str | None = None,
        sha256: str | None = None,
        img_size: int = 320,
        conf_thres: float = 0.001,
        iou_thres: float = 0.7,
        max_det: int = 300,
        batch_size: int = 16,
        device: str = "auto",
        class_map: Any = "auto",
    ) -> None:
        if not weights:
            raise ValueError(f"{type(self).__name__}: `weights:` (a .pt file) is required")
        if not (isinstance(img_size, int) and img_size > 0):
            raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
        if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
            raise ValueError(f"conf_thres and iou_thres must lie in [0, 1], got {conf_thres}, {iou_thres}")
        if int(max_det) < 1 or int(batch_size) < 1:
            raise ValueError(f"max_det and batch_size must be at least 1, got {max_det}, {batch_size}")
        self.weights = weights
        self.sha256 = sha256
        self.img_size = int(img_size)
        self.conf_thres = float(conf_thres)
        self.iou_thres = float(iou_thres)
        self.max_det = int(max_det)
        self.batch_size = int(batch_size)
        self.device = device
        self.class_map = check_setting(class_map, type(self).__name__)
        self._weights_path: Path | None = None
        self._model: Any = None
        self._names: dict[int, str] | None = None
        self._maps: dict[str, dict[int, int]] = {}

    @classmethod
    def from_card(cls, card: Card) -> Task:
        """A relative ``weights:`` path is taken from the working directory if it exists there, else from
        the folder holding the card's ``tasks/`` folder (the repository, for the built-in cards)."""
        settings = dict(card.settings)
        w = settings.get("weights")
        if w and not Path(w).expanduser().is_absolute() and not Path(w).exists() and card.path is not None:
            candidate = Path(card.path).resolve().parent.parent / w
            if candidate.exists():
                settings["weights"] = str(candidate)
        task = cls(**settings)
        task.name = card.name
        task.card_settings = dict(card.settings)
        return task

    # -- identity -------------------------------------------------------------------------------------
    def weights_path(self) -> Path:
        if self._weights_path is None:
            self._weights_path = resolve_weights(self.weights, None, self.sha256, Path(str(self.weights)).name,
                                                 f"task {self.name}")  # fmt: skip
        return self._weights_path

    def version(self) -> str:
        import ultralytics

        return f"{IMPL_VERSION}+ultralytics{ultralytics.__version__}+weights.sha256:{file_sha256(self.weights_path())}"

    # -- model ----------------------------------------------------------------------------------------
    def running_on(self) -> str:
        """The device as Ultralytics names it: ``auto`` is ``cuda:0`` or ``cpu``; others pass through ("0", ...)."""
        if self.device in ("auto", "", None):
            return "cuda:0" if resolve_device(self.device, self.name).type == "cuda" else "cpu"
        return str(self.device)

    def load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("YOLO_OFFLINE", "1")  # never let the package reach the network
        path = self.weights_path()
        from ultralytics import YOLO

        try:
            with restricted_ultralytics_loading():
                model = YOLO(str(path), task=self.yolo_task)
        except UnsafeCheckpointError:
            raise
        except Exception as exc:
            raise WeightsError(
                f"task {self.name}: cannot load Ultralytics checkpoint {path} ({type(exc).__name__}: {exc}); "
                "retrain it with `vcmbench train-synth` or point `weights:` at a YOLOv8 .pt file"
            ) from None
        if model.task != self.yolo_task:
            raise WeightsError(
                f"task {self.name}: {path} is a {model.task!r} model, this adapter needs {self.yolo_task!r}"
            )
        self._names = {int(k): str(v) for k, v in model.names.items()}
        self._model = model

    def names(self) -> dict[int, str]:
        """Class index -> class name of the checkpoint (read from the file, no predictor built, until loaded)."""
        if self._names is None:
            try:
                self._names = checkpoint_names(self.weights_path())
            except UnsafeCheckpointError:
                raise
            except Exception as exc:
                raise WeightsError(f"task {self.name}: cannot read the class names of {self.weights_path()} "
                                   f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        return dict(self._names)

    def class_names(self) -> dict[int, str]:
        """Class index -> class name of the checkpoint (as :meth:`names`)."""
        return self.names()

    def _results(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Ultralytics ``Results`` per image; same-shape images share a predictor call."""
        if self._model is None:
            self.load()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{self.name}: expected an HxWx3 uint8 RGB image, got {im.shape} {im.dtype}")
            groups.setdefault(im.shape, []).append(i)
        out: list[Any] = [None] * len(images)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                bgr = [np.ascontiguousarray(images[i][..., ::-1]) for i in chunk]  # the predictor reads BGR
                res = self._model.predict(
                    bgr, imgsz=self.img_size, conf=self.conf_thres, iou=self.iou_thres, max_det=self.max_det,
                    device=self.running_on(), retina_masks=True, verbose=False, save=False,
                )  # fmt: skip
                for i, r in zip(chunk, res, strict=True):
                    out[i] = r
        return out

    # -- scoring --------------------------------------------------------------------------------------
    def category_map(self, dataset: Categories) -> dict[int, int]:
        """Class index -> dataset category id, by name (or the card's ``class_map``), checked: raises
        :class:`~vcmbench.tasks.classes.ClassMapError` when the classes do not fit the dataset's categories."""
        key = getattr(dataset, "name", type(dataset).__name__)
        if key not in self._maps:
            self._maps[key] = class_map(self.names(), dataset.categories(), self.class_map, f"task {self.name}", key)
        return self._maps[key]

    @staticmethod
    def _boxes(r: Any) -> list[list[float]]:
        b = r.boxes
        xyxy = b.xyxy.detach().cpu().double().numpy()
        conf = b.conf.detach().cpu().double().numpy()
        cls = b.cls.detach().cpu().double().numpy()
        return detection_rows(np.column_stack([xyxy.reshape(-1, 4), conf, cls]))

    @staticmethod
    def _coco_box(x1: float, y1: float, x2: float, y2: float) -> list[float]:
        return [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]


@register("task", "ultralytics_detect")
class UltralyticsDetectTask(UltralyticsYOLOTask):
    """Object detection; predictions per image: ``[[x1, y1, x2, y2, score, class_index], ...]`` (pixels)."""
    #: frames of video datasets are scored like images (against the COCO ground truth of their labels)
    media: ClassVar[tuple[str, ...]] = ("image", "video")

    metrics: ClassVar[tuple[str, ...]] = ("map", "map50")
    yolo_task: ClassVar[str] = "detect"

    def predict(self, images: Sequence[np.ndarray]) -> list[list[list[float]]]:
        return [self._boxes(r) for r in self._results(images)]

    def evaluate(self, predictions: Mapping[str, Any], dataset: Any) -> dict[str, float]:
        from ..metrics.coco_map import xyxy_bbox_eval

        # one array of result rows, not a dict per detection; classes of no category of the dataset left out
        return xyxy_bbox_eval(predictions, dataset, self.category_map(dataset))


@register("task", "ultralytics_segment")
class UltralyticsSegmentTask(UltralyticsYOLOTask):
    """Instance segmentation; predictions per image: ``{"size": [h, w], "boxes": [[x1, y1, x2, y2, score,
    class_index], ...], "masks": [RLE counts, ...]}`` (one compressed COCO RLE string per box)."""

    metrics: ClassVar[tuple[str, ...]] = ("segm_map", "map", "segm_map50", "map50")
    yolo_task: ClassVar[str] = "segment"

    def __init__(self, *args: Any, max_det: int = 100, **kw: Any) -> None:
        super().__init__(*args, max_det=max_det, **kw)

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        out = []
        for im, r in zip(images, self._results(images), strict=True):
            h, w = im.shape[:2]
            rows = self._boxes(r)
            rles: list[str] = []
            if rows:
                masks = r.masks.data.detach().cpu().numpy() > 0.5
                if masks.shape[1:] != (h, w):
                    raise ValueError(f"{self.name}: masks are {masks.shape[1:]}, image is {(h, w)}")
                rles = [e["counts"] for e in encode_masks(masks)]
            out.append({"size": [h, w], "boxes": rows, "masks": rles})
        return out

    def evaluate(self, predictions: Mapping[str, Any], dataset: Any) -> dict[str, float]:
        from ..metrics.coco_map import coco_bbox_eval, coco_segm_eval

        cats = self.category_map(dataset)
        boxes, segms = [], []
        for item_id, pred in predictions.items():
            image_id = dataset.image_id(item_id)
            for (x1, y1, x2, y2, score, cls), counts in zip(pred["boxes"], pred["masks"], strict=True):
                if int(cls) not in cats:
                    continue  # a class of no category of this dataset
                cat = cats[int(cls)]
                boxes.append({"image_id": image_id, "category_id": cat, "bbox": self._coco_box(x1, y1, x2, y2),
                              "score": round(score, 5)})  # fmt: skip
                segms.append({"image_id": image_id, "category_id": cat, "score": round(score, 5),
                              "segmentation": {"size": list(pred["size"]), "counts": counts}})  # fmt: skip
        img_ids = [dataset.image_id(k) for k in predictions]
        gt = dataset.coco_gt()
        return {**coco_segm_eval(gt, segms, img_ids), **coco_bbox_eval(gt, boxes, img_ids)}
