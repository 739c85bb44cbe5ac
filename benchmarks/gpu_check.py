"""The checks of ``benchmarks/gpu_check.sh``: vcmbench's GPU path against its CPU path (issue 19, item 3).

    python benchmarks/gpu_check.py CHECK --out DIR [--device cuda] [--smoke]

CHECK is one of

- ``yolo``: YOLOv5n on coco-mini (reference + JPEG 10, 50), once with ``yolov5.device=cpu`` and once with
  ``cuda``: every unit's mAP within 0.002; then, from the CUDA run, the share of its inference stage the GPU
  spends in the model's bare forward pass (target >= 80 % busy), and the run again with background scoring on:
  the overhead ratio (wall / sum of encode, decode and inference times) with and without it;
- ``learned``: every built-in learned codec encodes coco-mini crops in one process on the device; another
  process decodes them on the device, a third on the CPU: pixel-identical to the encoding process's decode?
- ``nerv``: a NeRV encode (a few training epochs, pruning, quantization, rANS) of a small clip on the device,
  decoded on the device and on the CPU: the loss is finite, the two decodes agree.

``--smoke`` runs each check on the CPU at a tiny size (a few images, one codec, two epochs): it shows that the
script works on a machine without a GPU, and checks nothing about CUDA. Each check prints one ``RESULT`` JSON
line and writes it to ``DIR/<check>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
LEARNED = ("lic", "objicm", "tlicm", "saicm")


def shared() -> Path:
    root = os.environ.get("VCMBENCH_SHARED")
    if not root:
        sys.exit("VCMBENCH_SHARED is not set: point it at the shared data folder (data/coco-mini, weights/yolov5n.pt)")
    return Path(root)


def result(out: Path, check: str, figures: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{check}.json").write_text(json.dumps(figures, indent=1))
    print("RESULT", json.dumps({"check": check, **figures}), flush=True)


# ---- YOLOv5: CUDA = CPU, GPU busy, background scoring ----------------------------------------------
def yolo_grid(out: Path, device: str, limit: int | None, scoring: str) -> Any:
    from vcmbench.run import RunConfig

    root = shared()
    return RunConfig(codecs=["jpeg"], qualities={"jpeg": [10, 50]}, tasks=["yolov5"], datasets=["coco"],
                     data_roots={"*": str(root / "data" / "coco-mini")}, limit=limit, out=str(out), progress=False,
                     overrides={"yolov5": {"weights": str(root / "weights" / "yolov5n.pt"), "device": device}},
                     background_scoring=scoring)  # fmt: skip


def timed_run(cfg: Any) -> tuple[Any, float]:
    from vcmbench.run import run

    t = time.perf_counter()
    report = run(cfg, log=lambda _msg: None)
    return report, time.perf_counter() - t


def maps(report: Any) -> dict[str, float]:
    return {f"{r['codec']}@{r['quality']}": float(r["value"]) for r in report.rows if r["metric"] == "map"}


def job_seconds(out: Path) -> float:
    """Sum of the encode, decode and inference seconds stored in an output folder."""
    import sqlite3

    with sqlite3.connect(out / "vcmbench.db") as conn:
        enc = conn.execute("SELECT COALESCE(SUM(encode_s), 0) + COALESCE(SUM(decode_s), 0) FROM encodes").fetchone()[0]
        inf = conn.execute("SELECT COALESCE(SUM(infer_s), 0) FROM predictions").fetchone()[0]
    return float(enc + inf)


def bare_forward_s(device: str, limit: int | None) -> float:
    """The model's own forward passes over the run's inputs (coco-mini, letterboxed as the task does), batch 1."""
    import torch

    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.media.image import read_rgb
    from vcmbench.tasks.yolov5 import load_yolov5_checkpoint

    root = shared()
    task = build(CardSet().get("task", "yolov5").with_settings(weights=str(root / "weights" / "yolov5n.pt"), device=device))
    task.load()  # sets the input size the letterbox uses
    model = load_yolov5_checkpoint(task.weights_path(), torch.device(device))
    paths = sorted((root / "data" / "coco-mini" / "val2017").glob("*.jpg"))[:limit]
    inputs = []
    for p in paths:
        boxed, _ = task.preprocess(read_rgb(p, p.stem))
        inputs.append(torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1)[None])).to(device).float() / 255)
    total = 0.0
    cuda = device.startswith("cuda")
    # the task's own CUDA settings (float32 convolutions, no TF32, fixed algorithms)
    flags = torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False)
    with torch.inference_mode(), flags:
        model(inputs[0])  # warm-up
        for x in inputs:
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            total += time.perf_counter() - t
    return total


def check_yolo(out: Path, device: str, smoke: bool) -> None:
    limit = 3 if smoke else None
    cpu, _ = timed_run(yolo_grid(out / "yolo-cpu", "cpu", limit, "off"))
    dev, wall_off = timed_run(yolo_grid(out / f"yolo-{device}-off", device, limit, "off"))
    bg, wall_on = timed_run(yolo_grid(out / f"yolo-{device}-on", device, limit, "on"))
    a, b = maps(cpu), maps(dev)
    diff = max(abs(a[k] - b[k]) for k in a)
    images = sum(r["n_items"] for r in dev.rows if r["metric"] == "map")
    forward = bare_forward_s(device, limit) * len(a)  # every unit's images go through the model once
    infer_stage = dev.stage_seconds["infer"]
    result(out, "yolo", {
        "device": device, "smoke": smoke, "map_cpu": a, "map_device": b, "max_map_diff": round(diff, 5),
        "map_ok": diff <= 0.002, "images_inferred": images, "infer_stage_s": round(infer_stage, 2),
        "bare_forward_s": round(forward, 2), "gpu_busy": round(forward / infer_stage, 3),
        "busy_ok": forward / infer_stage >= 0.8,
        "overhead_ratio_scoring_off": round(wall_off / job_seconds(out / f"yolo-{device}-off"), 3),
        "overhead_ratio_scoring_on": round(wall_on / job_seconds(out / f"yolo-{device}-on"), 3),
        "wall_off_s": round(wall_off, 1), "wall_on_s": round(wall_on, 1),
    })  # fmt: skip


# ---- learned codecs: cross-process, cross-device decode --------------------------------------------
def learned_worker(mode: str, device: str, folder: Path, codecs: list[str], crop: int, images: list[Path]) -> None:
    """One process's side: ``encode`` writes bitstreams and this process's decodes, ``decode`` decodes them."""
    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.codecs.base import Bitstream
    from vcmbench.codecs.learned import unpack_bitstream
    from vcmbench.media.image import read_rgb

    for name in codecs:
        card = CardSet().get("codec", name)
        codec = build(card.with_settings(device=device))
        q = min(card.qualities)
        if mode == "encode":
            for i, path in enumerate(images):
                image = read_rgb(path, path.stem)[:crop, :crop]
                bs = codec.encode(np.ascontiguousarray(image), q)
                (folder / f"{name}-{i}.bin").write_bytes(bs.data)
                np.save(folder / f"{name}-{i}.ref.npy", codec.decode(bs))
        else:
            for f in sorted(folder.glob(f"{name}-*.bin")):
                data = f.read_bytes()
                u = unpack_bitstream(data)
                try:
                    img = codec.decode(Bitstream(data, width=u.width, height=u.height))
                except Exception as exc:  # a decoder that loses sync: reported, not fatal
                    (folder / f"{f.stem}.{device}.err").write_text(str(exc))
                    continue
                np.save(folder / f"{f.stem}.{device}.npy", img)


def spawn(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)}
    proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"worker {args[:2]} failed:\n{proc.stderr[-3000:]}")


def check_learned(out: Path, device: str, smoke: bool) -> None:
    folder = out / "learned"
    folder.mkdir(parents=True, exist_ok=True)
    codecs = ["lic"] if smoke else list(LEARNED)
    images = sorted((shared() / "data" / "coco-mini" / "val2017").glob("*.jpg"))[: 1 if smoke else 4]
    crop = "64" if smoke else "256"
    spawn("learned-worker", "encode", device, str(folder), ",".join(codecs), crop, *map(str, images))
    spawn("learned-worker", "decode", device, str(folder), ",".join(codecs), crop)
    spawn("learned-worker", "decode", "cpu", str(folder), ",".join(codecs), crop)
    figures: dict[str, Any] = {"device": device, "smoke": smoke, "images": len(images), "crop": crop}
    for name in codecs:
        for where in dict.fromkeys((device, "cpu")):
            same, errors = 0, []
            for i in range(len(images)):
                ref = np.load(folder / f"{name}-{i}.ref.npy")
                got = folder / f"{name}-{i}.{where}.npy"
                if not got.exists():
                    errors.append(f"image {i}: decode failed")
                    continue
                dec = np.load(got)
                if ref.shape == dec.shape and np.array_equal(ref, dec):
                    same += 1
                else:
                    errors.append(f"image {i}: max diff {np.abs(ref.astype(int) - dec.astype(int)).max()}")
            figures[f"{name}: encoded on {device}, decoded on {where} in another process"] = (
                f"{same}/{len(images)} identical" + (f" ({'; '.join(errors)})" if errors else "")
            )
    result(out, "learned", figures)


# ---- NeRV: a training run on the device ------------------------------------------------------------
def check_nerv(out: Path, device: str, smoke: bool) -> None:
    import torch

    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.codecs.base import Bitstream
    from vcmbench.media.clip import Clip

    frames = 4 if smoke else 8
    t = np.linspace(0, 1, frames)[:, None, None]
    y, x = np.mgrid[0:240, 0:320]
    pattern = (127 + 100 * np.sin(x / 17.0 + 6 * t) * np.cos(y / 23.0))[..., None] * np.array([1.0, 0.8, 0.6])
    clip = Clip(np.clip(pattern, 0, 255).astype(np.uint8), fps=25.0)
    card = CardSet().get("codec", "nerv").with_settings(epochs=2 if smoke else 20, finetune_epochs=1 if smoke else 5,
                                                         progress=False)  # fmt: skip
    codec = build(card.with_settings(device=device))
    t0 = time.perf_counter()
    bs = codec.encode(clip, 1)
    train_s = time.perf_counter() - t0
    a = codec.decode(bs).frames
    b = build(card.with_settings(device="cpu")).decode(Bitstream(bs.data, bs.width, bs.height, bs.frames, bs.meta)).frames
    diff = int(np.abs(a.astype(int) - b.astype(int)).max())
    result(out, "nerv", {
        "device": device, "smoke": smoke, "cuda_available": bool(torch.cuda.is_available()), "frames": frames,
        "bytes": len(bs.data), "psnr_db": bs.meta.get("psnr"), "encode_s": round(train_s, 1),
        "psnr_finite": bool(np.isfinite(bs.meta.get("psnr", float("nan")))),
        f"decode_{device}_vs_cpu_max_diff": diff,
    })  # fmt: skip


def main(argv: list[str]) -> int:
    if argv and argv[0] == "learned-worker":
        mode, device, folder, codecs, crop, *images = argv[1:]
        learned_worker(mode, device, Path(folder), codecs.split(","), int(crop), [Path(p) for p in images])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("check", choices=["yolo", "learned", "nerv"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no CUDA check)")
    args = p.parse_args(argv)
    device = "cpu" if args.smoke else args.device
    {"yolo": check_yolo, "learned": check_learned, "nerv": check_nerv}[args.check](args.out, device, args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
