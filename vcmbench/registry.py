"""One generic name -> class registry with lazy ``module:attr`` entries.

Entries are stored as import strings and resolved on first use, so listing a
registry (``vcmbench ls``) imports nothing heavy (no torch, no ffmpeg probing).
The pattern follows lm-evaluation-harness' registry; unlike it, a duplicate
name is an error rather than a silent override.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name; the message says what is available."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ' (did you mean 'x'?)' suffix for the closest choices, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def import_string(target: str) -> object:
    """Import ``package.module:attr`` and return the attribute."""
    if ":" not in target:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})") from exc
    return obj


class Registry(Generic[T]):
    """Maps names to lazily imported objects of one kind (codec, task, dataset adapters)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str, target: str) -> None:
        """Register ``name`` -> ``"module:attr"``; a second registration of a name is rejected."""
        if name in self._targets:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered (as {self._targets[name]!r}); pick another name"
            )
        if ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: target must be 'module:attr', got {target!r}")
        self._targets[name] = target

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._targets))

    def names(self) -> list[str]:
        return sorted(self._targets)

    def target(self, name: str) -> str:
        self._check(name)
        return self._targets[name]

    def get(self, name: str) -> T:
        """Import (once) and return the object registered as ``name``."""
        self._check(name)
        if name not in self._loaded:
            self._loaded[name] = import_string(self._targets[name])  # type: ignore[assignment]
        return self._loaded[name]

    def _check(self, name: str) -> None:
        if name not in self._targets:
            raise RegistryError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"available: {', '.join(self.names()) or '(none)'}"
            )


# Adapter registries: a card's ``adapter:`` names one of these (or gives a "module:attr" of its own).
CODECS: Registry[type] = Registry("codec adapter")
TASKS: Registry[type] = Registry("task adapter")
DATASETS: Registry[type] = Registry("dataset adapter")

for _name, _target in {
    "none": "vcmbench.codecs.base:Uncompressed",
    "jpeg": "vcmbench.codecs.jpeg:JpegCodec",
    "vvenc": "vcmbench.codecs.ffmpeg:VVenCCodec",
    "x265": "vcmbench.codecs.ffmpeg:X265Codec",
    "vtm": "vcmbench.codecs.vtm:VTMCodec",
    "lic": "vcmbench.codecs.learned:LicCodec",
    "objicm": "vcmbench.codecs.learned:ObjectICMCodec",
    "tlicm": "vcmbench.codecs.learned:TLICMCodec",
    "saicm": "vcmbench.codecs.learned:SAICMCodec",
    "nerv": "vcmbench.codecs.nerv:NeRVCodec",
    "sanerv": "vcmbench.codecs.nerv:SANeRVCodec",
}.items():
    CODECS.register(_name, _target)

TASKS.register("yolov5", "vcmbench.tasks.yolov5:YOLOv5Task")
TASKS.register("yolov7", "vcmbench.tasks.yolov7:YOLOv7Task")
TASKS.register("ultralytics_detect", "vcmbench.tasks.ultralytics_yolo:UltralyticsDetectTask")
TASKS.register("ultralytics_segment", "vcmbench.tasks.ultralytics_yolo:UltralyticsSegmentTask")
TASKS.register("faces", "vcmbench.tasks.faces:FacesTask")
TASKS.register("mask_rcnn", "vcmbench.tasks.mask_rcnn:MaskRCNNTask")
TASKS.register("panoptic_deeplab", "vcmbench.tasks.panoptic_deeplab:PanopticDeepLabTask")

DATASETS.register("coco", "vcmbench.datasets.coco:CocoDataset")
DATASETS.register("synth", "vcmbench.datasets.synth:SynthDataset")
DATASETS.register("visdrone", "vcmbench.datasets.visdrone:VisDroneDataset")
DATASETS.register("cityscapes", "vcmbench.datasets.cityscapes:CityscapesDataset")
DATASETS.register("sfu_hw", "vcmbench.datasets.sfu_hw:SfuHwDataset")
DATASETS.register("synth_clips", "vcmbench.datasets.synth:SynthClipsDataset")

REGISTRIES: dict[str, Registry[type]] = {"codec": CODECS, "task": TASKS, "dataset": DATASETS}
