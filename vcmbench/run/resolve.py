"""Resolving a :class:`~vcmbench.run.config.RunConfig` into a :class:`ResolvedRun`: the cards chosen and
overridden, the adapters built, the items selected and hashed, every task x dataset pair checked.

Everything that can be wrong is found here, before any work. :func:`select_cards` and
:func:`background_mode` are pure (cards in, cards out), so they are tested without models;
:func:`resolve` builds the adapters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..adapters import build
from ..cards import Card, CardError, CardSet, parse_task_weights
from ..codecs.base import Codec
from ..contracts import Categories, ClassMapped, ClipFrames, unmet
from ..datasets.base import Dataset, Item
from ..errors import VcmbenchError
from ..metrics.coco_map import resolve_backend
from ..plan import REFERENCE, quality_label
from ..tasks.base import Task
from ..tasks.classes import ClassMapError
from .config import RunConfig

#: background_scoring modes
SCORING_MODES = ("auto", "on", "off")


class SelectedDataset(NamedTuple):
    dataset: Dataset
    items: list[Item]
    #: content hash of each item (its file's sha256, plus what selects a part of a file)
    shas: list[str]


class CodecLadder(NamedTuple):
    codec: Codec
    qualities: list[Any]


@dataclass
class ResolvedRun:
    codecs: dict[str, CodecLadder]
    tasks: dict[str, Task]
    datasets: dict[str, SelectedDataset]
    #: every chosen card (codecs, tasks, datasets) by name, with the run's overrides applied
    cards: dict[str, Card]
    #: background scoring as it applies on this machine: "on", "off" or "auto" (by unit size)
    scoring: str
    #: the COCO mAP backend of the run
    coco_eval: str
    #: codec-paired scoring: the task cards that score some rate points instead of their task, by name
    scorers: dict[str, Task] = field(default_factory=dict)
    #: (codec, quality label, task) -> the scorer card of that rate point (absent: the task itself)
    pairing: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def task(self, name: str) -> Task:
        """A task of the grid or a paired scorer, by card name."""
        return self.tasks[name] if name in self.tasks else self.scorers[name]

    def scored_by(self, name: str) -> str:
        """Which model scores with task card ``name``, in words for tables: the card and its weights file."""
        weights = self.cards[name].settings.get("weights")
        return f"{name} ({Path(str(weights)).name})" if weights else name

    def scorer_of(self, codec: str, quality: Any, task: str) -> tuple[str, str] | None:
        """The (scorer card, identity) of a rate point under codec-paired scoring, or None."""
        name = self.pairing.get((codec, quality_label(quality) or "", task))
        return None if name is None else (name, self.scorers[name].identity())


# ---- pure parts ----------------------------------------------------------------------------------
def select_cards(cfg: RunConfig, cards: CardSet) -> dict[str, Card]:
    """The run's cards by name: chosen from ``cards``, with ``--set`` overrides, data roots and classes."""
    chosen: dict[str, Card] = {}
    for kind, names in (("codec", cfg.codecs), ("task", cfg.tasks), ("dataset", cfg.datasets)):
        if not names:
            raise CardError(f"no {kind} selected")
        for name in names:
            if name == REFERENCE and kind == "codec":
                raise CardError(f"{REFERENCE!r} is added to every run automatically; do not list it")
            chosen[name] = cards.get(kind, name)
    for name, settings in cfg.overrides.items():
        if name not in chosen:
            raise CardError(f"--set {name}.…: no selected card named {name!r}; selected: {', '.join(sorted(chosen))}")
        chosen[name] = chosen[name].with_settings(**settings)
    for name in cfg.datasets:
        chosen[name] = _dataset_card(cfg, chosen[name])
    unknown_q = set(cfg.qualities) - {"*"} - set(cfg.codecs)
    if unknown_q:
        raise CardError(f"--quality given for codec(s) not in the run: {sorted(unknown_q)}")
    unknown_roots = set(cfg.data_roots) - {"*"} - set(cfg.datasets)
    if unknown_roots:
        raise CardError(f"--data-root given for dataset(s) not in the run: {sorted(unknown_roots)}")
    return chosen


def _dataset_card(cfg: RunConfig, card: Card) -> Card:
    root = cfg.data_roots.get(card.name, cfg.data_roots.get("*"))
    if root:
        card = card.with_settings(root=str(root))
    if cfg.classes:
        if "classes" not in card.settings:
            raise CardError(f"--classes: dataset {card.name} has no sequence classes (sfu_hw has: A..E)")
        card = card.with_settings(classes=list(cfg.classes))
    return card


def background_mode(mode: str, executor: str, address: str | None, cuda: Callable[[], bool]) -> str:
    """The background-scoring mode on this machine; "auto" stays "auto" only where the model leaves the
    driver's CPU free (a GPU here, or models on a remote Ray cluster), else it is "off"."""
    if mode not in SCORING_MODES:
        raise VcmbenchError(f"background_scoring must be auto, on or off, not {mode!r}")
    if mode == "auto":
        remote = executor == "ray" and bool(address)
        return "auto" if remote or cuda() else "off"
    return mode


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def coco_eval_backend(cfg: RunConfig) -> str:
    """The COCO mAP backend (from the config, else ``$VCMBENCH_COCO_EVAL``), checked."""
    try:
        return resolve_backend(cfg.coco_eval)
    except ValueError as e:
        raise VcmbenchError(str(e)) from None


def check_pairs(codecs: Mapping[str, CodecLadder], tasks: Mapping[str, Task],
                datasets: Mapping[str, SelectedDataset]) -> None:  # fmt: skip
    """Every codec codes, and every task can score, every dataset's items: media (images or clips), the
    contracts a task requires of a dataset (:mod:`vcmbench.contracts`), and a detector's classes against the
    dataset's categories (:func:`check_classes`)."""
    for ds_name, (ds, _, _) in datasets.items():
        what = "clips" if ds.media == "video" else "images"
        for name, (codec, _) in codecs.items():
            if ds.media not in codec.media:
                raise CardError(f"codec {name} codes {' and '.join(codec.media)}s; dataset {ds_name} holds {what}: "
                                f"leave one of them out (video codecs: nerv, sanerv, vvenc, x265, vtm)")  # fmt: skip
        for name, task in tasks.items():
            if ds.media not in task.media:
                raise CardError(f"task {name} scores images only; dataset {ds_name} holds {what}: frames of clips "
                                "are scored by the detection tasks (yolov5, yolov7, synth_det, mask_rcnn)")  # fmt: skip
            needs = (*task.requires, *((ClipFrames,) if ds.media == "video" else ()))
            lacking = unmet(ds, needs)
            if lacking:
                raise CardError(f"task {name} cannot score dataset {ds_name}: the task needs "
                                + "; ".join(lacking) + f" (dataset adapter {type(ds).__qualname__})")
            check_classes(name, task, ds_name, ds)


def check_classes(name: str, task: Task, ds_name: str, ds: Dataset) -> None:
    """A detector whose classes do not fit the dataset's categories (none or too few match, a class map that
    names absent ids or contradicts the names: :mod:`vcmbench.tasks.classes`) is refused here, before any
    work, rather than scoring about 0. Reads the checkpoint's class names, builds no model."""
    if not (isinstance(task, ClassMapped) and isinstance(ds, Categories)):
        return
    try:
        task.category_map(ds)
    except ClassMapError as exc:
        reason = str(exc).removeprefix(f"task {task.name}: ")
        raise CardError(f"task {name} cannot score dataset {ds_name}: {reason}") from None


# ---- building ------------------------------------------------------------------------------------
def resolve(cfg: RunConfig, file_sha256: Callable[[Path], str]) -> ResolvedRun:
    """Cards, adapters and items of the run; ``file_sha256`` hashes item files (the store's cached hash)."""
    coco_eval = coco_eval_backend(cfg)  # checks $VCMBENCH_COCO_EVAL too, before any work
    cards = CardSet([Path(d) for d in cfg.cards_dirs])
    chosen = select_cards(cfg, cards)
    datasets = {name: _select_items(cfg, build(chosen[name]), file_sha256) for name in cfg.datasets}
    codecs = {}
    for name in cfg.codecs:
        ladder = cfg.qualities.get(name, cfg.qualities.get("*", list(chosen[name].qualities)))
        codecs[name] = prepare_codec(chosen[name], ladder)
    tasks = {name: prepare_task(chosen[name], cfg.batch_size) for name in cfg.tasks}
    pairing = pair_scorers(cfg, chosen, {name: ladder.qualities for name, ladder in codecs.items()})
    scorers = build_scorers(cfg, cards, chosen, pairing)
    check_pairs(codecs, {**tasks, **scorers}, datasets)
    scoring = background_mode(cfg.background_scoring, cfg.executor, cfg.address, cuda_available)
    return ResolvedRun(codecs, tasks, datasets, chosen, scoring, coco_eval, scorers, pairing)


def pair_scorers(cfg: RunConfig, chosen: Mapping[str, Card],
                 ladders: Mapping[str, list[Any]]) -> dict[tuple[str, str, str], str]:  # fmt: skip
    """Codec-paired scoring of the run: (codec, quality label, task) -> scorer card, from each codec card's
    ``task_weights:`` with the run's (``cfg.task_weights``) on top. A quality's own entry wins over ``"*"``;
    an entry for a task the run does not score is ignored; one for a quality outside the codec's ladder
    is an error (a typo would otherwise score that point with the wrong model)."""
    pairing: dict[tuple[str, str, str], str] = {}
    for codec, qualities in ladders.items():
        merged = {**chosen[codec].task_weights, **parse_task_weights(cfg.task_weights.get(codec), f"run: codec {codec}")}
        labels = {quality_label(q) or "" for q in qualities}
        for task, per_q in merged.items():
            stray = set(per_q) - labels - {"*"}
            if stray and task in cfg.tasks:
                raise CardError(f"codec {codec}: task_weights.{task} names qualities {sorted(stray)} that the run "
                                f"does not code (its ladder: {sorted(labels)})")  # fmt: skip
            if task not in cfg.tasks:
                continue
            for label in labels:
                card = per_q.get(label, per_q.get("*"))
                if card is not None and card != task:
                    pairing[(codec, label, task)] = card
    return pairing


def prepare_codec(card: Card, ladder: list[Any]) -> CodecLadder:
    """A run's codec: built, its ladder checked, and its identity taken, which probes binaries and
    checkpoints now, so a missing encoder or file is an error before any work."""
    codec: Codec = build(card)
    qualities = [codec.validate_quality(q) for q in ladder]
    codec.identity()
    return CodecLadder(codec, qualities)


def prepare_task(card: Card, batch_size: int | None = None) -> Task:
    """A run's task (or paired scorer): built, with the run's batch size, and its identity taken, which
    resolves its weights now, so a missing file is an error before any work."""
    task: Task = build(card)
    if batch_size:
        task.batch_size = batch_size
    task.identity()
    return task


def build_scorers(cfg: RunConfig, cards: CardSet, chosen: dict[str, Card],
                  pairing: Mapping[tuple[str, str, str], str]) -> dict[str, Task]:  # fmt: skip
    """The paired scorer tasks, built once each; each must use the adapter of the task it stands in for, and
    its card joins ``chosen`` (the executor builds models from cards)."""
    scorers: dict[str, Task] = {}
    for (codec, _, task), name in sorted(pairing.items()):
        if name in scorers:
            continue
        card = cards.get("task", name)
        if card.adapter != chosen[task].adapter:
            raise CardError(f"codec {codec}: task_weights.{task} names task card {name} (adapter {card.adapter}), "
                            f"which cannot stand in for task {task} (adapter {chosen[task].adapter})")  # fmt: skip
        if name in chosen and chosen[name].kind != "task":
            raise CardError(f"task card {name} (a scorer of codec {codec}) has the name of a {chosen[name].kind} "
                            "of the run; rename one of them")  # fmt: skip
        chosen.setdefault(name, card)
        scorers[name] = prepare_task(chosen[name], cfg.batch_size)
    return scorers


def _select_items(cfg: RunConfig, ds: Dataset, file_sha256: Callable[[Path], str]) -> SelectedDataset:
    ds.check()
    items = ds.items(limit=cfg.limit, ids=cfg.ids, exclude=cfg.exclude)
    if not items:
        raise VcmbenchError(f"dataset {ds.name}: the selection is empty")
    return SelectedDataset(ds, items, [ds.content_hash(it, file_sha256(it.path)) for it in items])
