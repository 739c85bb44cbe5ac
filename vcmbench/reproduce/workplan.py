"""An experiment as a runnable grid on this machine: which of its codecs and tasks can run (present, or
stood in for with ``--stand-ins``), which are missing and why, and the work the whole item and the runnable
part represent (encodes, decodes, inferences, evaluations), counted as ``vcmbench run`` would plan them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..cards import CardSet
from .checklist import Availability, Missing
from .experiment import Experiment


@dataclass
class ItemPlan:
    experiment: Experiment
    #: the cards the run uses (a stand-in under its own name)
    datasets: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=list)
    #: stand-in card -> the experiment's card it replaces
    stand_ins: dict[str, str] = field(default_factory=dict)
    #: what keeps a card of the experiment from running here (after stand-ins)
    missing: list[Missing] = field(default_factory=list)
    #: weights the run will download by itself (absent from this machine's caches)
    downloads: list[Missing] = field(default_factory=list)
    #: estimated work of the whole item (every card, full datasets) and of the part that runs here
    work: dict[str, int] = field(default_factory=dict)
    work_here: dict[str, int] = field(default_factory=dict)
    #: item count per dataset used for the estimates, and where it came from ("here" or "expected")
    items: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def runnable(self) -> bool:
        """Every dataset and task, the anchor and at least one more codec can run."""
        exp = self.experiment
        anchor = self.stand_in_for(exp.anchor)
        return (len(self.datasets) == len(exp.datasets) and len(self.tasks) == len(exp.tasks)
                and anchor in self.codecs and len(self.codecs) >= 2)  # fmt: skip

    def stand_in_for(self, name: str) -> str:
        """The card that runs for the experiment's card ``name`` (itself unless stood in for)."""
        return next((s for s, orig in self.stand_ins.items() if orig == name), name)

    def overrides(self) -> dict[str, dict[str, Any]]:
        """Card overrides of the run: the experiment's for the cards that run (moved to a stand-in's name; a
        stand-in's own settings under its name), and grid classes."""
        running = {*self.datasets, *self.tasks, *self.codecs}
        return {self.stand_in_for(k): v for k, v in card_overrides(self.experiment).items()
                if self.stand_in_for(k) in running}  # fmt: skip

    def shown(self, name: str) -> str:
        """A card's name in tables and figures: ``<card> (for <paper card>)`` for a stand-in."""
        return f"{name} (for {self.stand_ins[name]})" if name in self.stand_ins else name

    def task_weights(self) -> dict[str, dict[str, dict[str, str]]]:
        """Codec-paired scoring of the run, for the codecs and tasks that run under their own names."""
        exp = self.experiment
        return {c: {t: q for t, q in per_t.items() if t in self.tasks}
                for c, per_t in exp.task_weights.items() if c in self.codecs}  # fmt: skip

    def qualities(self) -> dict[str, list[Any]]:
        return {self.stand_in_for(k): v for k, v in self.experiment.qualities.items() if self.stand_in_for(k) in self.codecs}


def card_overrides(exp: Experiment) -> dict[str, dict[str, Any]]:
    """The card settings an experiment sets, by card name: its ``grid.overrides`` and, for its datasets, the
    grid's sequence ``classes``."""
    out = {k: dict(v) for k, v in exp.overrides.items()}
    for ds in exp.datasets if exp.classes else ():
        out.setdefault(ds, {})["classes"] = list(exp.classes)
    return out


def needs(exp: Experiment, stand_ins: bool) -> set[tuple[str, str]]:
    """Every (kind, card) the experiment may use: its cards, their paired scorers, and (asked) stand-ins."""
    out = {("dataset", d) for d in exp.datasets} | {("task", t) for t in exp.tasks} | {("codec", c) for c in exp.codecs}
    out |= {("task", s) for per_t in exp.task_weights.values() for per_q in per_t.values() for s in per_q.values()}
    if stand_ins:
        out |= {(_kind(exp, orig), s) for orig, s in exp.stand_ins.items()}
    return out


def _kind(exp: Experiment, name: str) -> str:
    return "codec" if name in exp.codecs else "task" if name in exp.tasks else "dataset"


def _choose(exp: Experiment, kind: str, names: tuple[str, ...], avail: Availability, stand_ins: bool,
            plan: ItemPlan, downloads: bool) -> list[str]:  # fmt: skip
    """The cards of one kind that run: present ones (or, with ``downloads``, fetched by the run itself), else
    their stand-in when asked and present."""
    chosen = []
    for name in names:
        if avail.has(kind, name, downloads):
            chosen.append(name)
            if (kind, name) in avail.missing:
                plan.downloads.append(avail.missing[(kind, name)])
            continue
        sub = exp.stand_ins.get(name) if stand_ins else None
        if sub is not None and avail.has(kind, sub, downloads):
            chosen.append(sub)
            plan.stand_ins[sub] = name
            if (kind, sub) in avail.missing:
                plan.downloads.append(avail.missing[(kind, sub)])
            continue
        plan.missing.append(avail.missing[(kind, name)])
    return chosen


def _paired_ok(exp: Experiment, codec: str, tasks: list[str], avail: Availability, plan: ItemPlan,
               downloads: bool) -> bool:  # fmt: skip
    """A codec with paired scorers runs only with all of them (else its points would be scored by a model
    its protocol does not name)."""
    ok = True
    for task, per_q in exp.task_weights.get(codec, {}).items():
        if task not in tasks:
            continue
        for scorer in set(per_q.values()):
            if not avail.has("task", scorer, downloads):
                plan.missing.append(avail.missing[("task", scorer)])
                ok = False
    return ok


def plan_item(exp: Experiment, avail: Availability, cards: CardSet, stand_ins: bool = False,
              downloads: bool = True) -> ItemPlan:  # fmt: skip
    """The item on this machine; ``downloads``: weights the run would download count as present (False for an
    offline machine, where they are missing and may be stood in for)."""
    plan = ItemPlan(exp)
    plan.datasets = _choose(exp, "dataset", exp.datasets, avail, stand_ins, plan, downloads)
    plan.tasks = _choose(exp, "task", exp.tasks, avail, stand_ins, plan, downloads)
    codecs = _choose(exp, "codec", exp.codecs, avail, stand_ins, plan, downloads)
    plan.codecs = [c for c in codecs if _paired_ok(exp, c, plan.tasks, avail, plan, downloads)]
    for ds in exp.datasets:
        here = avail.items.get(ds)
        plan.items[ds] = (here, "here") if here is not None else (exp.expected_items.get(ds, 0), "expected")
    ladders = {c: len(exp.qualities.get(c, cards.get("codec", c).qualities)) for c in exp.codecs}
    plan.work = estimate_work({ds: n for ds, (n, _) in plan.items.items()}, ladders, len(exp.tasks))
    here_ladders = {c: len(plan.qualities().get(c, cards.get("codec", c).qualities)) for c in plan.codecs}
    here_items = {ds: avail.items.get(ds, 0) for ds in plan.datasets}
    plan.work_here = estimate_work(here_items, here_ladders, len(plan.tasks)) if plan.runnable else {}
    return plan


def estimate_work(items: Mapping[str, int], ladders: Mapping[str, int], n_tasks: int) -> dict[str, int]:
    """Work of a grid planned from scratch (nothing cached): every item coded at every rate point once
    (encodes are shared by tasks), decoded and inferred once per task, plus the uncompressed point of each
    task; one evaluation per (dataset, task, rate point)."""
    n = sum(items.values())
    points = sum(ladders.values())
    return {
        "encodes": n * points,
        "decodes": n * points * n_tasks,
        "inferences": n * (points + 1) * n_tasks,
        "evaluations": len(items) * n_tasks * (points + 1),
    }
