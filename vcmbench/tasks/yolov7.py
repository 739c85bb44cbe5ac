"""YOLOv7 object detection scored with COCO box mAP, following the official ``test.py``.

Wang, Bochkovskiy and Liao, "YOLOv7: Trainable bag-of-freebies sets new
state-of-the-art for real-time object detectors", CVPR 2023, arXiv:2207.02696
(https://github.com/WongKinYiu/yolov7, GPL-3.0). The official checkpoints
(``yolov7.pt``, ``yolov7-tiny.pt``, ...) are pickles of the upstream
``models.yolo.Model``; they are unpickled into the model classes of the
``yolov7-package`` PyPI package (``yolov7_package.models.*``), whose model code
is the upstream code with package-relative imports, by the restricted unpickler
of :mod:`vcmbench.models.safe_pickle` (tensors, torch/numpy data and those model
classes only: a checkpoint cannot run code).

Evaluation is :class:`~vcmbench.tasks.yolov5.YOLOv5Task`'s (batching, NMS call,
box scaling, class names matched to the dataset's categories, pycocotools), with
the settings of the official ``test.py --batch-size 1 --img 640 --conf 0.001 --iou 0.65``
(rectangular inference with pad 0.5, multi-label NMS, 300 detections): each
image is given the rectangle of a batch of its own, as for YOLOv5, so that its
prediction does not depend on its neighbours (see :mod:`vcmbench.tasks.yolov5`
for why batched rect is not emulated). What differs from YOLOv5:

- **loading**: upstream ``attempt_load`` (EMA weights if present, float32,
  ``Model.fuse()``: Conv+BN, RepConv re-parameterisation, implicit layers of
  ``IDetect`` folded into its convolutions) and its compatibility fixes;
- **resizing**: yolov7's loader resizes the long side to ``img_size`` with
  sizes rounded *down* (``int(w0 * r)``), YOLOv5 v7.0 rounds them up; an image
  can so end one pixel short of 640 on its long side (e.g. 581 px, since
  ``581 * (640 / 581) < 640`` in floating point). This is reproduced;
- **NMS**: yolov7's ``non_max_suppression`` differs from YOLOv5's in a
  per-class box offset of 4096 instead of 7680 px (no effect on 640-px inputs,
  whose boxes span less than 4096 px), in not pre-sorting candidates (the same
  boxes are kept; only the order of exactly tied scores may differ) and, the
  one material difference, for **single-class** models it scores boxes by
  objectness alone instead of objectness x class probability (yolov7 trains no
  class output when ``nc == 1``). YOLOv5's NMS is used, and for a single-class
  model the class column is set to 1 before it, which gives yolov7's scores
  exactly.

Inference runs in float32 on every device (``test.py`` casts to float16 on CUDA; here, as in
YOLOv5's ``val.py`` without ``--half``, it does not). ``predict`` also needs the ``yolov5`` package
(its ``non_max_suppression`` and ``scale_boxes``, via YOLOv5Task).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import WeightsError
from ..media.hashing import file_sha256
from ..registry import register
from . import yolov5 as _v5
from .yolov5 import YOLOv5Task, checkpoint_class_names, checkpoint_model, read_checkpoint

__all__ = [
    "IMPL_VERSION",
    "YOLOv7Task",
    "load_yolov7_checkpoint",
    "resize_long_side_floor",
]

#: bump when pre/post-processing changes in a way that changes predictions
IMPL_VERSION = "1"

#: the checkpoint looked up in the weights folder / cache when neither ``weights`` nor ``url`` names one
DEFAULT_WEIGHTS = "yolov7.pt"


def _yolov7_modules() -> tuple[Any, Any, Any]:
    """Import the yolov7-package modules quietly; returns (models.yolo, models.common, utils.datasets)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import yolov7_package.models.common as common
            import yolov7_package.models.yolo as yolo
            import yolov7_package.utils.datasets as datasets
        except ModuleNotFoundError as exc:
            raise _v5.missing_module_error("yolov7", exc) from None
    return yolo, common, datasets


def _detect_head(model: torch.nn.Module) -> Any:
    yolo, _, _ = _yolov7_modules()
    head = model.model[-1] if hasattr(model, "model") and len(model.model) else None
    heads = tuple(getattr(yolo, n) for n in ("Detect", "IDetect", "IAuxDetect") if hasattr(yolo, n))
    return head if isinstance(head, heads) else None


def load_yolov7_checkpoint(path: str | Path, device: str | torch.device = "cpu", fuse: bool = True) -> Any:
    """Load an official YOLOv7 ``.pt`` checkpoint as a float32 detection model in eval mode.

    As upstream ``attempt_load``: the EMA weights when the checkpoint has them,
    ``Model.fuse()`` (``fuse=False`` keeps the saved layers as they are), and
    the compatibility updates for checkpoints pickled by older torch versions.
    Unpickled by the restricted unpickler: a checkpoint referencing anything but
    tensors, torch/numpy data and yolov7 model classes is refused
    (:class:`~vcmbench.models.safe_pickle.UnsafeCheckpointError`).
    """
    yolo, common, _ = _yolov7_modules()
    model = checkpoint_model(read_checkpoint(path, "yolov7"))
    if not isinstance(model, yolo.Model) or _detect_head(model) is None:
        found = type(model).__name__ if model is not None else "nothing"
        raise WeightsError(
            f"checkpoint {path} holds no YOLOv7 detection model (expected a dict whose 'model' or 'ema' is a "
            f"yolov7 models.yolo.Model ending in a Detect/IDetect head, found {found}); "
            "use an official YOLOv7 release file such as yolov7.pt"
        )
    model = model.float().requires_grad_(False)
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    if fuse:
        # fuse() prints progress and ends with info(), a logged summary whose FLOPs count profiles a deep
        # copy of the model: skipped (shadowed on the instance while fusing)
        model.info = lambda *args, **kwargs: None
        try:
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = model.fuse()
        finally:
            del model.info
    model.eval().requires_grad_(False)  # (fused RepConvs get new parameters)
    for m in model.modules():
        if type(m) in (torch.nn.Hardswish, torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU):
            m.inplace = True
        elif type(m) is torch.nn.Upsample:
            m.recompute_scale_factor = None
        elif type(m) is common.Conv:
            m._non_persistent_buffers_set = set()
    head = _detect_head(model)
    head.grid = [torch.zeros(1)] * head.nl  # rebuilt on first use, on the model's device
    return model.to(device)


def resize_long_side_floor(image: np.ndarray, img_size: int) -> np.ndarray:
    """Scale so the long side is ``img_size``, sizes rounded down, as yolov7's ``load_image`` does.

    Shrinking uses ``INTER_AREA``, enlarging ``INTER_LINEAR``; an image whose
    long side already is ``img_size`` is left alone.
    """
    import cv2

    h0, w0 = image.shape[:2]
    r = img_size / max(h0, w0)
    if r == 1:
        return image
    return cv2.resize(
        image, (int(w0 * r), int(h0 * r)), interpolation=cv2.INTER_AREA if r < 1 else cv2.INTER_LINEAR
    )


def _objectness_only(module: torch.nn.Module, args: Any, output: Any) -> None:
    """Forward hook for single-class models: class probability 1, so YOLOv5's NMS scores = objectness (yolov7's)."""
    pred = output[0] if isinstance(output, (list, tuple)) else output
    pred[..., 5:] = 1.0


@register("task", "yolov7")
class YOLOv7Task(YOLOv5Task):
    """Official YOLOv7 checkpoint, test.py settings, COCO box mAP (pycocotools).

    Predictions per image: ``[[x1, y1, x2, y2, score, class_index], ...]`` in
    original pixel coordinates, ``class_index`` in 0..nc-1 (YOLO order).
    """

    family: ClassVar[str] = "yolov7"
    default_weights: ClassVar[str] = DEFAULT_WEIGHTS

    def version(self) -> str:
        # the evaluation code is YOLOv5Task's: its version enters too
        return f"{IMPL_VERSION}+yolov5.{_v5.IMPL_VERSION}+weights.sha256:{file_sha256(self.weights_path())}"

    # -- model ----------------------------------------------------------------------------------
    def _load_checkpoint(self, path: Path, device: torch.device) -> Any:
        model = load_yolov7_checkpoint(path, device)
        nc = int(_detect_head(model).nc)
        if nc == 1:
            model.register_forward_hook(_objectness_only)
        return model

    def _read_class_names(self, path: Path) -> dict[int, str]:
        return checkpoint_class_names(path, "yolov7")

    # -- inference ------------------------------------------------------------------------------
    def _resize(self, image: np.ndarray) -> np.ndarray:
        return resize_long_side_floor(image, self._input_size)

    def _letterbox(self) -> Any:
        return _yolov7_modules()[2].letterbox

    def _inference_context(self) -> Any:
        stack = contextlib.ExitStack()
        stack.enter_context(super()._inference_context())
        # yolov7's Detect._make_grid calls torch.meshgrid without indexing= (its default, "ij", is intended)
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=r".*torch\.meshgrid", category=UserWarning)
        return stack
