"""Ray executor figures: encode scaling from 1 to 2 CPUs, and Ray's overhead against the local executor.

    VCMBENCH_SHARED=../shared python benchmarks/ray_scaling.py [--n 24] [--preset medium] [--cheap-n 8,24]

1. **Scaling** of an encoder-bound grid: VVenC (``--preset``) at one QP on ``--n``
   coco-mini images, encoded by :class:`RayExecutor` on a local Ray instance with 1
   CPU, then with 2 CPUs (each instance warmed up first: workers started, codec
   built). Target >= 1.8x on 2 cores. The same encodes through the local executor
   with 1 and 2 workers are printed as a control: when the machine is shared, the
   control shows how much of the ideal 2x the machine had to give. The grid has 24 encodes
   by default. With 12 on two slots, what is measured is mostly how the last encodes fall. In one
   run at 2 CPUs the two workers' ffmpeg children used 41.9 s and 35.5 s of CPU: one slot stood
   idle for about 6 s of the 43.3 s. Ray's own processes (raylet, GCS, log monitor, ...) used 2.9 s
   of CPU in that time. That idle slot comes from the size of the grid, not from the executor.
   Jobs go in the runner's order, largest source file first. "N CPUs" means N cores: each
   variant, with every process it starts (Ray's raylet, GCS and agents as well as the encoders),
   is confined to the first N cores. With ``--slots-only``, 1 CPU is one task slot with all cores
   free, so at 1 CPU Ray's daemons have a core of their own and at 2 CPUs they take from the
   encoders. That counts a fixed cost of Ray as a loss of scaling.
2. **Overhead** on a cheap grid: JPEG (qualities 10, 40, plus uncompressed) x YOLOv5n,
   the whole run (encode, decode, predict, evaluate, store; each run loads the model afresh, as a new
   `vcmbench run` process would) with ``--executor local``
   and ``--executor ray`` (joining a Ray instance already up, 2 CPUs), at two grid
   sizes. Reported: end-to-end wall times and overhead, the fixed costs of Ray (start
   of the instance, start of the model actor: a fresh process importing PyTorch and
   loading the weights), and the marginal cost per image (difference between the two
   sizes), which is what the overhead is on a grid big enough to amortise the fixed
   costs. Target <= 10 %.

Ray listens on every network interface: unless ``--no-netns`` is given, the script
re-runs itself inside a private network namespace with only loopback (``unshare -n``,
root needed), like the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vcmbench.adapters import build


def in_private_netns() -> bool:
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_in_netns() -> None:
    """Run this script again under ``unshare -n`` with loopback up, and exit with its status."""
    if shutil.which("unshare") is None:
        sys.exit("benchmarks/ray_scaling.py: needs `unshare` (or pass --no-netns to run on the host network)")
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, *sys.argv]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    sys.exit(subprocess.call(cmd, env=env))


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def start_ray(cpus: int) -> float:
    import ray

    t = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)  # fmt: skip
    return time.perf_counter() - t


# ---- 1. scaling ---------------------------------------------------------------------------------
def encode_jobs(shared: Path, n: int, preset: str, qp: int) -> list[Any]:
    from vcmbench.cards import CardSet
    from vcmbench.executors.base import EncodeJob, longest_first

    cards = CardSet()
    codec = cards.get("codec", "vvenc").with_settings(preset=preset)
    ds_card = cards.get("dataset", "coco").with_settings(root=str(shared / "data" / "coco-mini"))
    items = build(ds_card).items(limit=n)
    # in the order the runner submits a grid: largest source file first
    return longest_first(EncodeJob(f"{it.id}-{qp}", codec, qp, ds_card, it) for it in items)


def timed_encodes(executor: Any, jobs: list[Any]) -> float:
    t = time.perf_counter()
    for out in executor.encode(jobs):
        if out.error is not None:
            raise out.error
    return time.perf_counter() - t


@contextlib.contextmanager
def cores(n: int | None) -> Iterator[None]:
    """Confine this thread, and every process and thread it starts meanwhile, to the first ``n`` of its cores."""
    if n is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(before)[:n])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def scaling(shared: Path, n: int, preset: str, qp: int, repeats: int, confine: bool) -> None:
    import ray

    from vcmbench.executors.local import LocalExecutor
    from vcmbench.executors.ray import RayExecutor

    jobs = encode_jobs(shared, n, preset, qp)
    warm = encode_jobs(shared, 4, preset, 47)
    print(f"\n1. scaling: VVenC {preset} QP {qp}, {len(jobs)} coco-mini images, {repeats} repeat(s), best of each "
          f"(load before: {load_avg()})")  # fmt: skip
    print("   N CPUs = " + ("N cores: everything the executor starts (Ray's daemons too) is confined to N cores"
                           if confine else "N slots (Ray num_cpus / local workers) on all cores"))  # fmt: skip
    ray_t: dict[int, float] = {}
    local_t: dict[int, float] = {}
    for _ in range(repeats):  # interleaved, so that a burst of load from elsewhere hits every variant alike
        for cpus in (1, 2):
            with cores(cpus if confine else None):
                start_ray(cpus)
                with RayExecutor(log=lambda m: None) as ex:
                    timed_encodes(ex, warm[: 2 * cpus])  # every worker started, codec built
                    t = timed_encodes(ex, jobs)
                ray.shutdown()
            ray_t[cpus] = min(ray_t.get(cpus, t), t)
            print(f"   ray   {cpus} CPU : {t:6.2f} s  ({len(jobs) / t:.2f} images/s)  load {load_avg()}")
        for workers in (1, 2):
            with cores(workers if confine else None), LocalExecutor(workers) as ex:
                timed_encodes(ex, warm[:workers])
                t = timed_encodes(ex, jobs)
            local_t[workers] = min(local_t.get(workers, t), t)
            print(f"   local {workers} wkr : {t:6.2f} s  ({len(jobs) / t:.2f} images/s)  load {load_avg()}")
    print(f"   speed-up 1 -> 2 CPUs on Ray : {ray_t[1] / ray_t[2]:.2f}x  (target >= 1.8x)")
    print(f"   control, local executor    : {local_t[1] / local_t[2]:.2f}x")
    print(f"   Ray vs local, 2 CPUs       : {100 * (ray_t[2] / local_t[2] - 1):+.1f} %")


# ---- 2. overhead ----------------------------------------------------------------------------------
def cheap_run(shared: Path, out: Path, n: int, executor: str) -> tuple[float, float | None]:
    """Wall seconds of a JPEG x YOLOv5n run on ``n`` images, and (Ray) seconds until the model actor was up."""
    from vcmbench.run import RunConfig, run

    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        if "images to infer" in msg:
            marks["infer"] = time.perf_counter()
        if "model actor on node" in msg:
            marks["actor"] = time.perf_counter()

    # each run as from a fresh `vcmbench run`: the local executor loads the model again (its adapters are
    # cached per process), as a Ray run starts a new model actor
    from vcmbench.executors import base

    base._CACHE.clear()
    base._LOADED.clear()
    cfg = RunConfig(
        codecs=["jpeg"], tasks=["yolov5"], datasets=["coco"], limit=n, qualities={"jpeg": [10, 40]},
        data_roots={"*": str(shared / "data" / "coco-mini")}, out=str(out), progress=False,
        overrides={"yolov5": {"weights": str(shared / "weights" / "yolov5n.pt")}}, executor=executor,
    )  # fmt: skip
    t = time.perf_counter()
    report = run(cfg, log=log)
    wall = time.perf_counter() - t
    if not report.ok:
        raise SystemExit(f"{executor} run failed: {report.failures[:3]}")
    actor = marks["actor"] - marks["infer"] if "actor" in marks else None
    return wall, actor


def overhead(shared: Path, sizes: list[int], repeats: int) -> None:
    import ray
    import torch  # noqa: F401  (imports are not executor overhead: the driver has them in both cases)
    import yolov5  # noqa: F401

    print(f"\n2. overhead: JPEG 10,40 + uncompressed x YOLOv5n, {repeats} repeat(s), best of each "
          f"(load before: {load_avg()})")  # fmt: skip
    init_s = start_ray(2)
    print(f"   ray.init (local instance, 2 CPUs): {init_s:.2f} s  [not in the figures below]")
    best: dict[tuple[str, int], float] = {}
    actor_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for n in sizes:
                for executor in ("local", "ray"):
                    wall, actor = cheap_run(shared, Path(tmp) / f"{executor}-{n}-{r}", n, executor)
                    best[executor, n] = min(best.get((executor, n), wall), wall)
                    if actor is not None:
                        actor_s.append(actor)
                    print(f"   {executor:<5} {n:3d} images x 3 points: {wall:6.2f} s  load {load_avg()}")
    ray.shutdown()
    print(f"   model actor start (process + PyTorch import + weights), median: "
          f"{sorted(actor_s)[len(actor_s) // 2]:.2f} s")  # fmt: skip
    for n in sizes:
        lo, ra = best["local", n], best["ray", n]
        print(f"   {n:3d} images: local {lo:6.2f} s, ray {ra:6.2f} s -> end-to-end overhead {100 * (ra / lo - 1):+.1f} %")
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]
        per_local = (best["local", b] - best["local", a]) / (b - a)
        per_ray = (best["ray", b] - best["ray", a]) / (b - a)
        print(f"   marginal cost per image ({a} -> {b} images): local {1000 * per_local:.0f} ms, ray {1000 * per_ray:.0f} ms"
              f" -> overhead {100 * (per_ray / per_local - 1):+.1f} %  (target <= 10 %)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="images of the scaling grid")
    ap.add_argument("--preset", default="medium", help="VVenC preset of the scaling grid")
    ap.add_argument("--qp", type=int, default=32)
    ap.add_argument("--cheap-n", default="8,24", help="grid sizes (images) of the overhead runs")
    ap.add_argument("--repeats", type=int, default=2, help="measurements of each variant (the best is kept)")
    ap.add_argument("--only", choices=["scaling", "overhead"], default=None)
    ap.add_argument("--slots-only", action="store_true",
                    help="scaling: 1 CPU = one task slot on all cores, leaving Ray's daemons a free core at 1 CPU "
                         "(default: 1 CPU = one core, for Ray's daemons as for the encodes)")
    ap.add_argument("--no-netns", action="store_true", help="do not move into a private network namespace")
    args = ap.parse_args()
    if not args.no_netns and not in_private_netns():
        reexec_in_netns()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    shared = Path(os.environ.get("VCMBENCH_SHARED", "../shared")).resolve()
    print(f"machine: {os.cpu_count()} CPUs, load average {load_avg()}")
    if args.only in (None, "scaling"):
        scaling(shared, args.n, args.preset, args.qp, args.repeats, confine=not args.slots_only)
    if args.only in (None, "overhead"):
        overhead(shared, [int(x) for x in args.cheap_n.split(",")], args.repeats)


if __name__ == "__main__":
    main()
