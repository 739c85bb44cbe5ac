"""The paper's full grid through `vcmbench estimate`'s time model (docs/estimate.md, "The paper's grid").

    python benchmarks/paper_estimate.py [--nodes 8 --cpus 32 --gpus 1] [--gpu-speedup 10] [--vtm-s 44]

The default cluster is 256 cores and 8 GPUs as 8 nodes of 32 cores and one GPU each.

COCO val2017 (5,000 images of about 640x480) x (VTM at 6 QPs + 5 learned codecs x 6 rate points, and the
uncompressed reference) x 3 tasks. No store holds these costs, so they are assumptions, each printed:

- VTM intra at 640x480 on one thread: 44-97 s per image, measured at QP 32 and taken for every QP (the
  design notes' references; ``--vtm-s``); its decode
  0.3 s per image (VVenC's decoder measured here: 0.32 s per coco-mini image, assumed for VTM's);
- learned codecs, on the CPU cores: encode 0.65 s and decode 0.85 s per coco-mini image (0.27 MP), the
  means of lic, objicm, saicm, tlicm in the learned-codec report's store, scaled to 640x480;
- the 3 tasks: 0.35 s per image on one CPU core (YOLOv5n 0.33 s, the faces task 0.38 s in that store), on a
  GPU ``--gpu-speedup`` times faster (10: an assumption, not measured: no GPU was lent);
- the harness's overheads: :class:`vcmbench.run.estimate.Overheads` (measured on 2 cores).
"""

from __future__ import annotations

import argparse

from vcmbench.run.estimate import Costs, Job, Machine, PendingWork, Rate, machine_text, wall_time

IMAGES, PIXELS = 5000, 640 * 480
#: the 4 built-in learned codecs and a fifth at their cost
LEARNED = ("lic", "objicm", "tlicm", "saicm", "learned5")
CODED_MP = 0.2727  # mean pixels of a coco-mini image in the store the learned costs come from


def paper_work(tasks: int = 3) -> PendingWork:
    points = [("vtm", q) for q in ("22", "27", "32", "37", "42", "47")]
    points += [(c, str(q)) for c in LEARNED for q in range(1, 7)]
    encodes = [Job(c, c, q, PIXELS) for c, q in points for _ in range(IMAGES)]
    work = PendingWork(encodes=encodes)
    for t in range(tasks):
        task = f"task{t + 1}"
        work.decodes[task] = list(encodes)  # every task decodes its own copy of each bitstream
        work.inferences[task] = [Job(task, task, None, PIXELS) for _ in range(IMAGES * (len(points) + 1))]
        work.evaluations += [IMAGES] * (len(points) + 1)
    return work


def paper_costs(vtm_s: float, tasks: int = 3) -> Costs:
    costs = Costs()
    for q in ("22", "27", "32", "37", "42", "47"):
        costs.encode[("vtm", q)] = Rate(vtm_s / PIXELS, 1)
        costs.decode[("vtm", q)] = Rate(0.3 / PIXELS, 1)
    for c in LEARNED:
        for q in range(1, 7):
            costs.encode[(c, str(q))] = Rate(0.65 / (CODED_MP * 1e6), 1)
            costs.decode[(c, str(q))] = Rate(0.85 / (CODED_MP * 1e6), 1)
    for t in range(tasks):
        costs.infer[f"task{t + 1}"] = Rate(0.35, 1, load=10.0)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--cpus", type=int, default=32, help="cores per node")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node")
    p.add_argument("--gpu-speedup", type=float, default=10.0)
    p.add_argument("--vtm-s", type=float, action="append", default=[], help="VTM seconds per encode [44 and 97]")
    args = p.parse_args()
    work = paper_work()
    c = work.counts()
    print(f"paper grid: {c['encodes']} encodes, {c['decodes']} decodes, {c['inferences']} inferences, "
          f"{c['evaluations']} evaluations")  # fmt: skip
    m = Machine(args.nodes, args.cpus, args.gpus, None, args.gpu_speedup)
    print(f"machine: {machine_text(m)}")
    for vtm_s in args.vtm_s or [44.0, 97.0]:
        est = wall_time(work, paper_costs(vtm_s), m)
        parts = ", ".join(f"{k} {v / 3600:.2f} h" for k, v in est.stages.items())
        print(f"VTM {vtm_s:g} s per encode: {est.wall_s / 3600:.1f} h ({parts})")


if __name__ == "__main__":
    main()
