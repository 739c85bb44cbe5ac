"""A YOLOv5n with random weights and chosen class names, saved as an official-style checkpoint.

Named as what it is: the real yolov5n architecture (the ``yolov5`` package's ``models/yolov5n.yaml``) with
random weights, standing in for a YOLOv5 trained on another dataset (e.g. VisDrone), whose checkpoint would
carry that dataset's class names. Saved the way upstream's ``strip_optimizer`` leaves a release file, with
the classes recorded under the upstream module names (``models.yolo.DetectionModel``, ``models.common.*``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .yolov7_models import save_upstream_checkpoint


def build_random_yolov5n(nc: int, names: Sequence[str] | None = None, seed: int = 0) -> Any:
    """yolov5n with ``nc`` classes, random weights, and ``names`` (default: yolov5's placeholders) as its names."""
    import yolov5
    import yolov5.models.yolo as v5_yolo
    import yolov5.utils.general as v5_general

    cfg = Path(yolov5.__file__).parent / "models" / "yolov5n.yaml"
    torch.manual_seed(seed)
    logger = logging.getLogger(v5_general.LOGGING_NAME)
    level = logger.level
    logger.setLevel(logging.WARNING)  # the model summary
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = v5_yolo.DetectionModel(str(cfg), ch=3, nc=nc)
    finally:
        logger.setLevel(level)
    model.names = list(names) if names is not None else [f"class{i}" for i in range(nc)]
    assert len(model.names) == nc
    return model.eval()


def save_yolov5_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """An official-style YOLOv5 release file (fp16 model, upstream module names)."""
    save_upstream_checkpoint(model, path, prefix="yolov5.")
