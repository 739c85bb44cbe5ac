"""Seeded recipe that trains the light Mask R-CNN and Panoptic-DeepLab on the generated ``synth`` dataset.

Both models start from random weights (nothing is downloaded) and train on the CPU on
synth ``train`` (600 images, 320x240), then are scored on synth ``val`` through the
benchmark's task adapters (the code path of ``vcmbench run``) and written to
``weights/synth/`` in float16 with their architecture inside the file:

- ``synth_maskrcnn.pt``: torchvision ``MaskRCNN`` (He et al., ICCV 2017) on a ResNet-18 of
  width 16 with a 64-channel FPN (Lin et al., CVPR 2017), anchors 16..256 px, at the
  native 320x240; SGD (momentum 0.9, lr 0.02, 200 warm-up iterations, cosine decay),
  batch 4, 8 epochs, horizontal flips; 600 sampled anchors / 128 RoIs per image in training
  (torchvision: 2000 / 512). Labels are the COCO category ids of the synth instances JSON
  (1..8; 0 = background), so predictions need no label map.
- ``synth_panoptic.pt``: :class:`~vcmbench.models.panoptic_deeplab.PanopticDeepLab`
  (Cheng et al., CVPR 2020) on a ResNet-18 of width 16 with the DeepLab stem and a dilated
  last stage (output stride 16), narrow ASPP (64) and decoders (32); targets as in the
  paper: semantic labels (void ignored, pixels of instances under 1024 px weighted 3), a
  Gaussian centre heatmap per thing (sigma 8 px here; 10 in the paper at 1024x2048) and
  offsets from each thing pixel to its centre of mass; losses as in detectron2's
  Cityscapes recipe: cross-entropy over the hardest 20 % of pixels, MSE on the heatmap
  (x200), L1 on offsets (x0.01). Adam (lr 1e-3, poly 0.9), batch 8, 1500 iterations,
  horizontal flips and random scaling (0.75-1.25) with 192x192 crops.

Both forward passes run under bfloat16 autocast on the CPU (1.4-1.6x faster where the CPU
has AVX512-BF16; weights, optimiser and losses stay float32). One torch thread by default:
on a 2-core machine shared with other jobs two threads ran 4-10x slower per iteration.

Run: ``python -m vcmbench.train.synth_tasks maskrcnn panoptic [--update-cards]``
(``--quick`` trains a few iterations only, to check the pipeline). Every random draw is
seeded (``torch.manual_seed``, a PCG64 generator per recipe); CPU results depend on the
number of threads, which is recorded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..adapters import build
from ..cards import builtin_cards_root
from ..models.mask_rcnn import LightMaskRCNNConfig
from ..models.panoptic_deeplab import PanopticDeepLabConfig

__all__ = ["MaskRCNNRecipe", "PanopticRecipe", "main", "panoptic_targets", "train_maskrcnn", "train_panoptic"]

LIGHT_PANOPTIC = PanopticDeepLabConfig(
    num_classes=14, depth=18, stem="deeplab", stem_channels=32, width=16, res5_dilation=2, res5_multi_grid=(1, 2),
    aspp_dilations=(3, 6, 9), aspp_dropout=0.1, aspp_pool_kernel=None, project_channels=(16, 32),
    sem_aspp_channels=64, sem_decoder_channels=32, sem_head_channels=32, ins_aspp_channels=64,
    ins_decoder_channels=32, ins_head_channels=32,
)  # fmt: skip


@dataclass(frozen=True)
class MaskRCNNRecipe:
    name: str = "synth_maskrcnn"
    seed: int = 0
    epochs: int = 8
    batch: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 200
    #: forward passes under bfloat16 autocast (1.4x faster on a CPU with AVX512-BF16); losses and weights fp32
    bf16: bool = True
    #: fewer sampled anchors / RoIs than torchvision's defaults (256 / 512): CPU time
    train_kwargs: dict[str, int] = field(default_factory=lambda: {
        "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300, "box_batch_size_per_image": 128})
    config: LightMaskRCNNConfig = field(
        default_factory=lambda: LightMaskRCNNConfig(num_classes=9, min_size=240, max_size=320)
    )


@dataclass(frozen=True)
class PanopticRecipe:
    name: str = "synth_panoptic"
    seed: int = 0
    iters: int = 1500
    batch: int = 8
    lr: float = 1e-3
    crop: int = 192
    scale: tuple[float, float] = (0.75, 1.25)
    sigma: float = 8.0
    small_area: int = 1024
    small_weight: float = 3.0
    top_k_pixels: float = 0.2
    center_weight: float = 200.0
    offset_weight: float = 0.01
    #: forward passes under bfloat16 autocast (1.6x faster on a CPU with AVX512-BF16); losses and weights fp32
    bf16: bool = True
    config: PanopticDeepLabConfig = LIGHT_PANOPTIC


def _seed(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _synth(split: str) -> Any:
    """The built-in ``synth`` dataset card's split, generated if needed."""
    from ..cards import CardSet

    ds = build(CardSet().get("dataset", "synth").with_settings(split=split))
    ds.check()
    return ds


# ---- Mask R-CNN -----------------------------------------------------------------------------------------
def _instance_samples(ds: Any) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    from pycocotools import mask as mask_utils

    gt = ds.coco_gt()
    out = []
    for item in ds.items():
        image = ds.load_image(item)
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[ds.image_id(item.id)])) if not a.get("iscrowd", 0)]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)  # fmt: skip
        masks = np.stack([mask_utils.decode(a["segmentation"]) for a in anns]) if anns else np.zeros((0, *image.shape[:2]), np.uint8)
        labels = np.array([a["category_id"] for a in anns], np.int64)
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        out.append((image, {"boxes": boxes[keep], "labels": labels[keep], "masks": masks[keep]}))
    return out


def _flip_instance(image: np.ndarray, t: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    w = image.shape[1]
    boxes = t["boxes"].copy()
    boxes[:, [0, 2]] = w - t["boxes"][:, [2, 0]]
    return image[:, ::-1], {"boxes": boxes, "labels": t["labels"], "masks": t["masks"][:, :, ::-1]}


def train_maskrcnn(recipe: MaskRCNNRecipe, log: Callable[[str], None] = print, max_iters: int | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the light Mask R-CNN; returns (model in eval mode, training record)."""
    from ..models.mask_rcnn import build_light_maskrcnn

    rng = _seed(recipe.seed)
    samples = _instance_samples(_synth("train"))
    model = build_light_maskrcnn(recipe.config, **recipe.train_kwargs)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    per_epoch = math.ceil(len(samples) / recipe.batch)
    total = per_epoch * recipe.epochs if max_iters is None else max_iters
    t0, c0 = time.perf_counter(), time.process_time()
    it = 0
    history = []
    while it < total:
        order = rng.permutation(len(samples))
        for s in range(0, len(order), recipe.batch):
            if it >= total:
                break
            lr = _lr_cosine(it, total, recipe.lr, recipe.warmup_iters)
            for g in opt.param_groups:
                g["lr"] = lr
            images, targets = [], []
            for j in order[s : s + recipe.batch]:
                img, t = samples[j]
                if rng.random() < 0.5:
                    img, t = _flip_instance(img, t)
                images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255)
                targets.append({"boxes": torch.from_numpy(np.ascontiguousarray(t["boxes"])),
                                "labels": torch.from_numpy(t["labels"]),
                                "masks": torch.from_numpy(np.ascontiguousarray(t["masks"]))})  # fmt: skip
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
                losses = model(images, targets)
            losses = {k: v.float() for k, v in losses.items()}
            loss = sum(losses.values())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            it += 1
            if it % 50 == 0 or it == total:
                parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
                history.append({"iter": it, "loss": round(float(loss), 4), **parts})
                log(f"maskrcnn iter {it}/{total} lr {lr:.4f} loss {float(loss):.3f} {parts} "
                    f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    model.eval()
    return model, {"iters": total, "seconds": round(time.perf_counter() - t0, 1),
                   "cpu_seconds": round(time.process_time() - c0, 1), "history": history}


def _lr_cosine(it: int, total: int, base: float, warmup: int) -> float:
    if it < warmup:
        return base * (0.001 + 0.999 * it / warmup)
    return base * 0.5 * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup)))


def save_light_maskrcnn(path: Path, model: torch.nn.Module, config: LightMaskRCNNConfig, meta: dict[str, Any]) -> None:
    state = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    torch.save({"format": "vcmbench.light_maskrcnn", "config": config.to_dict(), "meta": meta, "state_dict": state},
               str(path))  # fmt: skip


# ---- Panoptic-DeepLab -------------------------------------------------------------------------------
def panoptic_targets(
    ids: np.ndarray, segments: Sequence[dict[str, Any]], class_of: dict[int, int], thing_ids: set[int],
    sigma: float, small_area: int, small_weight: float, ignore: int = 255,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Panoptic-DeepLab training targets of one image (Cheng et al. 2020, Sec. 3.3).

    ``semantic`` (H, W) class index or ``ignore`` on void; ``sem_weight`` 1, or
    ``small_weight`` on instances smaller than ``small_area``; ``center`` (H, W): max over
    things of a Gaussian (``sigma``) at the centre of mass; ``offset`` (2, H, W): (dy, dx)
    from each thing pixel to its centre; ``offset_weight`` 1 on thing pixels.
    """
    h, w = ids.shape
    semantic = np.full((h, w), ignore, np.int64)
    sem_weight = np.ones((h, w), np.float32)
    center = np.zeros((h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    offset_weight = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = int(3 * sigma + 1)
    g = np.exp(-((np.arange(-r, r + 1)[:, None] ** 2) + (np.arange(-r, r + 1)[None, :] ** 2)) / (2 * sigma**2))
    for s in segments:
        m = ids == s["id"]
        if not m.any():
            continue
        semantic[m] = class_of[s["category_id"]]
        if s["category_id"] not in thing_ids or s.get("iscrowd", 0):
            continue
        if m.sum() < small_area:
            sem_weight[m] = small_weight
        cy, cx = float(yy[m].mean()), float(xx[m].mean())
        iy, ix = int(round(cy)), int(round(cx))
        y0, y1, x0, x1 = max(0, iy - r), min(h, iy + r + 1), max(0, ix - r), min(w, ix + r + 1)
        patch = g[y0 - (iy - r) : y1 - (iy - r), x0 - (ix - r) : x1 - (ix - r)]
        center[y0:y1, x0:x1] = np.maximum(center[y0:y1, x0:x1], patch)
        offset[0][m] = cy - yy[m]
        offset[1][m] = cx - xx[m]
        offset_weight[m] = 1.0
    return {"semantic": semantic, "sem_weight": sem_weight, "center": center, "offset": offset,
            "offset_weight": offset_weight}  # fmt: skip


def _panoptic_samples(ds: Any, recipe: PanopticRecipe) -> tuple[list[tuple[np.ndarray, dict[str, np.ndarray]]], list[int]]:
    from ..metrics.panoptic import PanopticGroundTruth

    gt = PanopticGroundTruth(ds.panoptic_json, ds.panoptic_dir)
    cat_ids = [int(c["id"]) for c in gt.categories]
    class_of = {c: i for i, c in enumerate(cat_ids)}
    thing_ids = {int(c["id"]) for c in gt.categories if c.get("isthing")}
    out = []
    for item in ds.items():
        ids, segs = gt.load(ds.image_id(item.id))
        t = panoptic_targets(ids, segs, class_of, thing_ids, recipe.sigma, recipe.small_area, recipe.small_weight)
        out.append((ds.load_image(item), t))
    return out, [class_of[c] for c in sorted(thing_ids)]


def _augment_panoptic(image: np.ndarray, t: dict[str, np.ndarray], rng: np.random.Generator, recipe: PanopticRecipe) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Flip, scale, crop/pad to ``crop`` x ``crop`` (targets rescaled consistently, offsets with the scale)."""
    import cv2

    if rng.random() < 0.5:
        image = image[:, ::-1]
        t = {k: (v[..., ::-1] if k != "offset" else v[..., ::-1] * np.array([1, -1], np.float32)[:, None, None])
             for k, v in t.items()}  # fmt: skip
    s = float(rng.uniform(*recipe.scale))
    h, w = image.shape[:2]
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    image = cv2.resize(np.ascontiguousarray(image), (nw, nh), interpolation=cv2.INTER_LINEAR)
    t2 = {}
    for k, v in t.items():
        interp = cv2.INTER_NEAREST if k in ("semantic", "sem_weight", "offset_weight") else cv2.INTER_LINEAR
        if v.ndim == 3:
            t2[k] = np.stack([cv2.resize(np.ascontiguousarray(c), (nw, nh), interpolation=interp) for c in v]) * s
        else:
            t2[k] = cv2.resize(np.ascontiguousarray(v).astype(np.float32 if k != "semantic" else np.uint8), (nw, nh),
                               interpolation=interp).astype(v.dtype)  # fmt: skip
    c = recipe.crop
    y0 = int(rng.integers(0, max(1, nh - c + 1)))
    x0 = int(rng.integers(0, max(1, nw - c + 1)))
    img = np.zeros((c, c, 3), np.uint8)
    img[: min(c, nh - y0), : min(c, nw - x0)] = image[y0 : y0 + c, x0 : x0 + c]
    fill = {"semantic": 255, "sem_weight": 1.0, "center": 0.0, "offset_weight": 0.0}
    out = {}
    for k, v in t2.items():
        if v.ndim == 3:
            o = np.zeros((v.shape[0], c, c), v.dtype)
            o[:, : min(c, nh - y0), : min(c, nw - x0)] = v[:, y0 : y0 + c, x0 : x0 + c]
        else:
            o = np.full((c, c), fill[k], v.dtype)
            o[: min(c, nh - y0), : min(c, nw - x0)] = v[y0 : y0 + c, x0 : x0 + c]
        out[k] = o
    return img, out


def panoptic_losses(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor], recipe: PanopticRecipe) -> dict[str, torch.Tensor]:
    """The three Panoptic-DeepLab losses at full resolution (predictions upsampled x4)."""
    sem = F.interpolate(out["semantic"], scale_factor=4, mode="bilinear", align_corners=False)
    ctr = F.interpolate(out["center"], scale_factor=4, mode="bilinear", align_corners=False)[:, 0]
    off = F.interpolate(out["offset"], scale_factor=4, mode="bilinear", align_corners=False) * 4
    ce = F.cross_entropy(sem, tgt["semantic"], ignore_index=255, reduction="none") * tgt["sem_weight"]
    ce = ce.flatten()
    k = max(1, int(recipe.top_k_pixels * ce.numel()))
    loss_sem = torch.topk(ce, k).values.mean()
    loss_ctr = ((ctr - tgt["center"]) ** 2).mean() * recipe.center_weight
    ow = tgt["offset_weight"]
    loss_off = ((off - tgt["offset"]).abs().sum(1) * ow).sum() / ow.sum().clamp(min=1) * recipe.offset_weight
    return {"semantic": loss_sem, "center": loss_ctr, "offset": loss_off}


def train_panoptic(recipe: PanopticRecipe, log: Callable[[str], None] = print, max_iters: int | None = None) -> tuple[torch.nn.Module, list[int], dict[str, Any]]:
    """Train the light Panoptic-DeepLab; returns (model in eval mode, thing classes, training record)."""
    from ..models.panoptic_deeplab import PanopticDeepLab

    rng = _seed(recipe.seed)
    samples, things = _panoptic_samples(_synth("train"), recipe)
    model = PanopticDeepLab(recipe.config)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    total = recipe.iters if max_iters is None else max_iters
    t0, c0 = time.perf_counter(), time.process_time()
    history = []
    order: list[int] = []
    for it in range(1, total + 1):
        lr = recipe.lr * (1 - (it - 1) / total) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        if len(order) < recipe.batch:
            order += rng.permutation(len(samples)).tolist()
        batch = [_augment_panoptic(*samples[order.pop()], rng, recipe) for _ in range(recipe.batch)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).permute(0, 3, 1, 2).float()
        tgt = {k: torch.from_numpy(np.stack([b[1][k] for b in batch])) for k in batch[0][1]}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16):
            out = model(model.normalize(x))
        losses = panoptic_losses({k: v.float() for k, v in out.items()}, tgt, recipe)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 50 == 0 or it == total:
            parts = {k: round(float(v.detach()), 4) for k, v in losses.items()}
            history.append({"iter": it, "loss": round(float(loss), 4), **parts})
            log(f"panoptic iter {it}/{total} lr {lr:.5f} loss {float(loss):.3f} {parts} ({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return model, things, {"iters": total, "seconds": round(time.perf_counter() - t0, 1),
                           "cpu_seconds": round(time.process_time() - c0, 1), "history": history}


# ---- driver -------------------------------------------------------------------------------------------
def evaluate_card(card_name: str, weights: Path, log: Callable[[str], None] = print) -> dict[str, float]:
    """Score weights on synth val through the task adapter (as ``vcmbench run`` does, uncompressed)."""
    from ..cards import CardSet

    cards = CardSet()
    task = build(cards.get("task", card_name).with_settings(weights=str(weights), sha256=None))
    ds = build(cards.get("dataset", "synth"))
    ds.check()
    items = ds.items()
    preds: dict[str, Any] = {}
    for i in range(0, len(items), 8):
        chunk = items[i : i + 8]
        for it, p in zip(chunk, task.predict([ds.load_image(x) for x in chunk]), strict=True):
            preds[it.id] = p
    metrics = task.evaluate(preds, ds)
    log(f"{card_name} on synth val ({len(items)} images): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def _update_card_sha(card: Path, sha: str) -> None:
    import re

    text = card.read_text()
    new, n = re.subn(r"(?m)^(\s*sha256:\s*)\S+", lambda m: m.group(1) + sha, text, count=1)
    if n != 1:
        raise ValueError(f"{card}: no `sha256:` line to update")
    card.write_text(new)


def main(argv: Sequence[str] | None = None) -> int:
    from ..media.hashing import file_sha256

    p = argparse.ArgumentParser(prog="python -m vcmbench.train.synth_tasks", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", choices=["maskrcnn", "panoptic"])
    p.add_argument("--out", default=None, help="output folder [<repo>/weights/synth]")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads [1: on a shared 2-core machine two threads ran 4-10x slower]")
    p.add_argument("--quick", action="store_true", help="a few iterations only (checks the pipeline)")
    p.add_argument("--iters", type=int, default=None, help="stop after this many iterations (trial runs)")
    p.add_argument("--update-cards", action="store_true", help="write the new sha256 into tasks/<name>.yaml")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repo = builtin_cards_root()
    out = Path(args.out) if args.out else repo / "weights" / "synth"
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_tasks_log.json"
    env = {"torch": str(torch.__version__), "threads": torch.get_num_threads(), "machine": f"{platform.machine()} "
           f"{os.cpu_count()} cpus", "python": sys.version.split()[0]}  # fmt: skip
    for name in args.models:
        if name == "maskrcnn":
            recipe: Any = MaskRCNNRecipe()
            model, info = train_maskrcnn(recipe, max_iters=20 if args.quick else args.iters)
            dest = out / f"{recipe.name}.pt"
            save_light_maskrcnn(dest, model, recipe.config, {"recipe": _jsonable(asdict(recipe)), **info, "env": env})
        else:
            recipe = PanopticRecipe()
            model, things, info = train_panoptic(recipe, max_iters=20 if args.quick else args.iters)
            dest = out / f"{recipe.name}.pt"
            from ..tasks.panoptic_deeplab import save_vcmbench_panoptic

            save_vcmbench_panoptic(dest, model, things, {"recipe": _jsonable(asdict(recipe)), **info, "env": env})
        sha = file_sha256(dest)
        print(f"{recipe.name}: {dest} ({dest.stat().st_size / 1e6:.2f} MB) sha256 {sha}, trained in {info['seconds'] / 60:.1f} min")
        metrics = evaluate_card(recipe.name, dest)
        card = repo / "tasks" / f"{recipe.name}.yaml"
        if args.update_cards and card.is_file():
            _update_card_sha(card, sha)
            print(f"updated sha256 in {card}")
        # read back just before writing: another training may have finished meanwhile
        record: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
        record[recipe.name] = {"recipe": _jsonable(asdict(recipe)), "train_seconds": info["seconds"],
                               "train_cpu_seconds": info.get("cpu_seconds"), "iters": info["iters"],
                               "bytes": dest.stat().st_size, "sha256": sha, "val_metrics": metrics, "env": env,
                               "quick": args.quick, "iters_override": args.iters}  # fmt: skip
        log_path.write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


if __name__ == "__main__":
    sys.exit(main())
