"""The encode stage alone: its wall time and its timed encodes, with JPEG encoded through a file descriptor or
through a BytesIO (``vcmbench.media.image.save_to_bytes``).

    python benchmarks/encode_stage.py [--images 5000] [--width 160 --height 120] [--variants bytesio,fd,bytesio,fd]

Runs the encode stage of ``growth.py``'s grid (JPEG q 10, 40, 80 on generated synth images, its data folder
reused) in a fresh store for each variant, on the local executor with a thread per core, and prints the
stage's wall time and the sum of the encodes' own timings (``encode_s``). ``fd``: every image through an
in-memory file descriptor; ``bytesio``: every image through a BytesIO; ``default``: the adapter's choice
by image size (``FD_MIN_PIXELS``). The bitstreams are the same in all three.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import growth  # noqa: E402  (the grid and its data)

THRESHOLDS = {"fd": 0, "bytesio": float("inf")}


def stage(args: argparse.Namespace, variant: str) -> tuple[float, float, int]:
    """(stage wall seconds, sum of encode_s, encodes) of one variant in a fresh store."""
    import vcmbench.media.image as image
    from vcmbench.executors.local import LocalExecutor
    from vcmbench.run.context import RunContext
    from vcmbench.run.encode import encode_stage
    from vcmbench.run.resolve import resolve
    from vcmbench.run.runner import plan_units
    from vcmbench.store import Store

    default = image.FD_MIN_PIXELS
    image.FD_MIN_PIXELS = THRESHOLDS.get(variant, default)  # type: ignore[assignment]
    try:
        cfg = growth.config(growth.parse(["--width", str(args.width), "--height", str(args.height), "--out",
                                          args.data]), args.images)  # fmt: skip
        cfg.out = str(Path(args.out) / variant)
        shutil.rmtree(cfg.out, ignore_errors=True)
        store = Store(cfg.out)
        res = resolve(cfg, store.file_sha256)
        units = plan_units(cfg, res)
        store.start_run("encode-stage", "benchmarks/encode_stage.py", {}, {})
        ctx = RunContext(store, "encode-stage", res, lambda m: None, False)
        with LocalExecutor(args.workers) as ex:
            t = time.perf_counter()
            encode_stage(ctx, units, ex)
            wall = time.perf_counter() - t
        store.close()
    finally:
        image.FD_MIN_PIXELS = default
    with sqlite3.connect(Path(cfg.out) / "vcmbench.db") as db:
        total, n = db.execute("SELECT TOTAL(encode_s), COUNT(*) FROM encodes WHERE status='done'").fetchone()
    return wall, float(total), int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--variants", default="bytesio,fd,bytesio,fd", help="fd, bytesio or default, in turn")
    ap.add_argument("--workers", type=int, default=None, help="encode threads [one per core]")
    ap.add_argument("--data", default="/tmp/vcmbench-growth", help="growth.py's --out (its data folder is reused)")
    ap.add_argument("--out", default="/tmp/vcmbench-encode-stage", help="one store per variant")
    args = ap.parse_args()
    for variant in args.variants.split(","):
        if variant not in (*THRESHOLDS, "default"):
            raise SystemExit(f"encode_stage: unknown variant {variant!r}: choose fd, bytesio or default")
        wall, enc, n = stage(args, variant)
        print(f"{args.width}x{args.height}, {args.images} images, {variant}: encode stage {wall:.2f} s, "
              f"{n} encodes timing {enc:.2f} s in all ({1000 * enc / max(n, 1):.3f} ms each)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
