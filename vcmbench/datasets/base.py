"""Dataset contract: items with a stable id, a path and a content hash; layout checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..cards import Card
from ..errors import DatasetLayoutError
from ..media.hashing import stable_hash
from ..media.image import read_rgb


@dataclass(frozen=True)
class Item:
    """One image (or clip) of a dataset."""

    id: str
    path: Path
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)


class Dataset(ABC):
    """Base of dataset adapters. ``check()`` validates the layout before any work starts."""

    location_settings: ClassVar[tuple[str, ...]] = ("root",)
    #: what the items are: "image" (``load_image`` gives H x W x 3) or "video" (it gives a Clip)
    media: ClassVar[str] = "image"
    name: str = "dataset"
    card_settings: Mapping[str, Any] = {}

    @classmethod
    def from_card(cls, card: Card) -> Dataset:
        ds = cls(**dict(card.settings))
        ds.name = card.name
        ds.card_settings = dict(card.settings)
        return ds

    def identity(self) -> str:
        settings = {k: v for k, v in self.card_settings.items() if k not in self.location_settings}
        return stable_hash({"class": type(self).__qualname__, "settings": settings})

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`DatasetLayoutError` listing every missing path."""

    @abstractmethod
    def all_items(self) -> list[Item]:
        """Every item, sorted by id."""

    def items(
        self, limit: int | None = None, ids: Sequence[str] | None = None, exclude: Sequence[str] = ()
    ) -> list[Item]:
        """The selected items: ``ids`` (in dataset order) or all, minus ``exclude``, then the first ``limit``."""
        items = self.all_items()
        known = {it.id for it in items}
        for wanted in list(ids or []) + list(exclude):
            if wanted not in known:
                raise DatasetLayoutError(f"dataset {self.name}: no item with id {wanted!r} (ids look like {items[0].id!r})" if items else f"dataset {self.name} is empty")
        if ids:
            wanted_set = set(ids)
            items = [it for it in items if it.id in wanted_set]
        if exclude:
            drop = set(exclude)
            items = [it for it in items if it.id not in drop]
        if limit is not None:
            if limit < 1:
                raise DatasetLayoutError(f"--limit must be at least 1, got {limit}")
            items = items[:limit]
        return items

    def load_image(self, item: Item) -> Any:
        """The item's pixels: an H x W x 3 uint8 RGB image (a :class:`~vcmbench.media.clip.Clip` for video datasets)."""
        return read_rgb(item.path, item.id)

    def content_hash(self, item: Item, file_sha: str) -> str:
        """What identifies the item's pixels in cache keys: its file's sha256, plus, where an item is
        part of a file (a frame range of a sequence), what selects that part."""
        return file_sha

    @staticmethod
    def missing_error(name: str, root: Path, missing: Sequence[Path], expected: str, fix: str) -> DatasetLayoutError:
        lines = "\n  ".join(str(p) for p in missing)
        return DatasetLayoutError(
            f"dataset {name}: the layout at {root} is incomplete. Missing:\n  {lines}\n"
            f"Expected layout:\n{expected}\nFix: {fix}"
        )
