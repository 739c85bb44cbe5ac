"""The one way to turn a card into an adapter (codec, task or dataset).

Everything that needs an adapter (the run's resolution, the executors' workers, the background scorer,
``vcmbench validate``, training commands, tests) builds it here:

- :func:`adapter_class`: the registry lookup (``adapter: name``, or ``adapter: package.module:Class``)
  and a base-class check (a codec card must name a :class:`~vcmbench.codecs.base.Codec`, ...);
- :func:`build`: a fresh adapter through the class's ``from_card``, with the errors a user can act on
  (settings that do not fit its ``__init__``, bad values) turned into a :class:`~vcmbench.cards.CardError`
  naming the card file;
- :func:`cached` / :func:`loaded_task`: one adapter per card per process (and, for tasks, weights loaded
  once), as workers need them.
"""

from __future__ import annotations

import threading
from typing import Any

from .cards import Card, CardError
from .codecs.base import Codec
from .datasets.base import Dataset
from .errors import VcmbenchError
from .media.hashing import stable_hash
from .registry import REGISTRIES, RegistryError, import_string
from .tasks.base import Task

__all__ = ["BASES", "adapter_class", "build", "cached", "loaded_task"]

#: what the adapter of each kind of card must be
BASES: dict[str, type] = {"codec": Codec, "task": Task, "dataset": Dataset}


def adapter_class(card: Card) -> type:
    """The class a card names, checked to be an adapter of the card's kind."""
    try:
        cls = import_string(card.adapter) if ":" in card.adapter else REGISTRIES[card.kind].get(card.adapter)
    except (ImportError, RegistryError, ValueError) as exc:
        raise CardError(f"{card.path}: {card.kind} {card.name!r}: {exc}") from None
    base = BASES[card.kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise CardError(
            f"{card.path}: adapter {card.adapter!r} of {card.kind} {card.name!r} is not a {base.__module__}."
            f"{base.__qualname__} subclass; an adapter of a {card.kind} card must derive from it"
        )
    return cls


def build(card: Card) -> Any:
    """A new adapter for ``card`` (its class's ``from_card``); unusable settings are a CardError."""
    cls = adapter_class(card)
    try:
        return cls.from_card(card)  # type: ignore[attr-defined]
    except TypeError as exc:
        raise CardError(f"{card.path}: settings of {card.kind} {card.name!r} do not fit its adapter: {exc}") from None
    except (ValueError, OSError) as exc:
        if isinstance(exc, VcmbenchError):
            raise
        raise CardError(f"{card.path}: {card.kind} {card.name!r}: {exc}") from None


# ---- one adapter per card per process ------------------------------------------------------------
_CACHE: dict[str, Any] = {}
_LOADED: set[str] = set()
_LOCK = threading.Lock()


def _card_key(card: Card) -> str:
    return stable_hash({"kind": card.kind, "name": card.name, "adapter": card.adapter, "settings": dict(card.settings)})


def cached(card: Card) -> Any:
    """The adapter a card describes, built once per process."""
    key = _card_key(card)
    obj = _CACHE.get(key)
    if obj is None:
        with _LOCK:
            obj = _CACHE.get(key)
            if obj is None:
                obj = build(card)
                _CACHE[key] = obj
    return obj


def loaded_task(card: Card) -> Task:
    """The task a card describes, built and loaded (weights on its device) once per process."""
    task: Task = cached(card)
    key = _card_key(card)
    if key not in _LOADED:
        with _LOCK:
            if key not in _LOADED:
                task.load()
                _LOADED.add(key)
    return task
