"""What tasks ask of datasets, declared: small typing Protocols.

A task lists the contracts it needs in ``Task.requires`` (e.g. a detector scored with COCO mAP needs
:class:`CocoInstances`); a dataset meets a contract by having its methods. When a grid is planned, every
task x dataset pair is checked with :func:`unmet`, so a task that needs what a dataset lacks is refused
before any work, with a message built from the contract (:func:`describe`). Tasks reach datasets only
through these methods; nothing else of a dataset is read by a task.

One contract is two-sided: a dataset states its label categories (:class:`Categories`), a detector states
its model's classes and maps them onto those categories (:class:`ClassMapped`); the pair is checked when
the grid is planned too, so a model trained for other classes is refused before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Categories", "ClassMapped", "ClipFrames", "CocoInstances", "InstanceIdMaps", "PanopticSource", "describe", "unmet",
]


@runtime_checkable
class CocoInstances(Protocol):
    """COCO instance ground truth: a pycocotools ``COCO`` object, and the COCO image id of each item."""

    def coco_gt(self) -> Any: ...

    def image_id(self, item_id: str) -> Any: ...


@runtime_checkable
class PanopticSource(Protocol):
    """COCO-panoptic ground truth (:class:`~vcmbench.metrics.panoptic.PanopticGroundTruth`), and the
    panoptic image id of each item."""

    def panoptic_gt(self) -> Any: ...

    def panoptic_image_id(self, item_id: str) -> Any: ...


@runtime_checkable
class InstanceIdMaps(Protocol):
    """Cityscapes instance ground truth: the ``*_gtFine_instanceIds.png`` of each item (pixel = label id x 1000
    + instance number for one object; the bare label id for stuff, void and groups of objects)."""

    def instance_ids_file(self, item_id: str) -> Any: ...


@runtime_checkable
class ClipFrames(Protocol):
    """Clips scored frame by frame: per-frame predictions keyed ``"<clip id>#<frame>"`` of the labelled
    frames, and the groups of clips (each sequence, each class) scored on their own as well."""

    def frame_predictions(self, predictions: Mapping[str, Any]) -> dict[str, Any]: ...

    def groups(self, items: Sequence[Any]) -> dict[str, list[str]]: ...


@runtime_checkable
class Categories(Protocol):
    """The dataset's label categories, COCO style: ``[{"id": int, "name": str}, ...]``."""

    def categories(self) -> list[dict[str, Any]]: ...


@runtime_checkable
class ClassMapped(Protocol):
    """A task side of :class:`Categories`: a detector that states its model's classes (``class index -> name``)
    and maps them onto a dataset's categories (``class index -> category id``), raising
    ``vcmbench.tasks.classes.ClassMapError`` when they do not fit. Checked with every dataset that has
    :class:`Categories` when a grid is planned."""

    def class_names(self) -> dict[int, str]: ...

    def category_map(self, dataset: Categories) -> dict[int, int]: ...


def _methods(contract: type) -> list[str]:
    return sorted(n for n, v in vars(contract).items() if callable(v) and not n.startswith("_"))


def describe(contract: type) -> str:
    """``CocoInstances (coco_gt, image_id): COCO instance ground truth ...`` -- for messages."""
    doc = " ".join((contract.__doc__ or "").split())
    return f"{contract.__name__} ({', '.join(_methods(contract))}): {doc}"


def unmet(obj: object, contracts: Sequence[type]) -> list[str]:
    """For each contract ``obj`` does not meet: its name and the methods ``obj`` lacks."""
    out = []
    for contract in contracts:
        lacking = [m for m in _methods(contract) if not callable(getattr(obj, m, None))]
        if lacking:
            out.append(f"{describe(contract)} -- lacks {', '.join(lacking)}")
    return out
