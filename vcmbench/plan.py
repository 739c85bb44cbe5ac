"""Grid expansion: codec x quality x task x dataset -> small, hashable work units.

A :class:`WorkUnit` is one RD point of one task on one dataset selection. Its
key hashes the identities (card settings + implementation versions + weights)
of the codec, task and dataset and the content hashes of the selected items,
so the same work is recognised across runs, output folders and machines.
Inside a unit, every image has its own encode key (shared by all tasks) and
prediction key, which is what makes resume and caching per image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .media.hashing import stable_hash

#: name of the uncompressed reference point added to every grid
REFERENCE = "uncompressed"


def quality_label(quality: Any) -> str | None:
    return None if quality is None else str(quality)


@dataclass(frozen=True)
class WorkUnit:
    dataset: str
    task: str
    codec: str
    quality: int | float | None
    dataset_id: str
    task_id: str
    codec_id: str
    item_ids: tuple[str, ...]
    item_shas: tuple[str, ...]
    #: the task card whose model scores this point when it is not ``task``'s own (codec-paired scoring, e.g. a
    #: detector fine-tuned on this codec's decoded images); ``task_id`` is then that card's identity
    scorer: str = ""

    @property
    def scoring_task(self) -> str:
        """The task card whose model predicts and scores this unit."""
        return self.scorer or self.task

    @property
    def is_reference(self) -> bool:
        return self.codec == REFERENCE

    def encode_key(self, item_sha: str) -> str | None:
        """Key of the bitstream of one item; independent of the task, so encodes are shared."""
        if self.is_reference:
            return None
        known = self.keys_by_sha.get(item_sha)
        return known[0] if known is not None else self.hash_encode_key(item_sha)

    def hash_encode_key(self, item_sha: str) -> str:
        return stable_hash({"codec": self.codec_id, "q": quality_label(self.quality), "item": item_sha}, n=32)

    def prediction_key(self, item_sha: str) -> str:
        known = self.keys_by_sha.get(item_sha)
        return known[1] if known is not None else self.hash_prediction_key(item_sha)

    def hash_prediction_key(self, item_sha: str, encode_key: str | None = None) -> str:
        if encode_key is None and not self.is_reference:
            encode_key = self.hash_encode_key(item_sha)
        return stable_hash({"task": self.task_id, "input": encode_key or f"ref:{item_sha}"}, n=32)

    @cached_property
    def keys_by_sha(self) -> dict[str, tuple[str | None, str]]:
        """Item sha -> (encode key, prediction key) of the unit's items, hashed once per unit (a unit's stages
        ask for them again and again; hashing them each time cost more than a JPEG encode at 5,000 images)."""
        keys: dict[str, tuple[str | None, str]] = {}
        for sha in self.item_shas:
            ekey = None if self.is_reference else self.hash_encode_key(sha)
            keys[sha] = (ekey, self.hash_prediction_key(sha, ekey))
        return keys

    def prediction_keys(self) -> list[str]:
        return [self.prediction_key(s) for s in self.item_shas]

    @cached_property
    def key(self) -> str:
        return stable_hash(
            {
                "dataset": self.dataset_id, "task": self.task_id, "codec": self.codec_id,
                "q": quality_label(self.quality), "items": list(self.item_shas),
            },
            n=32,
        )  # fmt: skip

    def label(self) -> str:
        q = "" if self.quality is None else f"@{self.quality}"
        by = f"[{self.scorer}]" if self.scorer else ""
        return f"{self.dataset}/{self.task}{by}/{self.codec}{q}"


@dataclass(frozen=True)
class DatasetSelection:
    name: str
    identity: str
    item_ids: tuple[str, ...]
    item_shas: tuple[str, ...]


def expand_grid(
    datasets: Sequence[DatasetSelection],
    tasks: Sequence[tuple[str, str]],
    codecs: Sequence[tuple[str, str, Sequence[Any]]],
    reference: bool = True,
    scorers: Callable[[str, Any, str], tuple[str, str] | None] | None = None,
) -> list[WorkUnit]:
    """Expand (dataset) x (task name, identity) x (codec name, identity, qualities) into units.

    The uncompressed reference point comes first for each dataset x task. Duplicate
    points (the same codec listed twice) are dropped. ``scorers(codec, quality, task)`` names the task card
    (and its identity) that scores a rate point instead of ``task`` (codec-paired scoring), or None.
    """
    units: list[WorkUnit] = []
    seen: set[str] = set()
    for ds in datasets:
        for task, task_id in tasks:
            points: list[tuple[str, str, Any]] = [(REFERENCE, REFERENCE, None)] if reference else []
            points += [(name, cid, q) for name, cid, qs in codecs for q in qs]
            for codec, codec_id, q in points:
                paired = scorers(codec, q, task) if scorers is not None and codec != REFERENCE else None
                scorer, scorer_id = paired if paired is not None else ("", task_id)
                unit = WorkUnit(ds.name, task, codec, q, ds.identity, scorer_id, codec_id, ds.item_ids, ds.item_shas,
                                scorer)  # fmt: skip
                if unit.key not in seen:
                    seen.add(unit.key)
                    units.append(unit)
    return units
