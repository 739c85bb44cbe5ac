"""Running an item's runnable grid and writing what the paper shows: the RD figure of its plot metric (with
the paper's published points), the BD table against its anchor, the measured points, and the paper's numbers
beside the measured ones; stand-ins are labelled as such everywhere."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..report import headline, load_results, lower_is_better, with_psnr_rows
from ..report.items import load_item_sets
from ..report.plot import rd_figures, slug
from ..report.tables import BDOptions, bd_table, markdown_table, points_table
from ..run.config import RunConfig
from ..run.runner import RunReport, run
from .experiment import Published
from .workplan import ItemPlan


def run_config(plan: ItemPlan, out: Path, data_roots: dict[str, str], limit: int | None, progress: bool) -> RunConfig:
    """The vcmbench run of an item: its runnable cards, ladders, overrides and pairings."""
    return RunConfig(codecs=plan.codecs, tasks=plan.tasks, datasets=plan.datasets, qualities=plan.qualities(),
                     data_roots=dict(data_roots), limit=limit, overrides=plan.overrides(), out=str(out),
                     progress=progress, task_weights=plan.task_weights())  # fmt: skip


def run_item(plan: ItemPlan, out: Path, data_roots: dict[str, str], limit: int | None, progress: bool,
             log: Callable[[str], None]) -> RunReport:  # fmt: skip
    return run(run_config(plan, out, data_roots, limit, progress), log)


def labelled(df: pd.DataFrame, plan: ItemPlan) -> pd.DataFrame:
    """Stand-in codecs and tasks renamed ``<card> (for <paper card>)`` for tables and figures."""
    names = {s: plan.shown(s) for s in plan.stand_ins}
    return df.assign(codec=df.codec.replace(names), task=df.task.replace(names))


def published_rows(df: pd.DataFrame, plan: ItemPlan) -> pd.DataFrame:
    """Each published number beside the measured one: at the same rate point (``quality``), interpolated on
    the codec's measured curve at the published bpp (linear in log bpp, inside the measured range only), or,
    when the paper gives no rate, at every measured rate point of that codec."""
    rows = []
    for pub in plan.experiment.published:
        codec = plan.stand_in_for(pub.codec)
        for metric, value in pub.values.items():
            curve = df[(df.codec == codec) & (df.metric == metric)].sort_values("bpp")
            for where, measured in _measured(curve, pub):
                rows.append({"published": pub.label, "codec": plan.shown(codec), "metric": metric,
                             "paper_bpp": pub.bpp, "paper_value": value, "measured_at": where,
                             "measured_value": measured, "source": pub.source})  # fmt: skip
    return pd.DataFrame(rows)


def _measured(curve: pd.DataFrame, pub: Published) -> list[tuple[str, float]]:
    if curve.empty:
        return [("not run here", math.nan)]
    if pub.quality is not None:
        hit = curve[curve.quality.astype(str) == pub.quality]
        return [(f"quality {pub.quality}", float(hit.value.iloc[0]) if not hit.empty else math.nan)]
    if pub.bpp is not None:
        lo, hi = float(curve.bpp.min()), float(curve.bpp.max())
        if not lo <= pub.bpp <= hi:
            return [(f"{pub.bpp:g} bpp is outside the measured {lo:.3f}-{hi:.3f} bpp", math.nan)]
        v = float(np.interp(math.log(pub.bpp), np.log(curve.bpp.to_numpy(float)), curve.value.to_numpy(float)))
        return [(f"{pub.bpp:g} bpp (interpolated)", v)]
    return [(f"quality {q} ({b:.3f} bpp)", float(v)) for q, b, v in zip(curve.quality, curve.bpp, curve.value, strict=True)]


def write_outputs(plan: ItemPlan, run_dir: Path, item_dir: Path) -> list[Path]:
    """The item's figure(s), tables and report.md in ``item_dir``; returns the files written."""
    exp = plan.experiment
    item_dir.mkdir(parents=True, exist_ok=True)
    raw = load_results(run_dir)
    lower = lower_is_better(raw)
    df = headline(with_psnr_rows(raw), list(exp.metrics))
    opts = BDOptions()
    bd, anchor = bd_table(df, anchor=plan.stand_in_for(exp.anchor), options=opts, lower=lower,
                          items=load_item_sets(raw, run_dir))  # fmt: skip
    shown, shown_bd = labelled(df, plan), labelled(bd, plan)
    written = _figures(shown[shown.metric == exp.plot], shown_bd, plan, item_dir, lower, f"vs {anchor}, {opts.method}")
    points = points_table(shown)
    pub = published_rows(df, plan)
    for name, table in (("points.csv", points), ("bd.csv", shown_bd), ("published.csv", pub)):
        table.to_csv(item_dir / name, index=False)
        written.append(item_dir / name)
    report = item_dir / "report.md"
    report.write_text(_report_text(plan, run_dir, points, shown_bd, pub, anchor, opts, written))
    return [*written, report]


def _figures(df: pd.DataFrame, bd: pd.DataFrame, plan: ItemPlan, item_dir: Path, lower: frozenset[str],
             caption: str) -> list[Path]:  # fmt: skip
    """The RD figure(s) of the plot metric, with the paper's published points that have a rate."""
    import matplotlib.pyplot as plt

    out = []
    for (ds, task, metric), fig in rd_figures(df, bd=bd, caption=caption, lower=lower):
        ax = fig.axes[0]
        for pub in plan.experiment.published:
            if pub.bpp is not None and metric in pub.values:
                ax.plot([pub.bpp], [pub.values[metric]], marker="*", markersize=13, linestyle="none",
                        color="black", label=f"{pub.label} (paper)")  # fmt: skip
        title = ax.get_legend().get_title().get_text() if ax.get_legend() else ""
        legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize="x-small", title=title or None)
        if title:
            legend.get_title().set_fontsize("xx-small")
        fig.set_size_inches(6.4, 4.6 + 0.22 * len(legend.get_texts()))
        fig.tight_layout()  # the legend below the axes: it hides no point
        stem = slug(f"{plan.experiment.name}_{ds}_{task.split(' (for ')[0]}_{metric}")
        for fmt in ("png", "svg"):
            path = item_dir / f"{stem}.{fmt}"
            fig.savefig(path, dpi=120)
            out.append(path)
        plt.close(fig)
    return out


def _report_text(plan: ItemPlan, run_dir: Path, points: pd.DataFrame, bd: pd.DataFrame, pub: pd.DataFrame,
                 anchor: str, opts: BDOptions, files: list[Path]) -> str:  # fmt: skip
    exp = plan.experiment
    lines = [f"# {exp.title}", "", f"Paper item: {exp.paper_item}. Experiment file: `{exp.path.name}`. "
             f"Run: `{run_dir}`.", ""]  # fmt: skip
    if plan.stand_ins:
        lines += ["**Stand-ins** (CPU-scale cards of this repository in place of the paper's, which are missing "
                  "here): " + "; ".join(f"{s} for {o}" for s, o in plan.stand_ins.items()) + ".", ""]  # fmt: skip
    if plan.missing:
        lines += ["**Not run** (missing here):", *[f"- {m.kind} {m.name}: {m.problem}" for m in plan.missing], ""]
    figures = [f.name for f in files if f.suffix == ".png"]
    lines += [*(f"![{exp.plot}]({name})" for name in figures), ""]
    lines += [f"## BD against {anchor}", "", f"{opts.caption()}.", "", markdown_table(bd), ""]
    lines += ["## Measured points", "", markdown_table(points), ""]
    if not pub.empty:
        lines += ["## The paper's numbers beside the measured ones", "", markdown_table(pub), ""]
    return "\n".join(lines)

