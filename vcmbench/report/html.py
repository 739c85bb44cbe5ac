"""``vcmbench report --html``: one self-contained HTML page of one run or several overlaid.

The page holds, per dataset x task, the RD curves of :mod:`vcmbench.report.plot` (SVG, inlined as
``data:`` URIs; bpp axis for images, kbit/s for clips), the BD-rate table of
:func:`vcmbench.report.tables.bd_table` with its caption and the reason for every empty cell, the RD
points, and a per-image drill-down (:mod:`vcmbench.report.decoded`: each RD point's decoded picture with
the task's boxes, its bits, bpp and PSNR); then each run's provenance (versions, machine, cards, commit).
CSS and the little JavaScript are inline and nothing is fetched: the file opens offline.

Several runs overlay: each codec is labelled ``codec [run]``, the BD table compares every labelled codec
against one anchor, and the uncompressed line is the first run's (each run's is listed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import VcmbenchError
from ..plan import REFERENCE
from . import direction_note, headline, load_results, lower_is_better, with_psnr_rows
from .decoded import DEFAULT_ITEMS, DecodedView, decoded_views, draw_view
from .items import ItemSets, load_item_sets
from .plot import METRIC_LABELS, rd_svgs
from .tables import BDOptions, bd_table, mark_items, points_table
from .training import load_training_overlap, mark_training

__all__ = ["HtmlOptions", "RunData", "html_report", "load_run", "write_html_report"]


@dataclass(frozen=True)
class HtmlOptions:
    """What the page shows: metrics (default: each task's headline metrics and PSNR), the BD anchor and
    options, the drill-down's items (default: the first ``limit`` of each dataset), thumbnail size and
    the lowest score of a drawn box."""

    metrics: Sequence[str] | None = None
    anchor: str | None = None
    bd: BDOptions = field(default_factory=BDOptions)
    declared_lower: Sequence[str] = ()
    items: Sequence[str] | None = None
    limit: int = DEFAULT_ITEMS
    thumb: int = 320
    min_score: float = 0.25
    logx: bool = False
    #: the BD table's caption from (anchor, options); default: the options' own caption
    caption: Callable[[str, BDOptions], str] | None = None


@dataclass
class RunData:
    """One run as the page reads it: its tables, its run.json, where its store is."""

    run_dir: Path
    label: str
    results: pd.DataFrame
    info: dict[str, Any]
    items: ItemSets

    @property
    def store_root(self) -> Path | None:
        """The output folder holding the run's store (None for a results table copied elsewhere)."""
        root = self.run_dir.parent.parent
        return root if self.run_dir.parent.name == "runs" and (root / "vcmbench.db").is_file() else None

    @property
    def run_id(self) -> str:
        return str(self.info.get("run_id") or self.run_dir.name)


def load_run(run_dir: Path) -> RunData:
    """A run folder's results.csv, run.json and item sets."""
    df = load_results(run_dir / "results.csv")
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise VcmbenchError(f"cannot read {path}: {exc}; rerun the run to rewrite it") from None
    return RunData(run_dir, str(info.get("run_id") or run_dir.name), df, info, load_item_sets(df, run_dir))


# ---- several runs in one table --------------------------------------------------------------------
def _relabel(df: pd.DataFrame, label: str) -> pd.DataFrame:
    coded = df.codec != REFERENCE
    return df.assign(codec=df.codec.astype(str).where(~coded, df.codec.astype(str) + f" [{label}]"))


def _relabel_items(items: ItemSets, label: str) -> ItemSets:
    def key(u: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
        return u if u[2] == REFERENCE else (u[0], u[1], f"{u[2]} [{label}]", u[3])

    return ItemSets({key(u): s for u, s in items.sets.items()}, {key(u): c for u, c in items.counts.items()})


def combined(runs: Sequence[RunData]) -> tuple[pd.DataFrame, ItemSets]:
    """One results table (and item sets) of several runs: codecs labelled by run, the first run's
    uncompressed rows only. A single run is returned as it is."""
    if len(runs) == 1:
        return runs[0].results, runs[0].items
    frames, sets, counts = [], {}, {}
    for i, r in enumerate(runs):
        df = _relabel(r.results, r.label)
        frames.append(df if i == 0 else df[df.codec != REFERENCE])
        its = _relabel_items(r.items, r.label)
        sets.update({u: s for u, s in its.sets.items() if i == 0 or u[2] != REFERENCE})
        counts.update({u: c for u, c in its.counts.items() if i == 0 or u[2] != REFERENCE})
    return pd.concat(frames, ignore_index=True), ItemSets(sets, counts)


# ---- HTML pieces ---------------------------------------------------------------------------------
def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def cell(value: object) -> str:
    """A table cell's text: floats to 4 significant decimals, NaN/None empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating):
        return f"{float(value):.4f}"
    return str(value)


def table_html(df: pd.DataFrame, cls: str, empty: str = "no rows") -> str:
    """Every column of ``df`` (whatever columns it has), empty cells marked ``class="empty"``."""
    if df.empty:
        return f'<p class="none">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    rows = []
    for values in df.itertuples(index=False):
        tds = []
        for col, v in zip(df.columns, values, strict=True):
            text = cell(v)
            klass = f"c-{esc(col)}" + (" empty" if not text else "")
            tds.append(f'<td class="{klass}">{esc(text)}</td>')
        rows.append(f"<tr>{''.join(tds)}</tr>")
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return data_uri("image/png", buf.getvalue())


def anchor_id(*parts: str) -> str:
    return "s-" + "-".join("".join(ch if ch.isalnum() else "_" for ch in p) for p in parts)


# ---- sections ------------------------------------------------------------------------------------
def bare_svg(svg: str) -> str:
    """An SVG document without its XML prolog, DOCTYPE (a DTD URL) and metadata block: only the drawing."""
    svg = svg[svg.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)


def plots_html(svgs: dict[tuple[str, str, str], str], ds: str, task: str) -> str:
    figs = []
    for (d, t, metric), svg in svgs.items():
        if (d, t) != (ds, task):
            continue
        label = METRIC_LABELS.get(metric, metric)
        figs.append(f'<figure class="rd-plot" data-dataset="{esc(d)}" data-task="{esc(t)}" data-metric="{esc(metric)}">'
                    f'<img alt="RD curve of {esc(label)}, {esc(t)} on {esc(d)}" '
                    f'src="{data_uri("image/svg+xml", bare_svg(svg).encode())}"><figcaption>{esc(label)}</figcaption></figure>')  # fmt: skip
    return f'<div class="plots">{"".join(figs)}</div>'


def bd_html(bd: pd.DataFrame, caption: str, warnings: Sequence[str]) -> str:
    listed = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return (f'<p class="caption">{esc(caption)}</p>' + table_html(bd, "bd", "no BD value: one codec only, or the "
            "anchor has no curve here") + (f'<ul class="warnings">{listed}</ul>' if listed else ""))  # fmt: skip


def view_html(view: DecodedView, thumb: int, min_score: float) -> str:
    """One RD point's decoded picture with its boxes and figures, or the reason there is none."""
    facts = []
    if view.nbytes is not None:
        facts.append(f"{8 * view.nbytes} bits")
    if view.bpp is not None:
        facts.append(f"{view.bpp:.3f} bpp")
    if view.psnr is not None:
        facts.append(f"PSNR {view.psnr:.2f} dB")
    shown = sum(b.score >= min_score for b in view.boxes)
    facts.append(f"{shown} boxes (score ≥ {min_score:g})")
    attrs = (f'data-codec="{esc(view.codec)}" data-quality="{esc(view.quality)}" data-item="{esc(view.item_id)}" '
             f'data-boxes="{shown}"')  # fmt: skip
    if view.image is None:
        return f'<figure class="thumb missing" {attrs}><div class="noimg">{esc(view.error)}</div><figcaption>' \
               f"<b>{esc(view.point)}</b></figcaption></figure>"  # fmt: skip
    img = f'<img alt="{esc(view.point)}, item {esc(view.item_id)}" src="{png_uri(draw_view(view, thumb, min_score))}">'
    note = f'<br><span class="note">{esc(view.error)}</span>' if view.error else ""
    return (f'<figure class="thumb" {attrs}>{img}<figcaption><b>{esc(view.point)}</b><br>'
            f"{esc(' · '.join(facts))}{note}</figcaption></figure>")  # fmt: skip


def drilldown_html(views: Sequence[DecodedView], thumb: int, min_score: float, why_none: str) -> str:
    if not views:
        return f'<p class="none">{esc(why_none)}</p>'
    by_item: dict[str, list[DecodedView]] = {}
    for v in views:
        by_item.setdefault(v.item_id, []).append(v)
    parts = []
    for item_id, vs in by_item.items():
        by_codec: dict[str, list[DecodedView]] = {}
        for v in vs:
            by_codec.setdefault(v.codec, []).append(v)
        rows = "".join(f'<div class="thumbs" data-codec="{esc(c)}">{"".join(view_html(v, thumb, min_score) for v in cvs)}</div>'
                       for c, cvs in by_codec.items())  # fmt: skip
        parts.append(f'<div class="item" data-item="{esc(item_id)}"><h4>item {esc(item_id)}</h4>{rows}</div>')
    return "".join(parts)


def _kv_table(pairs: Sequence[tuple[str, object]], cls: str) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f'<table class="{cls}"><tbody>{rows}</tbody></table>'


def provenance_html(run: RunData) -> str:
    """Commit, command, machine, package versions, cards and work of one run (from its run.json)."""
    info, prov = run.info, run.info.get("provenance") or {}
    cfg = info.get("config") or {}
    git = prov.get("git") or {}
    commit = f"{git.get('commit') or 'unknown'}" + (" (uncommitted changes)" if git.get("dirty") else "")
    general = [("run", run.run_id), ("folder", str(run.run_dir)), ("status", info.get("status", "unknown")),
               ("git commit", commit), ("command", " ".join(map(str, prov.get("argv") or []))),
               ("COCO evaluator", prov.get("coco_eval", "")), ("work", json.dumps(info.get("work") or {})),
               ("failed items", len(info.get("failures") or []))]  # fmt: skip
    general += [(f"machine: {k}", v) for k, v in (prov.get("machine") or {}).items()]
    packages = sorted((prov.get("packages") or {}).items())
    cards = pd.DataFrame(
        [{"card": n, "adapter": c.get("adapter"), "version": c.get("version"), "digest": c.get("digest"),
          "file": c.get("path"), "settings": json.dumps(c.get("settings"), sort_keys=True)}
         for n, c in (cfg.get("cards") or {}).items()]  # fmt: skip
    )
    if not info:
        return f'<p class="none">{esc(run.run_dir)} has no run.json: no provenance recorded</p>'
    return (f'<div class="prov" data-run="{esc(run.run_id)}"><h3>{esc(run.label)}</h3>{_kv_table(general, "kv")}'
            f"<details open><summary>package versions ({len(packages)})</summary>{_kv_table(packages, 'kv')}</details>"
            f"<details open><summary>cards ({len(cards)})</summary>{table_html(cards, 'cards')}</details></div>")  # fmt: skip


# ---- the page ------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1400px;margin:0 auto;padding:1em 2em}
h1{margin:.3em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
nav#toc{background:#fff;border:1px solid #ddd;padding:.5em 1.5em;display:inline-block}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eee}td.empty{background:#f6f6f6}
table.bd td.c-bd_rate_note,table.bd td.c-bd_metric_note{color:#a33}
table.kv th{width:14em;font-weight:normal;background:#f3f3f3}
td.c-settings{font-family:monospace;font-size:12px;max-width:50em;word-break:break-all}
.caption{font-size:13px;color:#444;max-width:75em}.none{color:#777;font-style:italic}
.plots{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;background:#fff;border:1px solid #ddd;padding:.4em}
figure.rd-plot img{width:560px;max-width:100%}
.thumbs{display:flex;flex-wrap:nowrap;overflow-x:auto;gap:.6em;margin-bottom:.6em}
figure.thumb{font-size:12px;max-width:340px;flex:none}figure.thumb img{display:block}
figure.thumb .noimg{width:200px;min-height:120px;display:flex;align-items:center;color:#a33;overflow-wrap:anywhere}
.note{color:#a33}.warnings{font-size:13px;color:#8a5a00}
#js-errors{color:#a33}
"""

#: records uncaught errors and console.error calls into #js-errors, and marks the page as scripted
JS_HEAD = """
window.__vcmErrors=[];
window.addEventListener('error',function(e){window.__vcmErrors.push('error: '+e.message);});
(function(){var f=console.error;console.error=function(){window.__vcmErrors.push('console.error: '+
Array.prototype.join.call(arguments,' '));return f.apply(console,arguments);};})();
"""
JS_TAIL = """
document.getElementById('js-errors').textContent=window.__vcmErrors.join('\\n');
document.body.setAttribute('data-js','ok');
document.getElementById('counts').textContent=document.querySelectorAll('figure.rd-plot').length+' plots, '+
document.querySelectorAll('table.bd').length+' BD tables, '+document.querySelectorAll('figure.thumb').length+' thumbnails';
"""


def _pair_views(runs: Sequence[RunData], views: dict[str, list[DecodedView]], ds: str, task: str) -> list[DecodedView]:
    """The drill-down of one dataset x task: every run's views, codecs labelled by run when several."""
    out = []
    for i, r in enumerate(runs):
        for v in views.get(r.label, []):
            if (v.dataset, v.task) != (ds, task) or (i and v.codec == REFERENCE):
                continue
            out.append(v if len(runs) == 1 or v.codec == REFERENCE else _labelled(v, r.label))
    return out


def _labelled(view: DecodedView, label: str) -> DecodedView:
    return replace(view, codec=f"{view.codec} [{label}]")


def _section(runs: Sequence[RunData], ds: str, task: str, svgs: dict[tuple[str, str, str], str], bd: pd.DataFrame,
             points: pd.DataFrame, caption: str, views: dict[str, list[DecodedView]], opts: HtmlOptions,
             why_none: str) -> str:  # fmt: skip
    sel_bd = bd[(bd.dataset == ds) & (bd.task == task)]
    warnings = [f"{r.codec} {r.metric}: {w}" for r in sel_bd.itertuples() for w in str(r.warnings).split(" | ") if w]
    sel_bd = sel_bd.drop(columns=["warnings"], errors="ignore")
    sel_points = points[(points.dataset == ds) & (points.task == task)]
    pair = _pair_views(runs, views, ds, task)
    return (f'<section class="pair" id="{anchor_id(ds, task)}" data-dataset="{esc(ds)}" data-task="{esc(task)}">'
            f"<h2>{esc(task)} on {esc(ds)}</h2><h3>RD curves</h3>{plots_html(svgs, ds, task)}"
            f"<h3>BD-rate</h3>{bd_html(sel_bd, caption, warnings)}<h3>RD points</h3>{table_html(sel_points, 'points')}"
            f"<h3>Per-image drill-down</h3>{drilldown_html(pair, opts.thumb, opts.min_score, why_none)}</section>")  # fmt: skip


def _views(runs: Sequence[RunData], opts: HtmlOptions) -> tuple[dict[str, list[DecodedView]], str]:
    """Each run's decoded views (by run label), and why a run has none."""
    out, reasons = {}, []
    for r in runs:
        if r.store_root is None:
            reasons.append(f"{r.run_dir} is not inside an output folder holding vcmbench.db: its bitstreams are "
                           "not at hand, so no picture can be decoded (point the report at the output folder)")  # fmt: skip
            continue
        out[r.label] = decoded_views(r.store_root, r.run_id, opts.items, limit=opts.limit)
    return out, "; ".join(reasons) or "no item of this dataset was chosen (--items)"


def _reference_note(runs: Sequence[RunData]) -> str:
    if len(runs) < 2:
        return ""
    rows = []
    for r in runs:
        ref = r.results[(r.results.codec == REFERENCE) & r.results.headline.astype(str).str.lower().isin(["true", "1"])]
        rows += [{"run": r.label, "dataset": x.dataset, "task": x.task, "metric": x.metric, "uncompressed": x.value}
                 for x in ref.itertuples()]  # fmt: skip
    return ("<p>The plots' dashed uncompressed line is the first run's; each run's uncompressed score:</p>"
            + table_html(pd.DataFrame(rows), "reference"))


def html_report(runs: Sequence[RunData], opts: HtmlOptions | None = None) -> str:
    """The page (one string) of ``runs``."""
    opts = opts or HtmlOptions()
    if not runs:
        raise VcmbenchError("no run to report: name a run folder, results.csv or output folder")
    df, items = combined(runs)
    lower = lower_is_better(df, opts.declared_lower)
    scored = headline(with_psnr_rows(df), list(opts.metrics) if opts.metrics else None)
    bd, anchor = bd_table(scored, anchor=opts.anchor, options=opts.bd, lower=lower, items=items)
    caption = (opts.caption or (lambda a, o: f"BD-rate against {a} ({o.caption()})"))(anchor, opts.bd)
    svgs = rd_svgs(scored, opts.logx, bd=bd, caption=f"vs {anchor}, {opts.bd.method}, {opts.bd.fit} points",
                   lower=lower)  # fmt: skip
    points = mark_items(points_table(headline(df, list(opts.metrics) if opts.metrics else None)), items)
    if len(runs) == 1:
        points = mark_training(points, load_training_overlap(runs[0].run_dir))
    views, why_none = _views(runs, opts)
    pairs = list(dict.fromkeys(zip(df.dataset.astype(str), df.task.astype(str), strict=True)))
    toc = "".join(f'<li><a href="#{anchor_id(d, t)}">{esc(t)} on {esc(d)}</a></li>' for d, t in pairs)
    sections = "".join(_section(runs, d, t, svgs, bd, points, caption, views, opts, why_none) for d, t in pairs)
    note = direction_note(df, opts.declared_lower)
    names = ", ".join(r.label for r in runs)
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>vcmbench report: {esc(names)}</title><style>{CSS}</style><script>{JS_HEAD}</script></head>
<body data-runs="{len(runs)}"><main>
<h1>vcmbench report</h1>
<p>Run{"s" if len(runs) > 1 else ""} <b>{esc(names)}</b>; BD-rate anchor <b>{esc(anchor)}</b>; written {esc(when)}.
<span id="counts"></span></p>
{f'<p class="note">note: {esc(note)}</p>' if note else ""}
<nav id="toc"><h2>Contents</h2><ol>{toc}<li><a href="#runs">Runs and provenance</a></li></ol></nav>
{sections}
<section id="runs"><h2>Runs and provenance</h2>{_reference_note(runs)}{"".join(provenance_html(r) for r in runs)}</section>
<pre id="js-errors"></pre>
</main><script>{JS_TAIL}</script></body></html>
"""


def write_html_report(run_dirs: Sequence[Path], out: Path, opts: HtmlOptions | None = None) -> Path:
    """Write the page of the runs in ``run_dirs`` to ``out``; runs sharing a folder name are labelled by
    their position too."""
    runs = [load_run(Path(d)) for d in run_dirs]
    labels = [r.label for r in runs]
    for i, r in enumerate(runs):
        if labels.count(r.label) > 1:
            r.label = f"{i + 1}:{r.label}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(html_report(runs, opts), encoding="utf-8")
    return out
