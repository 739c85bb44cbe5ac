"""The built-in synthetic dataset: generated on first use into the cache, then read as COCO.

The generator (:mod:`vcmbench.synth`) writes the official COCO layout
(``<root>/<split>/*.png`` + ``<root>/annotations/instances_<split>.json``, plus panoptic
and SFU-HW-style clips), so everything after generation is the ordinary
:class:`~vcmbench.datasets.coco.CocoDataset` code path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DatasetLayoutError
from ..media.hashing import stable_hash
from ..media.image import read_rgb
from ..registry import register
from ..synth.generate import (
    GENERATOR_VERSION,
    SPLITS,
    THINGS,
    YUV_FORMAT,
    categories_instances,
    config_from_settings,
    default_cache_root,
    ensure_split,
)
from .base import Item
from .coco import CocoDataset
from .sfu_hw import SfuHwDataset

__all__ = ["SynthClipsDataset", "SynthDataset"]

@register("dataset", "synth")
class SynthDataset(CocoDataset):
    """Synthetic images with COCO instances/panoptic ground truth and SFU-HW-style clips (see ``vcmbench.synth``)."""

    location_settings: ClassVar[tuple[str, ...]] = ("root",)

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "val",
        seed: int = 0,
        width: int = 320,
        height: int = 240,
        images: Mapping[str, int] | None = None,
        clips: Mapping[str, int] | None = None,
        clip_frames: int = 24,
        clip_fps: int = 30,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"synth: split must be one of {', '.join(SPLITS)}, got {split!r}")
        settings = {"seed": seed, "width": width, "height": height, "images": images, "clips": clips,
                    "clip_frames": clip_frames, "clip_fps": clip_fps}  # fmt: skip
        self.config = config_from_settings(settings)
        if self.config.count(split) < 1:
            raise ValueError(f"synth: split {split!r} has no images (images: {dict(self.config.images)})")
        self.cache = Path(root).expanduser() if root else default_cache_root()
        super().__init__(self.config.root(self.cache), split=split, annotations=f"annotations/instances_{split}.json")

    def identity(self) -> str:
        return stable_hash({"class": "SynthDataset", "generator": GENERATOR_VERSION, "split": self.split,
                            "config": self.config.as_dict()})  # fmt: skip

    def ensure(self) -> Path:
        """Generate the split (once; later calls find it in the cache) and return the dataset root."""
        try:
            return ensure_split(self.config, self.split, self.cache)
        except OSError as exc:
            raise DatasetLayoutError(
                f"dataset {self.name}: cannot generate the synthetic split {self.split!r} in {self.cache} ({exc}). "
                "Fix: set VCMBENCH_CACHE (or `root:` in datasets/synth.yaml) to a writable folder"
            ) from None

    def categories(self) -> list[dict[str, Any]]:
        """The thing categories the generator writes (known without generating the data)."""
        return [dict(c) for c in categories_instances()]

    def check(self) -> None:
        self.ensure()
        super().check()

    def load_image(self, item: Item) -> np.ndarray:
        path = item.path
        if not path.exists():  # a worker with another (or a cleaned) cache: generate the split there
            path = self.ensure() / self.split / item.path.name
        return read_rgb(path, item.id)

    # ---- the other ground truths ---------------------------------------------------------------------
    @property
    def sfu_hw_root(self) -> Path:
        """Root of the clips in the SFU-HW-Objects-v1 layout (``ClassS/...``)."""
        return self.root / "sfu_hw" / self.split

    def ensure_clips_json(self) -> Path:
        """``annotations/clips_<split>.json``, the split generated first if needed."""
        self.ensure()
        return self.root / "annotations" / f"clips_{self.split}.json"

    def clips(self) -> list[dict[str, Any]]:
        """Clip descriptions (file, size, frames, fps, per-frame labels) from ``annotations/clips_<split>.json``."""
        self.ensure()
        data = json.loads((self.root / "annotations" / f"clips_{self.split}.json").read_text())
        return [dict(c, path=str(self.root / c["file"])) for c in data["clips"]]


@register("dataset", "synth_clips")
class SynthClipsDataset(SfuHwDataset):
    """The synth clips (``ClassS``: things moving, spinning, occluding each other and leaving the picture),
    read through the SFU-HW-Objects-v1 code path: generated on first use like :class:`SynthDataset`."""

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "val",
        seed: int = 0,
        width: int = 320,
        height: int = 240,
        images: Mapping[str, int] | None = None,
        clips: Mapping[str, int] | None = None,
        clip_frames: int = 24,
        clip_fps: int = 30,
        start_frame: int = 0,
        num_frames: int | None = None,
        frame_ranges: Mapping[str, Any] | None = None,
        segment: int | None = 64,
    ) -> None:
        self.images = SynthDataset(root, split, seed, width, height, images, clips, clip_frames, clip_fps)
        labels = [{"index": t.id - 1, "id": t.id, "name": t.name} for t in THINGS]  # as the clips' txt files index
        super().__init__(self.images.sfu_hw_root, classes=["S"], start_frame=start_frame, num_frames=num_frames,
                         frame_ranges=frame_ranges, label_map=labels, matrix=YUV_FORMAT["matrix"],
                         full_range=YUV_FORMAT["range"] == "full", segment=segment)  # fmt: skip

    def identity(self) -> str:
        return stable_hash({"class": "SynthClipsDataset", "images": self.images.identity(),
                            "frames": [self.start_frame, self.num_frames, sorted(self.frame_ranges.items())]})  # fmt: skip

    def check(self) -> None:
        if self.images.config.n_clips(self.images.split) < 1:
            raise DatasetLayoutError(f"dataset {self.name}: split {self.images.split!r} has no clips "
                                     f"(clips: {dict(self.images.config.clips)})")  # fmt: skip
        self.images.ensure()
        super().check()
