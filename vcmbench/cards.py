"""Declarative YAML cards for codecs, tasks and datasets.

A card names its adapter, its settings and a version. Built-in cards live in the
top-level ``codecs/``, ``tasks/`` and ``datasets/`` folders of the repository;
users add folders of their own with ``--cards DIR`` (each may hold ``codecs/``,
``tasks/`` and ``datasets/`` sub-folders, or cards with an explicit ``kind:``).

A broken card is always a loud error naming the file: cards are never skipped. Cards and ``--set``
values are read with YAML 1.2 rules (:mod:`vcmbench.yaml12`), so ``subsampling: 4:2:0`` is a string.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import yaml12
from .media.hashing import stable_hash
from .registry import REGISTRIES, did_you_mean

KINDS = ("codec", "task", "dataset")
FOLDERS = {"codec": "codecs", "task": "tasks", "dataset": "datasets"}
ALLOWED_KEYS = {
    "codec": {"name", "kind", "adapter", "version", "description", "qualities", "settings", "task_weights"},
    "task": {"name", "kind", "adapter", "version", "description", "settings"},
    "dataset": {"name", "kind", "adapter", "version", "description", "settings"},
}


class CardError(ValueError):
    """A card that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Card:
    kind: str
    name: str
    adapter: str
    version: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    qualities: tuple[Any, ...] = ()
    description: str = ""
    path: Path | None = None
    #: codec-paired scoring: task name -> {quality label, or "*" for every quality -> the task card that scores
    #: that rate point}; empty: every task scores every rate point (the plain cross product). Not part of the
    #: digest: which model scores a point does not change the codec's bitstreams.
    task_weights: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @functools.cached_property
    def build_key(self) -> str:
        """What an adapter built from the card depends on (kind, name, adapter, settings), hashed once per card
        object: workers look their adapter up by it for every job (:func:`vcmbench.adapters.cached`)."""
        return stable_hash({"kind": self.kind, "name": self.name, "adapter": self.adapter,
                            "settings": dict(self.settings)})  # fmt: skip

    def digest(self) -> str:
        """Stable hash of what the card says (not where it lives)."""
        return stable_hash(
            {"kind": self.kind, "adapter": self.adapter, "version": self.version, "settings": dict(self.settings)}
        )

    def with_settings(self, **overrides: Any) -> Card:
        merged = dict(self.settings)
        merged.update(overrides)
        return replace(self, settings=merged)


def builtin_cards_root() -> Path:
    """The repository root that holds the built-in ``codecs/``, ``tasks/``, ``datasets/`` folders."""
    env = os.environ.get("VCMBENCH_CARDS_ROOT")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent


def _expand(value: Any) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` and ``~`` in string settings."""
    if isinstance(value, str):
        return os.path.expanduser(os.path.expandvars(_expand_defaults(value)))
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _expand_defaults(text: str) -> str:
    # os.path.expandvars has no ${VAR:-default}; handle that form first.
    out, i = [], 0
    while i < len(text):
        j = text.find("${", i)
        if j < 0:
            out.append(text[i:])
            break
        k = text.find("}", j)
        if k < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        body = text[j + 2 : k]
        if ":-" in body:
            var, default = body.split(":-", 1)
            out.append(os.environ.get(var) or default)
        else:
            out.append(text[j : k + 1])
        i = k + 1
    return "".join(out)


def load_card(path: Path, kind: str | None = None) -> Card:
    """Read and validate one card file."""
    try:
        raw = yaml12.load(path.read_text())
    except yaml.YAMLError as exc:
        raise CardError(f"{path}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise CardError(f"{path}: cannot read card: {exc}") from exc
    if not isinstance(raw, dict):
        raise CardError(f"{path}: a card must be a YAML mapping, got {type(raw).__name__}")
    kind = raw.get("kind", kind)
    if kind not in KINDS:
        raise CardError(f"{path}: unknown card kind {kind!r}; put it under codecs/, tasks/ or datasets/ or set kind:")
    unknown = set(raw) - ALLOWED_KEYS[kind]
    if unknown:
        raise CardError(
            f"{path}: unknown key(s) {sorted(unknown)} in {kind} card; allowed: {sorted(ALLOWED_KEYS[kind])}"
            " (adapter options go under settings:)"
        )
    for key in ("adapter", "version"):
        if key not in raw:
            raise CardError(f"{path}: missing required key {key!r}")
    name = str(raw.get("name", path.stem))
    adapter = str(raw["adapter"])
    if ":" not in adapter and adapter not in REGISTRIES[kind]:
        raise CardError(
            f"{path}: unknown {kind} adapter {adapter!r}{did_you_mean(adapter, REGISTRIES[kind].names())}; "
            f"known: {', '.join(REGISTRIES[kind].names())}, or give 'package.module:Class'"
        )
    settings = raw.get("settings") or {}
    if not isinstance(settings, dict):
        raise CardError(f"{path}: settings: must be a mapping")
    qualities: tuple[Any, ...] = ()
    if kind == "codec":
        q = raw.get("qualities", [])
        if not isinstance(q, list):
            raise CardError(f"{path}: qualities: must be a list (the default quality ladder)")
        qualities = tuple(q)
        if adapter != "none" and not qualities:
            raise CardError(f"{path}: a codec card needs a non-empty qualities: ladder")
    return Card(
        kind=kind,
        name=name,
        adapter=adapter,
        version=str(raw["version"]),
        settings=_expand(settings),
        qualities=qualities,
        description=str(raw.get("description", "")).strip(),
        path=path,
        task_weights=parse_task_weights(raw.get("task_weights"), str(path)),
    )


def parse_task_weights(raw: Any, where: str) -> dict[str, dict[str, str]]:
    """A codec card's (or a run's) ``task_weights:``, normalised to {task: {quality label or "*": task card}}.

    Each task maps to a task card name (scores every rate point) or to a mapping of quality -> task card
    name, e.g. ``{yolov5: {1: yolov5_saicm93, 2: yolov5_saicm78}}``; qualities are compared as written
    (``1`` and ``"1"`` are the same point)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CardError(f"{where}: task_weights: must map task names to a task card, or to quality -> task card")
    out: dict[str, dict[str, str]] = {}
    for task, spec in raw.items():
        per_q = {"*": spec} if isinstance(spec, str) else spec
        if not isinstance(per_q, dict) or not per_q:
            raise CardError(f"{where}: task_weights.{task}: give a task card name, or a mapping quality -> task card")
        for q, card in per_q.items():
            if not isinstance(card, str) or not card:
                raise CardError(f"{where}: task_weights.{task}.{q}: {card!r} is not a task card name")
        out[str(task)] = {str(q): card for q, card in per_q.items()}
    return out


class CardSet:
    """All cards visible to a run: built-ins plus any ``--cards`` folders."""

    def __init__(self, extra_dirs: Iterable[Path] = ()) -> None:
        self.cards: dict[str, dict[str, Card]] = {k: {} for k in KINDS}
        roots = [builtin_cards_root(), *[Path(d) for d in extra_dirs]]
        for root in roots:
            if not root.exists():
                raise CardError(f"cards folder {root} does not exist")
            self._load_root(root)

    def _load_root(self, root: Path) -> None:
        found_sub = False
        for kind in KINDS:
            folder = root / FOLDERS[kind]
            if folder.is_dir():
                found_sub = True
                for path in sorted(folder.glob("*.y*ml")):
                    self._add(load_card(path, kind))
        if not found_sub:  # a flat folder of cards with explicit kind:
            for path in sorted(root.glob("*.y*ml")):
                self._add(load_card(path, None))

    def _add(self, card: Card) -> None:
        existing = self.cards[card.kind].get(card.name)
        if existing is not None:
            raise CardError(
                f"duplicate {card.kind} card name {card.name!r}: {existing.path} and {card.path}; rename one"
            )
        self.cards[card.kind][card.name] = card

    def names(self, kind: str) -> list[str]:
        return sorted(self.cards[kind])

    def get(self, kind: str, name: str) -> Card:
        try:
            return self.cards[kind][name]
        except KeyError:
            raise CardError(
                f"unknown {kind} {name!r}{did_you_mean(name, self.names(kind))}; "
                f"available: {', '.join(self.names(kind))} (see `vcmbench ls`)"
            ) from None


def parse_overrides(pairs: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Parse ``--set card.key=value`` pairs into {card: {key: value}}; values are read as YAML 1.2
    (:mod:`vcmbench.yaml12`: ``4:2:0`` and ``yes`` stay strings, only ``true``/``false`` are booleans)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        if "=" not in pair or "." not in pair.split("=", 1)[0]:
            raise CardError(f"--set {pair!r}: expected CARD.KEY=VALUE, e.g. --set yolov5.weights=/path/yolov5n.pt")
        key, value = pair.split("=", 1)
        card, setting = key.split(".", 1)
        out.setdefault(card, {})[setting] = _expand(_override_value(card, setting, value)) if value else None
    return out


def _override_value(card: str, setting: str, value: str) -> Any:
    try:
        return yaml12.load(value)
    except yaml.YAMLError as exc:
        raise CardError(
            f"--set {card}.{setting}={value}: the value is not valid YAML ({exc}); to pass it as a string, "
            f"quote it inside the argument: --set '{card}.{setting}=\"{value}\"'"
        ) from None


def resolve_card_path(value: str | None, card: Card) -> str | None:
    """A relative path in a card is taken relative to the folder holding the card's ``tasks/`` folder,
    when it does not exist relative to the working directory (so built-in cards work from anywhere)."""
    if not value or Path(value).expanduser().is_absolute():
        return value
    if Path(value).exists():
        return str(Path(value).resolve())
    if card.path is None:
        return value
    cand = card.path.resolve().parent.parent / value
    return str(cand) if cand.exists() else value
