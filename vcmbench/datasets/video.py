"""Video datasets: items are clips; scoring is per frame, with the frames as COCO images.

A :class:`VideoDataset` yields one :class:`~vcmbench.datasets.base.Item` per clip; its
``load_image`` returns a :class:`~vcmbench.media.clip.Clip`. A task predicts every frame (the
executors split clips into frames), so a clip's prediction is the list of its frames'
predictions. For scoring, :meth:`VideoDataset.frame_predictions` turns those lists into
one entry per frame keyed ``"<clip id>#<frame>"``, which :meth:`image_id` maps to the
image ids of an in-memory COCO ground truth (:meth:`coco_gt`) built from the per-frame
labels: the detection tasks' ordinary ``evaluate`` (pycocotools) then scores the frames.

:meth:`groups` names subsets scored on their own as well (the clips of each class, and
each clip alone), reported as ``<metric>/<group>`` beside the metrics of the whole set.
"""

from __future__ import annotations

import contextlib
import io
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Dataset, Item

#: frame key separator: "<clip id>#<frame index>"
FRAME_SEP = "#"
#: image ids of frame f of clip number c (in dataset order): c * FRAME_ID_STRIDE + f
FRAME_ID_STRIDE = 1_000_000


@dataclass(frozen=True)
class Box:
    """One labelled object of a frame: category id and the box in pixels (x, y, width, height)."""

    category_id: int
    x: float
    y: float
    w: float
    h: float


def frame_key(item_id: str, frame: int) -> str:
    return f"{item_id}{FRAME_SEP}{frame}"


class VideoDataset(Dataset):
    """Base of datasets whose items are clips (see the module docstring)."""

    media: ClassVar[str] = "video"

    # ---- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def categories(self) -> list[dict[str, Any]]:
        """COCO categories (``id``, ``name``) of the labels."""

    @abstractmethod
    def frame_labels(self, item: Item) -> dict[int, list[Box]]:
        """Labelled frames of a clip (index within the clip -> its objects); frames absent are not scored."""

    def groups(self, items: Sequence[Item]) -> dict[str, list[str]]:
        """Subsets scored on their own: by default each clip alone."""
        return {it.id: [it.id] for it in items}

    # ---- scoring -----------------------------------------------------------------------------
    def frame_predictions(self, predictions: Mapping[str, Any]) -> dict[str, Any]:
        """``{clip id: [frame 0 pred, frame 1 pred, ...]}`` -> ``{"<clip id>#<f>": pred}`` for labelled frames."""
        by_id = {it.id: it for it in self.all_items()}
        out: dict[str, Any] = {}
        for item_id, per_frame in predictions.items():
            labelled = self._labels(by_id[item_id])
            if not isinstance(per_frame, list):
                raise ValueError(f"dataset {self.name}: the prediction of clip {item_id} is not a list of frames")
            for f in sorted(labelled):
                if f < len(per_frame):
                    out[frame_key(item_id, f)] = per_frame[f]
        return out

    def image_id(self, key: str) -> int:
        """COCO image id of a frame key ``"<clip id>#<f>"``."""
        item_id, sep, f = key.rpartition(FRAME_SEP)
        if not sep:
            raise KeyError(f"dataset {self.name}: {key!r} is not a frame key (<clip id>{FRAME_SEP}<frame>)")
        return self._clip_index()[item_id] * FRAME_ID_STRIDE + int(f)

    def coco_gt(self) -> Any:
        """The labels of every labelled frame as a pycocotools ``COCO`` object (built once)."""
        if getattr(self, "_coco", None) is None:
            from pycocotools.coco import COCO

            images, anns = [], []
            for item in self.all_items():
                w, h = int(item.meta["width"]), int(item.meta["height"])
                for f, boxes in sorted(self._labels(item).items()):
                    image_id = self.image_id(frame_key(item.id, f))
                    images.append({"id": image_id, "width": w, "height": h, "file_name": frame_key(item.id, f)})
                    for b in boxes:
                        anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": b.category_id,
                                     "bbox": [b.x, b.y, b.w, b.h], "area": b.w * b.h, "iscrowd": 0})  # fmt: skip
            coco = COCO()
            coco.dataset = {"images": images, "annotations": anns, "categories": self.categories()}
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco

    def _clip_index(self) -> dict[str, int]:
        if getattr(self, "_clip_idx", None) is None:
            self._clip_idx = {it.id: i for i, it in enumerate(self.all_items())}
        return self._clip_idx

    def _labels(self, item: Item) -> dict[int, list[Box]]:
        cache = getattr(self, "_label_cache", None)
        if cache is None:
            cache = self._label_cache = {}
        if item.id not in cache:
            cache[item.id] = self.frame_labels(item)
        return cache[item.id]
