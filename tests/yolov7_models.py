"""A yolov7-tiny with random weights, saved as an official-style checkpoint (shared by the YOLOv7 tests).

Named as what it is: a real yolov7-tiny architecture with random weights, standing in for the official
``yolov7.pt`` that cannot be downloaded here.
"""

from __future__ import annotations

import contextlib
import copy
import pickletools
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
import yolov7_package.models.yolo as v7_yolo

from vcmbench.datasets.sfu_hw import COCO80_NAMES

# -- the architecture ---------------------------------------------------------------------------------
# yolov7-tiny as defined upstream in cfg/training/yolov7-tiny.yaml (WongKinYiu/yolov7; cfg/deploy differs only
# in its plain Detect head), written out with helpers for its repeated blocks: the same 78 layers
# [from, repeats, module, args], the same anchors, an IDetect head. Module names and the activation are the
# strings upstream's parse_model evaluates.
ACT = "nn.LeakyReLU(0.1)"
ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def _conv(c: int, k: int = 1, s: int = 1, f: int = -1) -> list[Any]:
    return [f, 1, "Conv", [c, k, s, None, 1, ACT]]


def _elan(c: int, out: int) -> list[list[Any]]:
    """Two 1x1 branches, two 3x3 convs on the second, the four outputs concatenated, a 1x1 to ``out``."""
    return [_conv(c), _conv(c, f=-2), _conv(c, 3), _conv(c, 3), [[-1, -2, -3, -4], 1, "Concat", [1]], _conv(out)]


def _up(c: int, route: int) -> list[list[Any]]:
    """Top-down path: 1x1, 2x nearest upsample, concatenated with a 1x1 of backbone layer ``route``."""
    return [_conv(c), [-1, 1, "nn.Upsample", [None, 2, "nearest"]], _conv(c, f=route), [[-1, -2], 1, "Concat", [1]]]


def _down(c: int, route: int) -> list[list[Any]]:
    """Bottom-up path: stride-2 3x3, concatenated with head layer ``route``."""
    return [_conv(c, 3, 2), [[-1, route], 1, "Concat", [1]]]


def yolov7_tiny_cfg(nc: int = 80, head: str = "IDetect", repconv: bool = False) -> dict[str, Any]:
    """yolov7-tiny; ``head="Detect"`` is cfg/deploy's head, ``repconv`` makes the three output 3x3s RepConvs
    as in yolov7.yaml (its layers 102-104), the re-parameterised blocks of the official yolov7.pt."""
    mp = [-1, 1, "MP", []]
    out = (lambda c, f: [f, 1, "RepConv", [c, 3, 1]]) if repconv else (lambda c, f: _conv(c, 3, f=f))
    sppcspc = [  # SPPCSPC built from SP max-pools (5, 9, 13) and a cross-stage shortcut
        _conv(256), _conv(256, f=-2), [-1, 1, "SP", [5]], [-2, 1, "SP", [9]], [-3, 1, "SP", [13]],
        [[-1, -2, -3, -4], 1, "Concat", [1]], _conv(256), [[-1, -7], 1, "Concat", [1]], _conv(256),
    ]  # fmt: skip
    return {
        "nc": nc, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": copy.deepcopy(ANCHORS),
        "backbone": [  # layers 0-28: P1/2, P2/4, then ELANs at P2, P3 (7, 14), P4 (21), P5 (28)
            _conv(32, 3, 2), _conv(64, 3, 2), *_elan(32, 64), mp, *_elan(64, 128), mp, *_elan(128, 256), mp,
            *_elan(256, 512),
        ],
        "head": [  # layers 29-77: SPPCSPC (37), PAN top-down (47, 57) and bottom-up (65, 73), 3x3s, IDetect
            *sppcspc, *_up(128, 21), *_elan(64, 128), *_up(64, 14), *_elan(32, 64),
            *_down(128, 47), *_elan(64, 128), *_down(256, 37), *_elan(128, 256),
            out(128, 57), out(256, 65), out(512, 73), [[74, 75, 76], 1, head, ["nc", "anchors"]],
        ],
    }  # fmt: skip


@contextlib.contextmanager
def _quiet_grid() -> Iterator[None]:
    """Silence the warning of upstream's Detect._make_grid (torch.meshgrid without indexing=)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.meshgrid", category=UserWarning)
        yield


def build_random_yolov7_tiny(
    nc: int, calibration: list[np.ndarray] | None = None, seed: int = 0, names: Sequence[str] | None = None,
    **variant: Any,
) -> Any:  # fmt: skip
    """yolov7-tiny with random weights, made to output a moderate number of image-dependent detections.

    ``ImplicitM`` starts at 1 as upstream (yolov7-package initialises it at 0, which scales every output to ~0);
    BatchNorm statistics are measured on ``calibration`` images (default ones would let activations vanish,
    and make Conv+BN fusion trivial); the detection convolutions are doubled to spread the scores.
    ``names`` become the model's class names, as upstream training sets them from the data yaml; by default
    a COCO-80 model gets COCO's names (as the official checkpoints carry), others keep yolov7's placeholders
    ``"0"``, ``"1"``, ...
    """
    torch.manual_seed(seed)
    with _quiet_grid(), mock.patch.object(v7_yolo.Model, "info", lambda self, *a, **k: None):
        model = v7_yolo.Model(yolov7_tiny_cfg(nc, **variant), ch=3, nc=nc)  # (info(): a slow FLOPs count)
    if names is not None or nc == len(COCO80_NAMES):
        model.names = list(names if names is not None else COCO80_NAMES)
        assert len(model.names) == nc
    head = model.model[-1]
    with torch.no_grad():
        for im in getattr(head, "im", ()):
            torch.nn.init.normal_(im.implicit, 1.0, 0.02)
        if calibration:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = None  # cumulative average over the calibration batch
            x = torch.from_numpy(np.stack(calibration).transpose(0, 3, 1, 2).copy()).float() / 255
            model.train()(x)
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.momentum = 0.03  # yolov7's initialize_weights value
        for conv in head.m:
            conv.weight *= 2
    return model.eval()


@contextlib.contextmanager
def upstream_module_names(model: torch.nn.Module, prefix: str = "yolov7_package.") -> Iterator[None]:
    """While active, pickle records the package's classes under the upstream module names (``models.yolo``).

    Official checkpoints were pickled inside the upstream repository, where the classes live in top-level
    ``models.*`` modules. Pickle looks a class up as ``sys.modules[cls.__module__].<qualname>``, so the classes
    are renamed and the package modules aliased under those names; everything is restored afterwards.
    ``prefix`` is the package the classes live in here (``yolov7_package.``, ``yolov5.``).
    """
    classes = {type(m) for m in model.modules() if type(m).__module__.startswith(prefix)}
    aliases = {
        name[len(prefix) :]: mod
        for name, mod in list(sys.modules.items())
        if name.startswith((prefix + "models", prefix + "utils"))
    }
    before_modules = {name: sys.modules.get(name) for name in aliases}
    before_names = {cls: cls.__module__ for cls in classes}
    try:
        sys.modules.update(aliases)
        for cls in classes:
            cls.__module__ = cls.__module__[len(prefix) :]
        yield
    finally:
        for cls, name in before_names.items():
            cls.__module__ = name
        for name, mod in before_modules.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def save_upstream_checkpoint(model: torch.nn.Module, path: Path, prefix: str = "yolov7_package.") -> None:
    """Save as upstream's strip_optimizer leaves a release file: the fp16 model, no EMA, no optimizer, epoch -1."""
    ckpt = {"model": copy.deepcopy(model).half(), "ema": None, "updates": None, "optimizer": None,
            "training_results": None, "epoch": -1, "best_fitness": None}  # fmt: skip
    with upstream_module_names(model, prefix):
        torch.save(ckpt, path)


def pickle_globals(path: Path) -> set[tuple[str, str]]:
    """(module, name) of every class or function a torch.save file references."""
    with zipfile.ZipFile(path) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith("/data.pkl")]
        data = zf.read(name)
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            module, attr = arg.split(" ", 1)
            found.add((module, attr))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
    return found
