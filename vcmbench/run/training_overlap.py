"""The check that a run never scores a learned codec on its own training images without saying so.

For every unit whose codec has trained weights (:meth:`~vcmbench.codecs.base.Codec.training_set`), the
sha256 of the unit's image files are compared with the training set its checkpoint records
(:mod:`vcmbench.codecs.training_record`). An overlap is a warning naming the codec, the quality, the
checkpoint, the count and the fraction; weights that record no training set (foreign checkpoints) get a
note "training set unknown". Both are logged before any work, recorded in the run's provenance
(``training_overlap``: one entry per checked unit, clean ones included) and shown again by ``vcmbench run``
at its end and by ``vcmbench report``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..codecs.base import TrainingSet
from ..plan import WorkUnit
from .resolve import ResolvedRun

__all__ = ["TrainingOverlap", "training_overlaps"]

#: overlapping item ids kept per unit in the provenance (the count is always exact)
MAX_IDS = 20


@dataclass(frozen=True)
class TrainingOverlap:
    """One unit of a learned codec checked against its training set."""

    unit: str
    dataset: str
    task: str
    codec: str
    quality: Any
    #: what holds the training record (the checkpoint file)
    source: str
    #: images the unit is scored on
    items: int
    #: how many of them the model was trained on; None when the weights do not record their training set
    overlap: int | None
    #: the first :data:`MAX_IDS` of those images' item ids
    overlapping_ids: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        """``overlap`` (trained on some of these images), ``unknown`` (no record) or ``disjoint``."""
        if self.overlap is None:
            return "unknown"
        return "overlap" if self.overlap else "disjoint"

    @property
    def fraction(self) -> float | None:
        return None if self.overlap is None else self.overlap / self.items

    def message(self) -> str:
        """The warning (``overlap``) or note (``unknown``) of this unit; empty when disjoint."""
        point = f"codec {self.codec} at quality {self.quality}"
        if self.status == "overlap":
            return (f"WARNING: {point} is scored on its own training images: {self.overlap} of the {self.items} "
                    f"images of {self.unit} ({100 * (self.fraction or 0):.1f}%) are in the training set of "
                    f"{self.source}; its scores there measure memorised images, not coding")  # fmt: skip
        if self.status == "unknown":
            return (f"note: {point}: training set unknown ({self.source} records none), so {self.unit} cannot "
                    "be checked for training images")  # fmt: skip
        return ""

    def record(self) -> dict[str, Any]:
        """The provenance entry."""
        return {"unit": self.unit, "dataset": self.dataset, "task": self.task, "codec": self.codec,
                "quality": self.quality, "checkpoint": self.source, "status": self.status, "items": self.items,
                "overlap": self.overlap, "fraction": self.fraction, "overlapping_ids": list(self.overlapping_ids),
                "message": self.message()}  # fmt: skip


def training_overlaps(res: ResolvedRun, units: Sequence[WorkUnit],
                      file_sha256: Callable[[Path], str]) -> list[TrainingOverlap]:  # fmt: skip
    """Every unit of a codec with trained weights, checked against that codec's training set at its quality
    (``file_sha256``: the store's cached file hash)."""
    trained: dict[tuple[str, Any], TrainingSet | None] = {}
    item_hashes: dict[str, list[tuple[str, str]]] = {}
    out = []
    for u in units:
        if u.is_reference:
            continue
        point = (u.codec, u.quality)
        if point not in trained:
            trained[point] = res.codecs[u.codec].codec.training_set(u.quality)
        training = trained[point]
        if training is None:
            continue
        if u.dataset not in item_hashes:
            items = res.datasets[u.dataset].items
            item_hashes[u.dataset] = [(it.id, file_sha256(it.path)) for it in items]
        out.append(_check(u, training, item_hashes[u.dataset]))
    return out


def _check(u: WorkUnit, training: TrainingSet, items: list[tuple[str, str]]) -> TrainingOverlap:
    seen = training.images_sha256
    ids = [] if seen is None else [item for item, sha in items if sha in seen]
    return TrainingOverlap(u.label(), u.dataset, u.task, u.codec, u.quality, training.source, len(items),
                           None if seen is None else len(ids), tuple(ids[:MAX_IDS]))  # fmt: skip
