"""Growth to COCO-val size: how the harness's own cost grows with the number of images.

    python benchmarks/growth.py [--sizes 64,640,5000] [--out DIR] [--rerun] [--cold-pandas]
                                [--img-size N] [--background-scoring auto|on|off]

The same grid -- a JPEG ladder plus the uncompressed reference x the synth detector (``synth_det``) -- is run
on generated synth images of each size, each in a fresh output folder and in its own process (so peak memory
is that size's). For every size it prints one row of a markdown table:

- ``wall``: seconds of :func:`vcmbench.run.run` (the data are generated before, outside the timing);
- ``work``: the sum of ``encode_s``, ``decode_s`` and ``infer_s`` the store recorded (codec + model time);
- ``ratio``: wall / work; ``own ms/pred``: (wall - work) per prediction (image x point), the harness's own
  time per item, which should be flat with size; ``marginal``: the growth of (wall - work) from the size
  above per prediction added, the harness's cost of one more item without the fixed costs (startup,
  imports) that the smaller sizes spread over fewer items;
- ``plan``: resolve the cards and items (hash the files) and expand the grid; ``writes``: the store's write
  methods (bitstream files, encode / prediction / evaluation rows, decode statistics, run rows);
  ``reads``: the store's read queries; ``score``: computing the metrics (COCO mAP); ``eval``: the whole
  evaluate stage (scoring, reads, evaluation rows); ``report``: the cost columns and results.csv / items.csv
  / run.json;
- ``peak MB``: the driver process's peak resident memory; ``store MB``: database + bitstreams on disk.

``--rerun`` runs the largest size again in its (finished) output folder -- nothing is left to do -- and
prints its wall time as a share of the first.

Choices (2 cores): images are small (``--width`` x ``--height``, default 160 x 120) and the detector runs at
``--img-size`` 160 (its card says 320), so that a 5,000-image grid of 3 JPEG qualities + the reference
(20,000 predictions) takes minutes; the model's and codecs' speed are what they are, only the harness's own
time is in question. torch, torchvision (which ultralytics imports at its first prediction), ultralytics and
(unless ``--cold-pandas``) pandas are imported before the timing: import costs are fixed, not growth.
``--background-scoring`` is the run's option (``auto`` is off without a GPU). Each size also prints, on
stderr, its stages' seconds and the time of each store write method. Results and the before/after tables:
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

#: store methods whose time counts as "writes" and as "reads"
WRITES = ("put_blob", "put_encode", "set_decode_stats", "put_predictions", "put_evaluation", "link_units",
          "start_run", "finish_run")  # fmt: skip
READS = ("encode_records", "prediction_status", "predictions", "evaluation", "tidy_rows", "per_item_rows",
         "encode_origins", "run_evaluations", "run_info", "latest_run")  # fmt: skip


def timed(table: dict[str, float], name: str, fn: Any) -> Any:
    """``fn`` that adds its wall seconds to ``table[name]`` (the outermost call only, for nested ones)."""
    depth = [0]

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        depth[0] += 1
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                table[name] += time.perf_counter() - t

    return wrapper


def instrument(seconds: dict[str, float]) -> None:
    """Time the harness's stages by wrapping the functions the runner calls (in this process only)."""
    from vcmbench.run import evaluate, runner
    from vcmbench.scoring import BackgroundScorer
    from vcmbench.store import Store

    for name in WRITES:
        setattr(Store, name, timed(seconds, "writes", timed(seconds, f"w.{name}", getattr(Store, name))))
    for name in READS:
        setattr(Store, name, timed(seconds, "reads", getattr(Store, name)))
    real_take = BackgroundScorer.take

    def take(self: BackgroundScorer, unit_key: str) -> Any:
        metrics = real_take(self, unit_key)
        seconds["units scored by the scoring process"] += metrics is not None
        return metrics

    BackgroundScorer.take = take  # type: ignore[method-assign]
    runner.resolve = timed(seconds, "plan", runner.resolve)
    runner.plan_units = timed(seconds, "plan", runner.plan_units)
    runner.with_cost = timed(seconds, "report", runner.with_cost)
    runner.write_outputs = timed(seconds, "report", runner.write_outputs)
    evaluate.score_unit = timed(seconds, "score", evaluate.score_unit)
    runner.evaluate_stage = timed(seconds, "eval", runner.evaluate_stage)


def synth_settings(args: argparse.Namespace, n: int) -> dict[str, Any]:
    return {"root": str(Path(args.out) / "data"), "width": args.width, "height": args.height,
            "images": {"train": 0, "val": n}, "clips": {"train": 0, "val": 0}}  # fmt: skip


def config(args: argparse.Namespace, n: int) -> Any:
    from vcmbench.run import RunConfig

    return RunConfig(
        codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": args.qualities.split(",")},
        overrides={"synth": synth_settings(args, n), "synth_det": {"img_size": args.img_size, "device": "cpu"}},
        out=str(Path(args.out) / f"n{n}"), progress=False, workers=args.workers, coco_eval=args.coco_eval,
        background_scoring=args.background_scoring,
    )  # fmt: skip


def store_bytes(root: Path) -> int:
    files = [root / f for f in ("vcmbench.db", "vcmbench.db-wal")] + list((root / "bitstreams").rglob("*.bin"))
    return sum(f.stat().st_size for f in files if f.exists())


def work_seconds(root: Path) -> tuple[float, int]:
    """Σ(encode_s + decode_s + infer_s) in the store, and the number of predictions."""
    import sqlite3

    with sqlite3.connect(root / "vcmbench.db") as db:
        enc, dec = db.execute("SELECT TOTAL(encode_s), TOTAL(decode_s) FROM encodes").fetchone()
        inf, n = db.execute("SELECT TOTAL(infer_s), COUNT(*) FROM predictions").fetchone()
    return float(enc + dec + inf), int(n)


def measure(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One size, in this process: the run, timed and instrumented (prints nothing else)."""
    if not args.cold_pandas:
        import pandas  # noqa: F401  (import costs are not growth: 2-3 s for pandas here, where no .pyc is written)
    import torch  # noqa: F401
    import torchvision  # noqa: F401  (ultralytics imports it lazily, at its first prediction: 8 s here)
    import ultralytics  # noqa: F401

    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.run import run

    cfg = config(args, n)
    build(CardSet([]).get("dataset", "synth").with_settings(**synth_settings(args, n))).ensure()  # generate first
    seconds: dict[str, float] = defaultdict(float)
    instrument(seconds)
    load = os.getloadavg()[0]
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    report = run(cfg, log=lambda m: None)
    wall = time.perf_counter() - t0
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    root = Path(cfg.out)
    work, preds = work_seconds(root)
    return {
        "n": n, "wall": wall, "work": work, "preds": preds, "status": report.status, "done": dict(report.work),
        **{k: seconds.get(k, 0.0) for k in ("plan", "writes", "reads", "score", "eval", "report")},
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "store_mb": store_bytes(root) / 2**20,
        "load": (load + os.getloadavg()[0]) / 2, "stages": report.stage_seconds,
        "detail": {k: round(v, 2) for k, v in seconds.items() if k.startswith("w.")},
        "background_units": int(seconds.get("units scored by the scoring process", 0)),
    }  # fmt: skip


def child(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Measure one size in a fresh process (its peak memory is its own)."""
    cmd = [sys.executable, __file__, "--one", str(n), *args.forward]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"growth: the {n}-image run failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def marginal_ms(smaller: dict[str, Any], larger: dict[str, Any]) -> float:
    """Milliseconds of harness time (wall - work) per prediction that ``larger`` has beyond ``smaller``."""
    grown = (larger["wall"] - larger["work"]) - (smaller["wall"] - smaller["work"])
    return 1000 * grown / max(larger["preds"] - smaller["preds"], 1)


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| images | preds | wall s | work s | ratio | own ms/pred | marginal | plan s | writes s | reads s "
            "| score s | eval s | report s | peak MB | store MB | load |")  # fmt: skip
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    before = None
    for r in rows:
        own = 1000 * (r["wall"] - r["work"]) / max(r["preds"], 1)
        marginal = "" if before is None else f"{marginal_ms(before, r):.2f}"
        before = r
        lines.append(
            f"| {r['n']} | {r['preds']} | {r['wall']:.1f} | {r['work']:.1f} | {r['wall'] / max(r['work'], 1e-9):.3f} "
            f"| {own:.2f} | {marginal} | {r['plan']:.2f} | {r['writes']:.2f} | {r['reads']:.2f} | {r['score']:.2f} "
            f"| {r['eval']:.2f} | {r['report']:.2f} | {r['peak_mb']:.0f} | {r['store_mb']:.1f} | {r['load']:.2f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,640,5000", help="numbers of generated images [64,640,5000]")
    ap.add_argument("--out", default="/tmp/vcmbench-growth", help="output folder (data, one store per size)")
    ap.add_argument("--qualities", default="10,40,80", help="JPEG ladder (the reference is added) [10,40,80]")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--img-size", type=int, default=160, help="synth_det's inference size [160]")
    ap.add_argument("--workers", type=int, default=None, help="executor threads [one per core]")
    ap.add_argument("--coco-eval", default=None, help="COCO mAP backend [faster_coco_eval]")
    ap.add_argument("--background-scoring", default="auto", choices=["auto", "on", "off"],
                    help="score finished units in a background process while the model infers [auto]")
    ap.add_argument("--rerun", action="store_true", help="run the largest size again in its finished folder")
    ap.add_argument("--keep", action="store_true", help="keep earlier stores of the same sizes (default: fresh)")
    ap.add_argument("--cold-pandas", action="store_true",
                    help="import pandas inside the timed run (where the run imports it: the report stage)")
    ap.add_argument("--profile", default=None, help="cProfile the driver thread of each run into this file")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.forward = [a for a in (argv if argv is not None else sys.argv[1:])]
    if "--one" in args.forward:
        i = args.forward.index("--one")
        del args.forward[i : i + 2]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.one is not None:
        print(json.dumps(measure(args, args.one)))
        return
    import shutil

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        if not args.keep:
            shutil.rmtree(Path(args.out) / f"n{n}", ignore_errors=True)
        rows.append(child(args, n))
        print(f"  {n} images: {rows[-1]['wall']:.1f} s; stages {rows[-1]['stages']}; writes {rows[-1]['detail']}; "
              f"units scored by the scoring process: {rows[-1]['background_units']}",
              file=sys.stderr, flush=True)
    print(f"JPEG q {args.qualities} + reference x synth_det@{args.img_size}, {args.width}x{args.height} images, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(table(rows))
    if args.rerun:
        first = rows[-1]
        again = child(args, sizes[-1])
        print(f"\nrerun of the finished {first['n']}-image grid: {again['wall']:.2f} s = "
              f"{100 * again['wall'] / first['wall']:.2f} % of its first wall time ({first['wall']:.1f} s); "
              f"work done: {again['done']}, load {again['load']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
