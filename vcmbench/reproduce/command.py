"""``vcmbench reproduce SUITE``: the plan of every item, the checklist of what is missing here, and (unless
``--dry-run``) the run of every item that can run, with its outputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..cards import CardSet
from ..errors import VcmbenchError
from ..run.runner import exported
from .checklist import Missing, probe
from .execute import run_item, write_outputs
from .experiment import load_resources, load_suite
from .workplan import ItemPlan, card_overrides, needs, plan_item


@dataclass
class ReproduceOptions:
    suite: str
    only: list[str] | None = None
    dry_run: bool = False
    stand_ins: bool = False
    data_roots: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    out: Path = Path("results")
    progress: bool = True
    #: no downloads: weights not on this machine are missing (and may be stood in for) instead of fetched
    offline: bool = False


def plans(opts: ReproduceOptions) -> list[ItemPlan]:
    """Every selected item of the suite, planned against what this machine has."""
    experiments = load_suite(opts.suite, opts.only)
    cards = CardSet()
    wanted = set().union(*(needs(e, opts.stand_ins) for e in experiments))
    overrides: dict[str, dict] = {}
    for e in experiments:
        for name, settings in card_overrides(e).items():
            overrides.setdefault(name, {}).update(settings)
    avail = probe(cards, wanted, overrides, opts.data_roots, load_resources(opts.suite), opts.limit)
    return [plan_item(e, avail, cards, opts.stand_ins, downloads=not opts.offline) for e in experiments]


def describe(plan: ItemPlan) -> list[str]:
    """The plan of one item in words: what runs, stood in for, is missing, and the work."""
    exp = plan.experiment
    status = "runs here" if plan.runnable else "cannot run here"
    lines = [f"{exp.name} ({exp.paper_item}): {exp.title} -- {status}"]
    lines.append(f"  grid: {', '.join(exp.datasets)} x {', '.join(exp.tasks)} x {', '.join(exp.codecs)}; "
                 f"anchor {exp.anchor}; metrics {', '.join(exp.metrics)}; plot {exp.plot}")  # fmt: skip
    items = ", ".join(f"{ds} {n} ({'here' if src == 'here' else 'full dataset, absent here'})"
                      for ds, (n, src) in plan.items.items())  # fmt: skip
    lines.append(f"  items: {items}")
    lines.append("  work of the whole item: " + _work(plan.work))
    if plan.runnable:
        lines.append(f"  runs: codecs {', '.join(plan.codecs)}; tasks {', '.join(plan.tasks)} -- " + _work(plan.work_here))
    if plan.stand_ins:
        lines.append("  stand-ins: " + ", ".join(f"{s} for {o}" for s, o in plan.stand_ins.items()))
    if exp.published:
        lines.append(f"  published numbers to compare: {len(exp.published)} ({', '.join(p.label for p in exp.published)})")
    if plan.missing:
        lines.append(f"  missing here: {', '.join(f'{m.kind} {m.name}' for m in plan.missing)}")
    if plan.downloads:
        lines.append(f"  downloaded by the first run: {', '.join(f'{m.kind} {m.name}' for m in plan.downloads)}")
    return lines


def _work(work: dict[str, int]) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in work.items())


def checklist(all_plans: list[ItemPlan]) -> list[str]:
    """Each missing dataset root, binary or weights file once, with the items needing it and how to get it."""
    by: dict[tuple[str, str], tuple[Missing, list[str]]] = {}
    for plan in all_plans:
        for m in [*plan.missing, *plan.downloads]:
            by.setdefault((m.kind, m.name), (m, []))[1].append(plan.experiment.name)
    lines = []
    for (kind, name), (m, items) in sorted(by.items()):
        auto = " (downloads by itself on the first run with network access)" if m.automatic else ""
        lines.append(f"[ ] {kind} {name}{auto} -- needed by {', '.join(items)}")
        lines.append(f"      problem: {m.problem}")
        if m.get:
            lines.append(f"      get it: {m.get}")
    return lines


def reproduce(opts: ReproduceOptions, echo: Callable[[str], None] = print, log: Callable[[str], None] = print) -> int:
    """Plan, print, and (unless a dry run) run every runnable item. 0: every selected item ran whole (or, in a
    dry run, was planned); 1: some item, or some codec or task of one, could not run here (the checklist says
    why) or failed."""
    all_plans = plans(opts)
    echo(f"vcmbench reproduce {opts.suite}: {len(all_plans)} item(s)" + (" (dry run: nothing is run)" if opts.dry_run else ""))
    for plan in all_plans:
        for line in describe(plan):
            echo(line)
    missing = checklist(all_plans)
    if missing:
        echo("")
        echo("checklist of what is missing here:")
        for line in missing:
            echo(line)
    if opts.dry_run:
        return 0
    ok = all(p.runnable and not p.missing for p in all_plans)
    for plan in all_plans:
        if plan.runnable:
            ok = run_and_write(plan, opts, echo, log) and ok
    return 0 if ok else 1


def run_and_write(plan: ItemPlan, opts: ReproduceOptions, echo: Callable[[str], None],
                  log: Callable[[str], None]) -> bool:  # fmt: skip
    """Run one item and write its outputs; a failure is reported and the other items still run."""
    name = plan.experiment.name
    echo(f"\n== {name}: running {', '.join(plan.codecs)} x {', '.join(plan.tasks)}")
    try:
        with exported("VCMBENCH_OFFLINE", "1" if opts.offline else None):
            report = run_item(plan, opts.out, opts.data_roots, opts.limit, opts.progress, log)
    except VcmbenchError as exc:
        echo(f"{name}: stopped before any work: {exc}")
        return False
    if report.status != "done":
        echo(f"{name}: run {report.status}; every finished result is stored, rerun the same command to resume")
        return False
    if report.failures:
        echo(f"{name}: {len(report.failures)} item(s) failed (see {report.run_dir}); rerun to retry them")
    item_dir = opts.out / "reproduce" / opts.suite / name
    for path in write_outputs(plan, report.run_dir, item_dir):
        echo(f"written: {path}")
    return not report.failures
