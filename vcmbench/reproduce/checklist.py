"""What this machine has of an experiment's needs: each dataset root, codec (binaries, checkpoints) and task
(weights) is probed the way a run resolves it, without downloading anything (``$VCMBENCH_OFFLINE``), and
every failure becomes a :class:`Missing` entry: the problem as the adapter words it, and how to get it (the
suite's ``resources.yaml``, else the adapter's own fix)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..adapters import build
from ..cards import Card, CardSet
from ..run.resolve import prepare_codec, prepare_task
from ..run.runner import exported
from ..weights import WeightsNotDownloaded

#: resources.yaml section of each card kind
SECTIONS = {"dataset": "datasets", "codec": "codecs", "task": "tasks"}


@dataclass(frozen=True)
class Missing:
    kind: str
    name: str
    problem: str
    #: how to get it: the suite's resources.yaml entry ("" when it has none: the problem says the fix)
    get: str = ""
    #: weights with a url: and checksum in their card, fetched by the first real run (not offline)
    automatic: bool = False


@dataclass
class Availability:
    """Probe results by (kind, card name): present, or the :class:`Missing` entry; item counts of datasets."""

    missing: dict[tuple[str, str], Missing] = field(default_factory=dict)
    present: set[tuple[str, str]] = field(default_factory=set)
    items: dict[str, int] = field(default_factory=dict)

    def has(self, kind: str, name: str, downloads: bool = False) -> bool:
        """Present, or (with ``downloads``) only waiting for an automatic download."""
        miss = self.missing.get((kind, name))
        return (kind, name) in self.present or (downloads and miss is not None and miss.automatic)


def prepared_card(cards: CardSet, kind: str, name: str, overrides: Mapping[str, Mapping[str, Any]],
                  data_roots: Mapping[str, str]) -> Card:  # fmt: skip
    """A card as the run would use it: the experiment's overrides, and a dataset's root from --data-root."""
    card = cards.get(kind, name)
    if overrides.get(name):
        card = card.with_settings(**overrides[name])
    root = data_roots.get(name, data_roots.get("*")) if kind == "dataset" else None
    return card.with_settings(root=root) if root else card


def probe_one(card: Card, limit: int | None = None) -> int | None:
    """Build and resolve one card as a run does before any work (raises what the run would raise); for a
    dataset, its item count."""
    if card.kind == "codec":
        prepare_codec(card, list(card.qualities))
    elif card.kind == "task":
        prepare_task(card)
    else:
        ds = build(card)
        ds.check()
        return len(ds.items(limit=limit))
    return None


def probe(cards: CardSet, wanted: Iterable[tuple[str, str]], overrides: Mapping[str, Mapping[str, Any]],
          data_roots: Mapping[str, str], resources: Mapping[str, Mapping[str, str]],
          limit: int | None = None) -> Availability:  # fmt: skip
    """Probe every (kind, name) once, offline; see the module docstring."""
    out = Availability()
    with exported("VCMBENCH_OFFLINE", "1"):
        for kind, name in sorted(set(wanted)):
            try:
                n = probe_one(prepared_card(cards, kind, name, overrides, data_roots), limit)
            except Exception as exc:  # every reason a run would stop is a checklist entry
                get = resources.get(SECTIONS[kind], {}).get(name, "")
                out.missing[(kind, name)] = Missing(kind, name, str(exc), get, isinstance(exc, WeightsNotDownloaded))
                continue
            out.present.add((kind, name))
            if n is not None:
                out.items[name] = n
    return out
