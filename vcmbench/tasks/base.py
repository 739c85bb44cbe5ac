"""Task contract: ``predict(images) -> predictions`` and ``evaluate(predictions, dataset) -> metrics``.

Adapters keep a plain typed ``__init__``; :meth:`Task.from_card` maps a card to
it (detectron2's ``@configurable`` idea without the decorator). The model is
loaded lazily, once per worker process, by :meth:`Task.load`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..cards import Card
from ..media.hashing import stable_hash
from ..metrics.coco_map import round_like_python

if TYPE_CHECKING:
    pass


class Task(ABC):
    #: metric names ``evaluate`` returns, the first one is the headline metric
    metrics: ClassVar[tuple[str, ...]] = ()
    #: metrics where lower is better (e.g. a privacy metric: fewer faces found again = more private); every
    #: other metric is higher-is-better. BD values, ``compare --fail`` rules and plots follow it
    #: (:mod:`vcmbench.metrics.bd`, "Metric direction")
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    #: settings that say where files are, not what is computed; kept out of the cache key
    location_settings: ClassVar[tuple[str, ...]] = ()
    #: datasets it can score: "image" and, for tasks scoring frames against a dataset's COCO ground truth
    #: (``coco_gt()`` / ``image_id()``, as video datasets provide per frame), "video"
    media: ClassVar[tuple[str, ...]] = ("image",)
    #: ``evaluate`` needs only the predictions and the dataset (no model), so the runner may score units in a
    #: background process built from the cards while the model works on
    background_scoring: ClassVar[bool] = True
    #: what ``evaluate`` needs of a dataset (Protocols of :mod:`vcmbench.contracts`), checked when a grid is
    #: planned: a dataset that lacks one is refused before any work
    requires: ClassVar[tuple[type, ...]] = ()

    name: str = "task"
    card_settings: Mapping[str, Any] = {}
    #: how many images ``predict`` receives at once
    batch_size: int = 8

    @classmethod
    def from_card(cls, card: Card) -> Task:
        task = cls(**dict(card.settings))
        task.name = card.name
        task.card_settings = dict(card.settings)
        return task

    def version(self) -> str:
        """Implementation + weights identity (e.g. a checkpoint sha256); enters the cache key."""
        return "1"

    def identity(self) -> str:
        settings = {k: v for k, v in self.card_settings.items() if k not in self.location_settings}
        return stable_hash({"class": type(self).__qualname__, "settings": settings, "version": self.version()})

    def running_on(self) -> str:
        """The device the loaded model runs on (e.g. ``cuda:0``, ``cpu``); ``n/a`` before :meth:`load` or
        for a task without one. Adapters keep it in ``_device``."""
        return str(getattr(self, "_device", None) or "n/a")

    def load(self) -> None:  # noqa: B027 - optional hook, a task without a model needs nothing
        """Load the model (weights, device); called once before the first ``predict``."""

    @abstractmethod
    def predict(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Predictions for a batch of HxWx3 uint8 RGB images, one JSON-serialisable value per image."""

    @abstractmethod
    def evaluate(self, predictions: Mapping[str, Any], dataset: Any) -> dict[str, float]:
        """Score predictions keyed by item id against the dataset's ground truth (a dataset meeting
        :attr:`requires`)."""


def detection_rows(det: np.ndarray) -> list[list[float]]:
    """(n, 6) ``[x1, y1, x2, y2, score, class]`` -> the stored rows of a detector's prediction: boxes rounded
    to 1e-4 px and scores to 1e-6 as Python's ``round`` does (bit for bit, vectorized: rounding 100
    detections one number at a time took a quarter of a millisecond an image), and an integer class."""
    det = np.asarray(det, dtype=np.float64).reshape(-1, 6)
    rows = np.column_stack([round_like_python(det[:, :4], 4), round_like_python(det[:, 4], 6)]).tolist()
    for row, cls in zip(rows, det[:, 5].astype(np.int64).tolist(), strict=True):
        row.append(cls)
    return rows
