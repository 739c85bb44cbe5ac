"""Encode speed-up from running external encoders in parallel (one single-threaded process per core).

    VCMBENCH_SHARED=../shared python benchmarks/parallel_encodes.py [--codec vvenc] [--preset medium] [--n 24]
                                                                   [--repeat 1]

Encodes the same images at the same QP with the local executor at 1 worker and
at all cores, and prints the throughput ratio. Images are submitted largest file
first, as the runner does. The defaults are the card's preset (medium) and 24
images. With the `faster` preset an encode takes about 0.5 s, so process start and
the last encode's tail are a large share of a short run. An in-process codec (`--codec jpeg`)
encodes in threads; `--repeat` encodes each image that many times, for a run long enough to time.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.executors.local import LocalExecutor, default_workers
from vcmbench.media.image import read_rgb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codec", default="vvenc")
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--qp", type=int, default=32)
    ap.add_argument("--n", type=int, default=24, help="images")
    ap.add_argument("--repeat", type=int, default=1, help="encode each image this many times")
    args = ap.parse_args()
    shared = Path(os.environ.get("VCMBENCH_SHARED", "../shared"))
    files = sorted((shared / "data" / "coco-mini" / "val2017").glob("*.jpg"))[: args.n]
    files.sort(key=lambda f: f.stat().st_size, reverse=True)  # the runner's order (executors.base.longest_first)
    images = [read_rgb(f, f.stem) for f in files] * args.repeat
    card = CardSet().get("codec", args.codec)
    if "preset" in card.settings:
        card = card.with_settings(preset=args.preset)
    codec = build(card)
    codec.encode(images[0], args.qp)  # warm-up

    def timed(workers: int) -> float:
        with LocalExecutor(workers) as ex:
            t = time.perf_counter()
            for out in ex.unordered(lambda im: codec.encode(im, args.qp), images):
                if out.error:
                    raise out.error
            return time.perf_counter() - t

    cores = default_workers()
    one = timed(1)
    many = timed(cores)
    preset = f" ({args.preset})" if "preset" in card.settings else ""
    print(f"{args.codec}{preset} {codec.quality_name} {args.qp}, {len(images)} images")
    print(f"1 worker  : {one:.2f} s ({len(images) / one:.2f} images/s)")
    print(f"{cores} workers : {many:.2f} s ({len(images) / many:.2f} images/s)")
    print(f"speed-up  : {one / many:.2f}x  (target >= 1.8x on 2 cores)")


if __name__ == "__main__":
    main()
