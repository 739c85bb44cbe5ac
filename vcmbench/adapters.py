"""The one way to turn a card into an adapter (codec, task or dataset).

Everything that needs an adapter (the run's resolution, the executors' workers, the background scorer,
``vcmbench validate``, training commands, tests) builds it here:

- :func:`adapter_class`: the registry lookup (``adapter: name``, or ``adapter: package.module:Class``)
  and a base-class check (a codec card must name a :class:`~vcmbench.codecs.base.Codec`, ...);
- :func:`build`: a fresh adapter through the class's ``from_card``, with the errors a user can act on
  (settings that do not fit its ``__init__``, bad values) turned into a :class:`~vcmbench.cards.CardError`
  naming the card file, and a string setting where ``__init__`` declares a number or a boolean (cards and
  ``--set`` are read as YAML 1.2, where ``yes`` or ``1_000`` is a string) refused by name;
- :func:`cached` / :func:`loaded_task`: one adapter per card per process (and, for tasks, weights loaded
  once), as workers need them.
"""

from __future__ import annotations

import threading
import types
import typing
from typing import Any

from .cards import Card, CardError
from .codecs.base import Codec
from .datasets.base import Dataset
from .errors import VcmbenchError
from .registry import REGISTRIES, RegistryError, import_string
from .tasks.base import Task

__all__ = ["BASES", "adapter_class", "build", "cached", "check_setting_types", "loaded_task"]

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


#: the fix a user needs for a string setting where ``__init__`` declares one of these types
NON_STRING = {
    bool: "true or false (YAML 1.2: yes/no/on/off are strings)",
    int: "an integer: decimal, 0o17 or 0x1f (YAML 1.2: 1_000 and 1:30 are strings)",
    float: "a number, e.g. 0.5 or 1e-3",
}


def declared_scalar_types(annotation: Any) -> list[type]:
    """The types an ``__init__`` annotation admits when they are all of :data:`NON_STRING` (``bool``,
    ``int | None``, ...); empty when a string is acceptable (``str``, ``Path``, ``Any``, unions with those)."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    kinds = [a for a in (typing.get_args(annotation) if union else (annotation,)) if a is not type(None)]
    return kinds if kinds and all(k in NON_STRING for k in kinds) else []


def check_setting_types(card: Card, cls: type) -> None:
    """A card setting that is a string where the adapter's ``__init__`` declares only numbers or booleans is a
    CardError naming the setting (``optimize: yes`` is the string "yes" under YAML 1.2, not True)."""
    try:
        hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except (NameError, TypeError, AttributeError):  # an annotation naming a TYPE_CHECKING-only import
        return
    for key, value in card.settings.items():
        kinds = declared_scalar_types(hints.get(key)) if isinstance(value, str) else []
        if kinds:
            fixes = "; or ".join(NON_STRING[k] for k in kinds)
            raise CardError(
                f"{card.path}: setting {key!r} of {card.kind} {card.name!r} is the string {value!r}, but "
                f"{cls.__name__} takes {' or '.join(k.__name__ for k in kinds)}; write {fixes}"
            )


def build(card: Card) -> Any:
    """A new adapter for ``card`` (its class's ``from_card``); unusable settings are a CardError."""
    cls = adapter_class(card)
    check_setting_types(card, cls)
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


def cached(card: Card) -> Any:
    """The adapter a card describes, built once per process."""
    key = card.build_key
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
    key = card.build_key
    if key not in _LOADED:
        with _LOCK:
            if key not in _LOADED:
                task.load()
                _LOADED.add(key)
    return task
