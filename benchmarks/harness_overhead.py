"""Harness overhead: wall time of a JPEG x YOLOv5 run divided by the time spent in codecs and the model.

    VCMBENCH_SHARED=../shared python benchmarks/harness_overhead.py [--limit N]

Everything that is not encode, decode or inference (model loading, reading and
hashing images, the database, pycocotools evaluation, scheduling) is overhead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from vcmbench.metrics.coco_map import BACKENDS, resolve_backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=None, help="images of coco-mini to use [all 79]")
    ap.add_argument("--qualities", default="5,10,20,40,70")
    ap.add_argument("--background-scoring", choices=["auto", "on", "off"], default="auto",
                    help="score units in a background process while the model infers (RunConfig.background_scoring)")
    ap.add_argument("--coco-eval", choices=BACKENDS, default=None,
                    help="COCO mAP backend (RunConfig.coco_eval) [$VCMBENCH_COCO_EVAL, else faster_coco_eval]")
    args = ap.parse_args()
    shared = Path(os.environ.get("VCMBENCH_SHARED", "../shared"))

    import torch  # noqa: F401  (import cost is not harness overhead)
    import yolov5  # noqa: F401

    from vcmbench.run import RunConfig, run

    # the evaluation stage's time (RunReport.stage_seconds): the COCO mAP (pycocotools' protocol) is the
    # official metric, not harness code, but it counts as overhead here
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(
            codecs=["jpeg"], tasks=["yolov5"], datasets=["coco"], limit=args.limit,
            data_roots={"*": str(shared / "data" / "coco-mini")},
            overrides={"yolov5": {"weights": str(shared / "weights" / "yolov5n.pt")}},
            qualities={"jpeg": [int(q) for q in args.qualities.split(",")]}, out=out, progress=False,
            background_scoring=args.background_scoring, coco_eval=args.coco_eval,
        )  # fmt: skip
        t0 = time.perf_counter()
        report = run(cfg, log=lambda m: None)
        wall = time.perf_counter() - t0
        items = pd.read_csv(report.run_dir / "items.csv")
    enc, dec, inf = (float(items[c].fillna(0).sum()) for c in ("encode_s", "decode_s", "infer_s"))
    work = enc + dec + inf
    print(f"images x points     : {len(items)}")
    print(f"encode / decode / inference seconds: {enc:.2f} / {dec:.2f} / {inf:.2f}  (sum {work:.2f})")
    print(f"wall seconds        : {wall:.2f}")
    print(f"overhead ratio      : {wall / work:.3f}  (target <= 1.15)")
    print(f"evaluation seconds  : {report.stage_seconds['evaluate']:.2f}  (COCO mAP of {report.work['evaluations']} units, backend {resolve_backend()})")
    print(f"ratio with the evaluation counted as work: {wall / (work + report.stage_seconds['evaluate']):.3f}")


if __name__ == "__main__":
    main()
