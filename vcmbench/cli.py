"""``vcmbench`` command line: run, ls, validate, plot, report, compare, export, inspect (and train, masks).

Exit codes: 0 success; 1 the run finished with failed items or ``compare`` found
a regression (finished results are kept either way); 2 a usage or configuration
error found before any work (unknown name, bad card, wrong dataset layout,
missing weights or binaries); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cards import KINDS, CardError, CardSet, parse_overrides
from .metrics.coco_map import BACKENDS as COCO_EVAL_BACKENDS
from .train.commands import add_masks_parser, add_train_parser, cmd_masks, cmd_train

EPILOG = """examples:
  vcmbench run --codec jpeg,vvenc --task yolov5 --dataset coco --data-root ~/data/coco
  vcmbench run --codec vvenc --quality 22,32,42 --set vvenc.preset=faster --limit 50
  vcmbench plot                      # RD curves of the latest run in results/
  vcmbench report --anchor vvenc     # BD-rate table against VVenC
  vcmbench compare results/baselines/ci.csv results --fail bd_rate:+1.0 --fail map:-0.01
"""


def _command(sub: Any, name: str, summary: str, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` opens with the one-line summary that ``vcmbench --help`` lists for it."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=summary, description=summary, **kw)
    return parser


def _grid_args(sp: argparse.ArgumentParser) -> None:
    """The options naming a grid and its items, the same for ``run`` and ``estimate``."""
    sp.add_argument("--codec", type=_csv, default=None, help="codec card names, comma separated [jpeg,vvenc]")
    sp.add_argument("--task", type=_csv, default=None, help="task card names, comma separated [synth_det]")
    sp.add_argument("--dataset", type=_csv, default=None, help="dataset card names, comma separated [synth]")
    sp.add_argument("--quality", action="append", default=[], metavar="[CODEC=]Q1,Q2",
                    help="override the quality ladder of every codec or of one (repeatable)")
    sp.add_argument("--data-root", action="append", default=[], metavar="[DATASET=]DIR",
                    help="dataset root folder (repeatable, DATASET= to pick one)")
    sp.add_argument("--limit", type=int, default=None, help="use the first N items (sorted by id)")
    sp.add_argument("--ids", type=_csv, default=None, help="use only these item ids (comma separated)")
    sp.add_argument("--exclude", type=_csv, default=[], help="leave out these item ids")
    sp.add_argument("--classes", type=_csv, default=None, metavar="C,D",
                    help="sequence classes of a video dataset (sfu_hw: A, B, C, D, E) [all present]")
    sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="CARD.KEY=VALUE",
                    help="override a card setting, e.g. --set yolov5.weights=/w/yolov5n.pt (repeatable)")
    sp.add_argument("--cards", action="append", default=[], metavar="DIR", help="extra card folder (repeatable)")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parse_qualities(values: Sequence[str]) -> dict[str, list[Any]]:
    """``--quality 5,10`` (every codec) or ``--quality jpeg=5,10`` (one codec); repeatable."""
    out: dict[str, list[Any]] = {}
    for v in values:
        codec, _, ladder = v.rpartition("=")
        qs: list[Any] = []
        for q in _csv(ladder):
            try:
                qs.append(int(q) if q.lstrip("+-").isdigit() else float(q))
            except ValueError:
                raise CardError(f"--quality {v!r}: {q!r} is not a number") from None
        if not qs:
            raise CardError(f"--quality {v!r}: no values")
        out[codec or "*"] = qs
    return out


def _parse_roots(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if sep and not Path(v).exists() and "/" not in name:
            out[name] = path
        else:
            out["*"] = v
    return out


def _resource(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(amount)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT (e.g. a100=1), got {text!r}") from None


def _ray_args(r: argparse.ArgumentParser) -> None:
    """``run`` options of the Ray executor (see docs/ray.md)."""
    g = r.add_argument_group("distributed runs on Ray (--executor ray)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: threads in this process; ray: Ray tasks (encode/decode) and actors (models)")
    g.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to join (`ray start --head` prints it) [start a Ray instance on this machine]")
    g.add_argument("--ray-cpus-per-encode", type=float, default=None, metavar="N",
                   help="CPUs each encode/decode task requests [1: one encoder process per CPU]")
    g.add_argument("--ray-cpus-per-model", type=float, default=None, metavar="N",
                   help="CPUs each model actor holds [1; 0 on a 1-CPU cluster]")
    g.add_argument("--ray-gpus-per-model", type=float, default=None, metavar="N",
                   help="GPUs each model actor requests [1 if the cluster has GPUs, else 0]")
    g.add_argument("--ray-model-resource", type=_resource, action="append", default=[], metavar="NAME=AMOUNT",
                   help="custom Ray resource each model actor requests, e.g. a100=1 (repeatable)")
    g.add_argument("--ray-model-replicas", type=int, default=None, metavar="N",
                   help="model actors per task; batches are spread over them [1]")
    g.add_argument("--ray-model-threads", type=int, default=None, metavar="N",
                   help="PyTorch threads of a CPU model actor [as many as PyTorch uses in this process]")
    g.add_argument("--ray-max-retries", type=int, default=None, metavar="N",
                   help="re-runs of a job whose worker died (killed, OOM, node lost) before it is failed [3]")
    g.add_argument("--ray-max-in-flight", type=int, default=None, metavar="N",
                   help="encode/decode tasks submitted at once [2 x the cluster's task slots]")  # fmt: skip


def _ray_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--ray-*`` options given, as RayExecutor keyword arguments."""
    opts = {k[4:]: v for k, v in vars(args).items() if k.startswith("ray_") and v not in (None, [])}
    if "model_resource" in opts:
        opts["model_resources"] = dict(opts.pop("model_resource"))
    return opts


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return v


def _bd_args(sp: argparse.ArgumentParser, items: bool) -> None:
    """BD options of ``report``, ``plot`` (``items``: with --anchor and --no-common-items) and ``compare``."""
    from .metrics.bd import DEFAULT_MIN_OVERLAP, DEFAULT_MIN_POINTS, FITS, METHODS

    g = sp.add_argument_group("BD-rate (see vcmbench/metrics/bd.py)")
    if items:
        g.add_argument("--anchor", default=None, help="anchor codec [vtm, else vvenc, else the first codec]")
        _import_args(sp)
    g.add_argument("--method", choices=METHODS, default="pchip",
                   help="interpolation: pchip (JVET CTC), cubic (VCEG-M33), akima [pchip]")
    g.add_argument("--fit", choices=FITS, default="measured",
                   help="measured: interpolate the measured points; monotone: first replace each curve's "
                        "values by the monotone concave cubic fit of the MPEG VCM CTC reporting [measured]")
    g.add_argument("--min-overlap", type=_fraction, default=DEFAULT_MIN_OVERLAP, metavar="FRACTION",
                   help="leave a BD value empty when the curves share less than this fraction of the range "
                        "either covers, on the axis it averages over (metric for BD-rate, log-rate for "
                        f"BD-metric) [{DEFAULT_MIN_OVERLAP}]")
    g.add_argument("--allow-short", action="store_true",
                   help=f"compute BD values for curves of fewer than {DEFAULT_MIN_POINTS} points or with too "
                        "little overlap anyway, marked 'allowed:' in their note")
    if items:
        g.add_argument("--no-common-items", dest="common_items", action="store_false",
                       help="compute BD values even when the codecs' units were scored on different items "
                            "(marked in the note) [leave them empty]")
    g.add_argument("--lower-is-better", type=_csv, default=[], metavar="M1,M2",
                   help="metrics where lower is better, for tables that do not record it (e.g. face_recall)")  # fmt: skip


def _import_args(sp: argparse.ArgumentParser) -> None:
    """``--import`` of ``report`` and ``plot``: external RD points as extra curves (see docs/ctc.md)."""
    g = sp.add_argument_group("external RD points (see docs/ctc.md)")
    g.add_argument("--import", dest="imports", action="append", default=[], metavar="[NAME=]FILE",
                   help="a CTC table (.csv, as `export --format ctc` writes) or CompressAI results (.json) as "
                        "the curve of codec NAME [from the file] (repeatable)")
    g.add_argument("--import-metric", default="map", metavar="METRIC",
                   help="the metric of end_accuracy in CTC tables without a metric column [map: the CTC's AP]")  # fmt: skip


def _with_imports(args: argparse.Namespace, df: Any) -> Any:
    """The results table with the ``--import`` files' points added (notes printed)."""
    from .report.external import ImportSpec, imported_rows

    df, notes = imported_rows(df, [ImportSpec.parse(t) for t in args.imports], args.import_metric)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return df


def _bd_options(args: argparse.Namespace) -> Any:
    from .report.tables import BDOptions

    return BDOptions(method=args.method, fit=args.fit, min_overlap=args.min_overlap,
                     allow_short=args.allow_short, common_items=getattr(args, "common_items", True))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vcmbench",
        description="Benchmark image/video codecs by the accuracy vision models keep on their decoded output.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"vcmbench {__import__('vcmbench').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = _command(sub, "run", "run a codec x quality x task x dataset grid (resumable)",
                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    _grid_args(r)
    r.add_argument("--out", default="results", help="output folder: database, bitstream cache, run tables")
    r.add_argument("--workers", type=int, default=None, help="parallel encodes/decodes [all cores]")
    r.add_argument("--batch-size", type=int, default=None, help="images per inference batch [task card]")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--no-common-items", dest="common_items", action="store_false",
                   help="score each unit on every item it finished (default: the units of one dataset x task, "
                        "every codec and quality, are scored on the items all of them finished)")  # fmt: skip
    r.add_argument("--background-scoring", choices=["auto", "on", "off"], default="auto",
                   help="score finished units in a background process while the model infers the next ones; "
                        "auto: when a GPU or a Ray cluster leaves this machine's CPU free")  # fmt: skip
    r.add_argument("--coco-eval", choices=COCO_EVAL_BACKENDS, default=None,
                   help="COCO mAP backend, same numbers: faster_coco_eval (pycocotools' evaluator in C++, "
                        "about 6x faster) or pycocotools (the reference) [$VCMBENCH_COCO_EVAL, else faster_coco_eval]")
    _ray_args(r)

    es = _command(sub, "estimate", "count the work a grid still needs (cache hits left out) and estimate its "
                  "wall time here or on a cluster; runs nothing (see docs/estimate.md)")  # fmt: skip
    _grid_args(es)
    es.add_argument("--out", default="results", help="the output folder the run would use (its cache counts)")
    es.add_argument("--costs", action="append", default=[], metavar="DIR",
                    help="output folder(s) whose measured job times to use (repeatable) [--out]")
    es.add_argument("--calibrate", type=int, default=None, metavar="N",
                    help="first run the grid on N items, 1 worker, in a temporary store, and use its times (and its "
                         "fixed time: process start, imports, resolving)")
    es.add_argument("--nodes", type=int, default=1, help="nodes of the cluster [1: this machine]")
    es.add_argument("--cpus", type=int, default=None, help="cores per node [this machine's]")
    es.add_argument("--gpus", type=int, default=0, help="GPUs per node [0]")
    es.add_argument("--gpu-speedup", type=float, default=10.0,
                    help="how many times faster a GPU infers than the CPU times measured (an assumption) [10]")
    es.add_argument("--workers", type=int, default=None, help="encode/decode slots in all [every core]")

    ls = _command(sub, "ls", "list codec, task and dataset cards with their settings (imports no models)")
    ls.add_argument("kind", nargs="?", choices=["codecs", "tasks", "datasets"], help="only this kind")
    ls.add_argument("--cards", action="append", default=[], metavar="DIR")

    v = _command(sub, "validate", "load every card and check its adapter imports and its settings fit")
    v.add_argument("--cards", action="append", default=[], metavar="DIR")

    def source_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("source", nargs="?", default="results",
                        help="results.csv, a run folder, or an output folder (its latest run)")  # fmt: skip
        sp.add_argument("--run", default=None, help="run id inside an output folder [latest]")

    pl = _command(sub, "plot", "draw accuracy-vs-bpp RD curves (PNG and SVG), BD-rates in the legend")
    source_args(pl)
    pl.add_argument("--metric", type=_csv, default=None, help="only these metrics")
    pl.add_argument("--logx", action="store_true", help="logarithmic bpp axis")
    pl.add_argument("--out-dir", default=None, help="where to write [<run folder>/plots]")
    _bd_args(pl, items=True)

    rp = _command(sub, "report", "print and write the RD points and a BD-rate table against an anchor")
    source_args(rp)
    rp.add_argument("more", nargs="*", metavar="RUN",
                    help="with --html: more runs (run folder, results.csv, output folder or run id) overlaid")
    rp.add_argument("--metric", type=_csv, default=None, help="only these metrics")
    _bd_args(rp, items=True)
    h = rp.add_argument_group("HTML page (see docs/report-html.md)")
    h.add_argument("--html", action="store_true", help="write one self-contained HTML page (plots, tables, "
                   "provenance, decoded pictures of chosen items) instead of printing tables")
    h.add_argument("--out", default=None, metavar="FILE", help="the page's file [<first run folder>/report.html]")
    h.add_argument("--items", type=_csv, default=None, metavar="ID,ID",
                   help="items shown decoded at every RD point [the first --first of each dataset]")
    h.add_argument("--first", type=int, default=3, metavar="N", help="items shown without --items [3]")
    h.add_argument("--thumb-size", type=int, default=320, metavar="PX", help="longest side of a picture [320]")
    h.add_argument("--min-score", type=float, default=0.25, help="lowest score of a drawn box [0.25]")  # fmt: skip

    c = _command(sub, "compare", "fail (exit 1) when NEW regresses against BASELINE")
    c.add_argument("baseline", help="baseline results.csv / run folder / output folder")
    c.add_argument("new", help="new results.csv / run folder / output folder")
    c.add_argument("--fail", action="append", default=[], metavar="RULE",
                   help="bd_rate:+1.0 (max BD-rate increase, %%), <metric>:-0.01 (max loss: a drop, or a rise for "
                        "a lower-is-better metric), bpp:+2 (max %% increase)")  # fmt: skip
    _bd_args(c, items=False)

    e = _command(sub, "export", "export a run's tables (RD points and per-image rows) to CSV or Parquet")
    source_args(e)
    e.add_argument("--format", choices=["csv", "parquet", "ctc"], default="csv",
                   help="ctc: the per-sequence tables of the MPEG CTC template, one per metric (docs/ctc.md) [csv]")
    e.add_argument("--dest", default=None, help="output folder [the run folder]")

    ts = _command(sub, "train-synth", "train the synth detector / instance-segmentation models (offline, seeded)")
    ts.add_argument("--model", type=_csv, default=["det", "seg"], help="which models: det, seg [det,seg]")
    ts.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (e.g. 1 for a smoke test)")
    ts.add_argument("--out", default=None, help="where the .pt files go [<repo>/weights/synth]")
    ts.add_argument("--device", default="cpu", help="torch device for training [cpu]")
    ts.add_argument("--workers", type=int, default=2, help="data-loader workers [2]")
    ts.add_argument("--update-cards", action="store_true", help="write the new sha256 into tasks/synth_*.yaml")
    ts.add_argument("--keep", default=None, metavar="DIR", help="keep the Ultralytics run folders in DIR")

    add_masks_parser(sub)  # vcmbench/train/commands.py
    add_train_parser(sub)

    dec = _command(sub, "decode", "write the decoded images of chosen items of a finished run as PNG, each "
                   "codec at each rate point, optionally with the task's predictions drawn",
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    dec.add_argument("source", nargs="?", default="results", help="output folder (its latest run) or a run folder")
    dec.add_argument("--run", default=None, help="run id in the output folder [latest]")
    dec.add_argument("--ids", type=_csv, required=True, metavar="ID,...", help="item ids (image ids, clip names)")
    dec.add_argument("--draw", action="store_true", help="draw the task's predicted boxes and class names")
    dec.add_argument("--min-score", type=float, default=0.25, help="boxes drawn from this score up")
    dec.add_argument("--out", default=None, help="folder for the PNGs [RUN/decoded]")

    rep = _command(sub, "reproduce", "reproduce a paper from its experiment files (experiments/SUITE): plan, "
                   "checklist of what is missing here, and the runs of what is present",
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    rep.add_argument("suite", help="experiment suite, e.g. sa-icm (a folder of experiments/)")
    rep.add_argument("--only", type=_csv, default=None, metavar="ITEM,...",
                     help="only these items (file names, or their prefix: fig6)")
    rep.add_argument("--dry-run", action="store_true", help="print the plan, the work and the checklist; run nothing")
    rep.add_argument("--stand-ins", action="store_true",
                     help="run this repository's CPU-scale cards in place of missing paper cards (labelled as such)")
    rep.add_argument("--data-root", action="append", default=[], metavar="[DATASET=]DIR",
                     help="dataset root folder (repeatable, DATASET= to pick one)")
    rep.add_argument("--limit", type=int, default=None, help="use the first N items of each dataset")
    rep.add_argument("--out", default="results", help="output folder (store shared by the items; outputs in "
                     "OUT/reproduce/SUITE/ITEM/)")
    rep.add_argument("--offline", action="store_true",
                     help="download nothing: weights absent here count as missing (and may be stood in for)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bars")

    ins = _command(sub, "inspect", "print, as JSON, what a learned-codec checkpoint (or each rate point of a "
                   "codec card) was trained on: objective, lambda, steps, sha256 of every training image")  # fmt: skip
    ins.add_argument("target", help="a checkpoint file, a codec card file, or a codec card name (e.g. objicm)")
    ins.add_argument("--cards", action="append", default=[], metavar="DIR")
    ins.add_argument("--overlap", action="append", default=[], metavar="DIR",
                     help="also count the images under DIR (by file sha256) that are in each training set (repeatable)")  # fmt: skip
    return p


def cmd_ls(args: argparse.Namespace) -> int:
    import yaml

    cards = CardSet([Path(d) for d in args.cards])
    kinds = [args.kind[:-1]] if args.kind else list(KINDS)
    for kind in kinds:
        print(f"{kind}s:")
        for name in cards.names(kind):
            card = cards.get(kind, name)
            line = f"  {name:<14} adapter={card.adapter} v{card.version}"
            if card.qualities:
                line += f"  qualities={list(card.qualities)}"
            print(line)
            if card.description:
                print(f"      {card.description}")
            if card.settings:
                text = yaml.safe_dump(dict(card.settings), default_flow_style=True, width=10_000).strip()
                print(f"      settings: {text}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .adapters import build

    cards = CardSet([Path(d) for d in args.cards])
    bad = 0
    for kind in KINDS:
        for name in cards.names(kind):
            card = cards.get(kind, name)
            try:
                obj = build(card)
                if kind == "codec":  # the default ladder must fit (a learned codec: name existing rate points)
                    for q in card.qualities:
                        obj.validate_quality(q)
                print(f"ok    {kind:<8} {name}")
            except Exception as exc:  # report every broken card, not just the first
                bad += 1
                print(f"ERROR {kind:<8} {name} ({card.path}): {exc}")
    return 1 if bad else 0


def cmd_run(args: argparse.Namespace) -> int:
    from .run import DEFAULT_RUN_OVERRIDES, RunConfig, run

    cfg = RunConfig(
        qualities=_parse_qualities(args.quality),
        data_roots=_parse_roots(args.data_root),
        limit=args.limit,
        ids=args.ids,
        exclude=args.exclude,
        overrides=parse_overrides(args.overrides),
        cards_dirs=args.cards,
        out=args.out,
        workers=args.workers,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        background_scoring=args.background_scoring,
        coco_eval=args.coco_eval,
        classes=args.classes,
        executor=args.executor,
        address=args.address,
        ray_options=_ray_options(args),
        common_items=args.common_items,
    )
    if not (args.codec or args.task or args.dataset):  # the built-in default run: its own settings, unless --set
        for card, settings in DEFAULT_RUN_OVERRIDES.items():
            for key, value in settings.items():
                cfg.overrides.setdefault(card, {}).setdefault(key, value)
    if args.codec:
        cfg.codecs = args.codec
    if args.task:
        cfg.tasks = args.task
    if args.dataset:
        cfg.datasets = args.dataset
    report = run(cfg)
    if report.status == "interrupted":
        return 130
    import pandas as pd

    from .report import headline
    from .report.tables import format_table, points_table
    from .run.runlog import Tee

    say = Tee(report.log_path)  # the terminal, and the same lines into the run's run.log
    if report.rows:
        say(format_table(points_table(headline(pd.DataFrame(report.rows)))))
    for o in report.training_overlap:  # logged before the work too; repeated where it cannot scroll away
        if o.message():
            say(o.message(), file=sys.stderr)
    w = report.work
    say(f"\nrun {report.run_id}: {w['encodes']} encodes, {w['decodes']} decodes, {w['inferences']} inferences, "
        f"{w['evaluations']} evaluations performed; tables in {report.run_dir}, log in {report.log_path}")  # fmt: skip
    if report.failures:
        say(f"\n{len(report.failures)} item(s) failed (every other result is stored; rerun the same command "
            "to retry them):", file=sys.stderr)  # fmt: skip
        for f in report.failures[:20]:
            first = f.error.splitlines()[0] if f.error else ""
            say(f"  [{f.stage}] {f.unit} item {f.item}: {first}", file=sys.stderr)
        if len(report.failures) > 20:
            say(f"  ... and {len(report.failures) - 20} more (see run.json and run.log)", file=sys.stderr)
        return 1
    return 0


def _bd_setup(args: argparse.Namespace, df: Any, run_dir: Path | None) -> tuple[Any, frozenset[str], Any]:
    """(BD options, lower-is-better metrics, item sets) of a report or plot; prints a direction note."""
    from .report import direction_note, lower_is_better
    from .report.external import ItemSetsWithImports, imported_codecs
    from .report.items import load_item_sets

    note = direction_note(df, args.lower_is_better)
    if note:
        print(f"note: {note}", file=sys.stderr)
    items = ItemSetsWithImports.of(load_item_sets(df, run_dir), imported_codecs(df))
    return _bd_options(args), lower_is_better(df, args.lower_is_better), items


def cmd_plot(args: argparse.Namespace) -> int:
    from .report import headline, load_results, resolve_run_dir, with_psnr_rows
    from .report.external import imported_codecs, mark_imported, note_imported
    from .report.plot import plot_rd
    from .report.tables import bd_table

    raw = _with_imports(args, load_results(args.source, args.run))
    run_dir = resolve_run_dir(args.source, args.run)
    opts, lower, items = _bd_setup(args, raw, run_dir)
    df = headline(with_psnr_rows(raw), args.metric)
    bd, anchor = bd_table(df, anchor=args.anchor, options=opts, lower=lower, items=items)
    names = imported_codecs(raw)  # marked "(imported)" in the legends
    bd, df = mark_imported(note_imported(bd, names), names), mark_imported(df, names)
    out = Path(args.out_dir) if args.out_dir else run_dir / "plots"
    caption = f"vs {anchor}{' (imported)' if anchor in names else ''}, {opts.method}, {opts.fit} points"
    for f in plot_rd(df, out, logx=args.logx, bd=bd, caption=caption, lower=lower):
        print(f)
    return 0


def _bd_caption(anchor: str, opts: Any) -> str:
    """The BD table's caption: what was computed and how to read the signs."""
    return (
        f"BD-rate against {anchor} ({opts.caption()}). Signs: bd_rate < 0 and bd_metric > 0 mean the codec is "
        "better than the anchor, for every metric: for a lower-is-better metric (better = lower, e.g. "
        "face_recall: fewer faces survive = more private) bd_metric is anchor minus codec at equal rate, and "
        "bd_rate the anchor's rate relative to the codec's at equal value when the metric worsens as the rate "
        "rises. An empty cell gives its reason in the note beside it; 'allowed:' marks a value computed "
        "against a rule (--allow-short)."
    )


def _report_tables(args: argparse.Namespace) -> tuple[Any, Any, Any, str, Any, Path]:
    """(points, groups, BD table, anchor, options, run folder) of ``vcmbench report``."""
    from .report import headline, load_results, resolve_run_dir, with_psnr_rows
    from .report.external import imported_codecs, mark_imported, note_imported
    from .report.tables import bd_table, groups_table, mark_items, points_table

    df = _with_imports(args, load_results(args.source, args.run))
    run_dir = resolve_run_dir(args.source, args.run)
    opts, lower, items = _bd_setup(args, df, run_dir)
    names = imported_codecs(df)  # marked "(imported)" in the tables
    points = mark_imported(mark_items(points_table(headline(df, args.metric)), items), names)
    heads = args.metric or sorted(set(df[df.headline.astype(str).str.lower().isin(["true", "1"])].metric))
    groups = groups_table(mark_imported(df, names), heads)
    bd, anchor = bd_table(headline(with_psnr_rows(df), args.metric), anchor=args.anchor, options=opts,
                          lower=lower, items=items)  # fmt: skip
    bd = mark_imported(note_imported(bd, names), names)
    return points, groups, bd, anchor + (" (imported)" if anchor in names else ""), opts, run_dir


#: the heading of the per-class BD table of ``vcmbench report``
CLASS_BD_TITLE = ("Per-class BD-rate (the CTC way: each class's kbps = its sequences' kbps weighted by duration, "
                  "its accuracy scored on its frames pooled; overall = mean of the per-class BD-rates):")


def _class_bd(args: argparse.Namespace) -> Any:
    """The per-class BD table of ``vcmbench report`` (empty without class rows); see vcmbench/report/classes.py."""
    from .report import load_results, resolve_run_dir
    from .report.classes import class_bd_table

    df = _with_imports(args, load_results(args.source, args.run))
    opts, lower, items = _bd_setup(args, df, resolve_run_dir(args.source, args.run))
    heads = args.metric or sorted(set(df[df.headline.astype(str).str.lower().isin(["true", "1"])].metric))
    grouped = df[df.metric.astype(str).str.split("/", n=1).str[0].isin(heads)]
    return class_bd_table(grouped, anchor=args.anchor, options=opts, lower=lower, items=items)


def _report_run_dir(source: str, run: str | None, root: Path) -> Path:
    """A run folder from a path (see ``resolve_run_dir``) or a run id of the output folder ``root``."""
    from .report import resolve_run_dir

    if not Path(source).exists() and (root / "runs" / source / "results.csv").is_file():
        return root / "runs" / source
    return resolve_run_dir(source, run)


def cmd_report_html(args: argparse.Namespace) -> int:
    from .errors import VcmbenchError
    from .report.html import HtmlOptions, write_html_report

    if args.first < 1 or args.thumb_size < 16:
        raise VcmbenchError(f"--first must be >= 1 and --thumb-size >= 16, got {args.first} and {args.thumb_size}")
    first = _report_run_dir(args.source, args.run, Path("results"))
    root = first.parent.parent if first.parent.name == "runs" else Path("results")
    dirs = [first, *(_report_run_dir(s, None, root) for s in args.more)]
    opts = HtmlOptions(metrics=args.metric, anchor=args.anchor, bd=_bd_options(args), declared_lower=args.lower_is_better,
                       items=args.items, limit=args.first, thumb=args.thumb_size, min_score=args.min_score,
                       caption=_bd_caption)  # fmt: skip
    out = Path(args.out) if args.out else first / "report.html"
    print(f"written: {write_html_report(dirs, out, opts)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import load_results
    from .report.tables import cost_note, format_table, markdown_table
    from .report.training import load_training_overlap, mark_training, training_messages

    if args.html and args.imports:
        from .errors import VcmbenchError

        raise VcmbenchError("--import is not shown in the --html page yet; use it with the plain report or plot")
    if args.html:
        return cmd_report_html(args)
    if args.more:
        from .errors import VcmbenchError

        raise VcmbenchError(f"several runs ({args.source}, {', '.join(args.more)}) are compared in one page with --html")
    points, groups, bd, anchor, opts, run_dir = _report_tables(args)
    overlap = load_training_overlap(run_dir)
    points = mark_training(points, overlap)
    training = training_messages(overlap)
    caption = _bd_caption(anchor, opts)
    print("RD points:")
    print(format_table(points))
    if not groups.empty:
        print("\nPer sequence and class (clip datasets):")
        print(format_table(groups))
    print(f"\n{caption}")
    print(format_table(bd.drop(columns=["warnings"]), "{:.3f}"))
    per_class = _class_bd(args)  # the CTC's per-class BD-rates and their overall (see docs/video.md)
    if not per_class.empty:
        print(f"\n{CLASS_BD_TITLE}")
        print(format_table(per_class, "{:.3f}"))
    cost = cost_note(load_results(args.source, args.run))  # the times' machines, how MACs were counted
    for line in cost:
        print(f"\n{line}")
    warnings = [f"{r.codec} {r.metric}: {w}" for r in bd.itertuples() for w in str(r.warnings).split(" | ") if w]
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    for line in training:
        print(line, file=sys.stderr)
    bd.to_csv(run_dir / "bd_rate.csv", index=False)
    per_group = f"# Per sequence and class\n\n{markdown_table(groups)}\n\n" if not groups.empty else ""
    listed = "".join(f"- {w}\n" for w in warnings)
    trained = "".join(f"- {line}\n" for line in training)
    (run_dir / "report.md").write_text(
        (f"# Training images\n\n{trained}\n" if trained else "")
        + f"# RD points\n\n{markdown_table(points)}\n\n{per_group}# BD-rate against {anchor} ({opts.method}, "
        f"{opts.fit} points)\n\n{caption}\n\n{markdown_table(bd.drop(columns=['warnings']), '{:.3f}')}\n"
        + "".join(f"\n{line}\n" for line in cost)
        + (f"\nWarnings:\n\n{listed}" if listed else "")
        + (f"\n# {CLASS_BD_TITLE}\n\n{markdown_table(per_class, '{:.3f}')}\n" if not per_class.empty else "")
    )
    print(f"\nwritten: {run_dir / 'bd_rate.csv'}, {run_dir / 'report.md'}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .report import direction_note, load_results, lower_is_better
    from .report.compare import Rule, compare

    rules = [Rule.parse(t) for t in args.fail]
    if not rules:
        print("note: no --fail rule given; showing the differences only", file=sys.stderr)
    base, new = load_results(args.baseline), load_results(args.new)
    note = direction_note(new, args.lower_is_better)
    if note:
        print(f"note: {note}", file=sys.stderr)
    lower = lower_is_better(base, args.lower_is_better) | lower_is_better(new)
    result = compare(base, new, rules, options=_bd_options(args), lower=lower)
    print(result.render())
    return 1 if result.failed else 0


def check_parquet_engine() -> None:
    """Parquet export needs pyarrow, the optional ``parquet`` extra: fail before any work, naming it."""
    from .errors import VcmbenchError

    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise VcmbenchError(f"--format parquet needs pyarrow ({exc}): pip install 'vcmbench[parquet]', "
                            "or export --format csv") from None  # fmt: skip


def cmd_export(args: argparse.Namespace) -> int:
    import pandas as pd

    from .report import resolve_run_dir
    from .store import Store

    if args.format == "parquet":
        check_parquet_engine()
    run_dir = resolve_run_dir(args.source, args.run)
    dest = Path(args.dest) if args.dest else run_dir
    dest.mkdir(parents=True, exist_ok=True)
    root = run_dir.parent.parent
    store = Store(root)
    try:
        tidy = pd.DataFrame(store.tidy_rows(run_dir.name))
        items = pd.DataFrame(store.per_item_rows(run_dir.name))
    finally:
        store.close()
    if args.format == "ctc":
        from .report.external import write_ctc_tables

        for path in write_ctc_tables(tidy, dest):
            print(path)
        return 0
    for name, df in (("results", tidy), ("items", items)):
        path = dest / f"{name}.{args.format}"
        if args.format == "csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
        print(path)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .train.inspection import inspect_target

    print(json.dumps(inspect_target(args.target, args.cards, args.overlap), indent=1))
    return 0


def cmd_train_synth(args: argparse.Namespace) -> int:
    from .train.synth_yolo import train_synth

    train_synth(args.model, Path(args.out) if args.out else None, args.epochs, args.device, args.workers,
                args.update_cards, Path(args.keep) if args.keep else None)  # fmt: skip
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .errors import VcmbenchError
    from .report import resolve_run_dir
    from .report.decoded import decoded_views, save_views

    run_dir = resolve_run_dir(args.source, args.run)
    views = decoded_views(run_dir.parent.parent, run_dir.name, args.ids)
    found = {v.item_id for v in views}
    unknown = [i for i in args.ids if i not in found]
    if unknown:
        raise VcmbenchError(f"item(s) {', '.join(unknown)} are not in run {run_dir.name}; its items are listed in "
                            f"{run_dir / 'items.csv'}")  # fmt: skip
    written = save_views(views, Path(args.out) if args.out else run_dir / "decoded", args.draw, args.min_score)
    for v in views:
        if v.error:
            print(f"{v.dataset}/{v.task}/{v.point} item {v.item_id}: {v.error}", file=sys.stderr)
    for path in written:
        print(path)
    print(f"{len(written)} PNG(s) written for {len(found)} item(s)", file=sys.stderr)
    return 0 if len(written) == sum(v.image is not None for v in views) and written else 1


def cmd_estimate(args: argparse.Namespace) -> int:
    import shutil

    from .run import DEFAULT_RUN_OVERRIDES, RunConfig
    from .run import estimate as est

    cfg = RunConfig(qualities=_parse_qualities(args.quality), data_roots=_parse_roots(args.data_root), limit=args.limit,
                    ids=args.ids, exclude=args.exclude, classes=args.classes, overrides=parse_overrides(args.overrides),
                    cards_dirs=args.cards, out=args.out, workers=args.workers, progress=False)  # fmt: skip
    if not (args.codec or args.task or args.dataset):  # the built-in default run, as `vcmbench run` plans it
        for card, settings in DEFAULT_RUN_OVERRIDES.items():
            for key, value in settings.items():
                cfg.overrides.setdefault(card, {}).setdefault(key, value)
    cfg.codecs, cfg.tasks, cfg.datasets = args.codec or cfg.codecs, args.task or cfg.tasks, args.dataset or cfg.datasets
    sources = [Path(d) for d in (args.costs or [args.out])]
    overheads, calibration = est.Overheads(), None
    if args.calibrate:
        grid = [*(f"--{k}={','.join(v)}" for k, v in (("codec", args.codec), ("task", args.task), ("dataset", args.dataset),
                                                     ("ids", args.ids), ("exclude", args.exclude), ("classes", args.classes))
                  if v), *(f"--{k}={v}" for k, vs in (("quality", args.quality), ("data-root", args.data_root),
                                                      ("set", args.overrides), ("cards", args.cards)) for v in vs)]  # fmt: skip
        calibration, startup = est.calibrate(grid, args.calibrate, print)
        overheads = est.Overheads(startup_s=startup)
    try:
        work, _ = est.plan(cfg)
        costs = est.measured_costs([*sources, *([calibration] if calibration else [])])
    finally:
        if calibration:
            shutil.rmtree(calibration, ignore_errors=True)
    names = [str(d) for d in sources] + ([f"a calibration run on {args.calibrate} item(s)"] if calibration else [])
    machine = est.Machine(args.nodes, args.cpus or est.local_cores(), args.gpus, args.workers, args.gpu_speedup)
    print(est.estimate_text(work, costs, machine, names, overheads))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce.command import ReproduceOptions, reproduce

    return reproduce(ReproduceOptions(args.suite, args.only, args.dry_run, args.stand_ins, _parse_roots(args.data_root),
                                      args.limit, Path(args.out), not args.no_progress, args.offline))  # fmt: skip


COMMANDS = {
    "run": cmd_run, "ls": cmd_ls, "validate": cmd_validate, "plot": cmd_plot, "report": cmd_report,
    "compare": cmd_compare, "export": cmd_export, "train-synth": cmd_train_synth,
    "masks": cmd_masks, "train": cmd_train, "inspect": cmd_inspect, "reproduce": cmd_reproduce,
    "decode": cmd_decode, "estimate": cmd_estimate,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import VcmbenchError
    from .registry import RegistryError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command](args)
    except (VcmbenchError, CardError, RegistryError) as exc:
        print(f"vcmbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
