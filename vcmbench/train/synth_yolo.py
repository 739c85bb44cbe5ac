"""The seeded recipe that trains the synth task models (a detector and an instance-segmentation model).

Models are YOLOv8 networks built from the Ultralytics model yaml with a narrower
width/depth multiplier than YOLOv8n, trained from scratch (no pretrained weights, nothing
downloaded) on the synth ``train`` split at 320 px on the CPU:

- Jocher, Chaurasia, Qiu, "Ultralytics YOLOv8", 2023, https://github.com/ultralytics/ultralytics
  (architecture, trainer, losses, augmentation);
- instance masks with YOLACT-style prototypes (Bolya et al., "YOLACT: Real-time Instance
  Segmentation", ICCV 2019), as in YOLOv8-seg.

Ground truth is converted from the COCO instances JSON (the official format, read back)
to Ultralytics' txt labels: boxes for the detector, mask outlines (``cv2.findContours``,
parts joined as Ultralytics' own COCO converter does) for the segmentation model.
Ultralytics runs offline (``YOLO_OFFLINE=1``, a private ``YOLO_CONFIG_DIR`` holding
matplotlib's DejaVuSans as ``Arial.ttf`` so no font is fetched), with AMP and its AMP
check off, and writes its ``runs/`` folder into a temporary directory.

After training, the best checkpoint is copied to ``weights/synth/<name>.pt`` (float16,
optimizer removed, temporary paths removed from its ``train_args``) and scored on synth
``val`` through the benchmark's own task adapter, the code path ``vcmbench run`` uses.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters import build
from ..cards import builtin_cards_root
from ..synth.generate import SynthConfig, config_from_settings, ensure_split
from ..synth.scene import THINGS

__all__ = ["RECIPES", "Recipe", "offline_ultralytics_env", "prepare_yolo_dataset", "train_synth"]


@dataclass(frozen=True)
class Recipe:
    """One model: architecture scaling and training hyper-parameters (the rest are Ultralytics defaults)."""

    name: str  # task card name and weights file stem
    task: str  # "detect" or "segment"
    base_yaml: str  # Ultralytics model yaml the architecture comes from
    depth: float
    width: float
    max_channels: int
    epochs: int
    imgsz: int = 320
    batch: int = 16
    seed: int = 0
    hyp: Mapping[str, Any] = field(default_factory=dict)


_HYP = {
    "optimizer": "AdamW", "lr0": 0.002, "nbs": 16, "cos_lr": False, "close_mosaic": 5, "warmup_epochs": 2,
    "mosaic": 1.0, "scale": 0.5, "translate": 0.1, "fliplr": 0.5, "hsv_h": 0.015,
}  # fmt: skip

RECIPES: dict[str, Recipe] = {
    # a smaller scale augmentation (0.8-1.2x instead of 0.5-1.5x) keeps the 2-3 px texture cells that tell
    # crate, panel and kite apart above the sampling limit; with 0.5 the detector stalled at mAP50 0.75
    "det": Recipe("synth_det", "detect", "yolov8.yaml", depth=0.33, width=0.125, max_channels=1024, epochs=40,
                  hyp={**_HYP, "scale": 0.2, "close_mosaic": 10}),
    "seg": Recipe("synth_seg", "segment", "yolov8-seg.yaml", depth=0.33, width=0.125, max_channels=1024, epochs=30,
                  hyp=_HYP),
}  # fmt: skip


def offline_ultralytics_env(workdir: Path) -> dict[str, str]:
    """Environment that keeps Ultralytics offline; must be applied before ``ultralytics`` is imported."""
    cfg = workdir / "yolo-config"
    cfg.mkdir(parents=True, exist_ok=True)
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    if not (cfg / "Arial.ttf").exists():
        shutil.copy(font, cfg / "Arial.ttf")
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(cfg), "YOLO_VERBOSE": os.environ.get("YOLO_VERBOSE", "True")}


# ---- labels ---------------------------------------------------------------------------------------------
def _polygon(mask: np.ndarray) -> list[float]:
    """Outline of a (possibly multi-part) mask as one polygon, in pixels (Ultralytics' merge of parts)."""
    import cv2
    from ultralytics.data.converter import merge_multi_segment

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    parts = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
    if not parts:
        return []
    if len(parts) == 1:
        return parts[0]
    merged = merge_multi_segment(parts)
    return np.concatenate(merged, axis=0).reshape(-1).astype(float).tolist()


def prepare_yolo_dataset(cfg: SynthConfig, dest: Path, segments: bool, cache: Path | None = None) -> Path:
    """An Ultralytics dataset folder (``images/``, ``labels/``, ``data.yaml``) made from the synth COCO files."""
    from pycocotools import mask as mask_utils

    names = {t.id - 1: t.name for t in THINGS}
    for split in ("train", "val"):
        root = ensure_split(cfg, split, cache)
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        img_dir = dest / "images" / split
        lbl_dir = dest / "labels" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        lbl_dir.mkdir(parents=True, exist_ok=True)
        by_image: dict[int, list[dict[str, Any]]] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        for im in data["images"]:
            w, h = im["width"], im["height"]
            link = img_dir / im["file_name"]
            if not link.exists():
                os.symlink(root / split / im["file_name"], link)
            lines = []
            for a in by_image.get(im["id"], []):
                cls = a["category_id"] - 1
                if segments:
                    poly = _polygon(mask_utils.decode(a["segmentation"]))
                    if len(poly) < 6:
                        continue
                    xy = " ".join(f"{v / (w if k % 2 == 0 else h):.6f}" for k, v in enumerate(poly))
                    lines.append(f"{cls} {xy}\n")
                else:
                    x, y, bw, bh = a["bbox"]
                    lines.append(f"{cls} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}\n")
            (lbl_dir / (Path(im["file_name"]).stem + ".txt")).write_text("".join(lines))
    data_yaml = dest / "data.yaml"
    import yaml

    data_yaml.write_text(yaml.safe_dump({"path": str(dest), "train": "images/train", "val": "images/val",
                                         "names": names}, sort_keys=False))  # fmt: skip
    return data_yaml


def model_yaml(recipe: Recipe, nc: int, dest: Path) -> Path:
    """The recipe's architecture: the Ultralytics yaml with one custom scale ``n`` and ``nc`` classes."""
    import ultralytics
    import yaml

    src = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / recipe.base_yaml
    d = yaml.safe_load(src.read_text())
    d["nc"] = nc
    d["scales"] = {"n": [recipe.depth, recipe.width, recipe.max_channels]}
    # the scale letter is read from the file name (yolov8<scale>...)
    path = dest / f"yolov8n-{recipe.name.replace('_', '-')}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


# ---- export ---------------------------------------------------------------------------------------------
def export_checkpoint(src: Path, dest: Path) -> str:
    """Copy an Ultralytics checkpoint for committing: float16 model (EMA), no optimizer, no temp paths.

    ``src`` is unpickled by the restricted unpickler (:mod:`vcmbench.models.safe_pickle`): a file holding
    anything but tensors, torch/numpy data and Ultralytics model classes is refused, not run.
    """
    import torch

    from ..models.safe_pickle import load_checkpoint

    ckpt = load_checkpoint(src, "ultralytics")
    model = ckpt.get("ema") or ckpt["model"]
    args = dict(ckpt.get("train_args") or {})
    for key in ("data", "project", "name", "save_dir", "model", "cfg"):
        if isinstance(args.get(key), str) and os.path.isabs(args[key]):
            args[key] = Path(args[key]).name
    out = {
        "model": model.half(), "ema": None, "updates": None, "optimizer": None, "epoch": -1,
        "train_args": args, "train_metrics": ckpt.get("train_metrics"), "version": ckpt.get("version"),
        "license": ckpt.get("license"), "docs": ckpt.get("docs"),
    }  # fmt: skip
    for p in out["model"].parameters():
        p.requires_grad = False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".pt.part")
    torch.save(out, tmp)
    os.replace(tmp, dest)
    from ..media.hashing import file_sha256

    return file_sha256(dest)


def update_card_sha(card: Path, sha256: str) -> None:
    """Rewrite the ``sha256:`` setting of a task card in place (keeps every other line)."""
    text = card.read_text()
    new, n = re.subn(r"(?m)^(\s*sha256:\s*)\S+", rf"\g<1>{sha256}", text, count=1)
    if n != 1:
        raise ValueError(f"{card}: no `sha256:` line to update")
    card.write_text(new)


# ---- the recipe ---------------------------------------------------------------------------------------------
def train_one(
    recipe: Recipe, cfg: SynthConfig, workdir: Path, device: str = "cpu", workers: int = 2,
    epochs: int | None = None, log: Callable[[str], None] = print,
) -> tuple[Path, float]:  # fmt: skip
    """Train one recipe; returns (best checkpoint, wall seconds)."""
    from ultralytics import YOLO
    from ultralytics.utils import SETTINGS

    # integrations off (Ray Tune, TensorBoard, W&B, ...): they are not wanted and some try to log or connect;
    # SETTINGS lives in the private YOLO_CONFIG_DIR set by offline_ultralytics_env
    SETTINGS.update({k: False for k in ("raytune", "tensorboard", "wandb", "mlflow", "clearml", "comet", "dvc",
                                        "neptune", "hub") if k in SETTINGS})  # fmt: skip
    data_dir = workdir / f"data-{recipe.task}"
    data_yaml = prepare_yolo_dataset(cfg, data_dir, segments=recipe.task == "segment")
    arch = model_yaml(recipe, len(THINGS), workdir)
    model = YOLO(str(arch), task=recipe.task)
    t0 = time.perf_counter()
    model.train(
        data=str(data_yaml), epochs=epochs or recipe.epochs, imgsz=recipe.imgsz, batch=recipe.batch,
        device=device, workers=workers, seed=recipe.seed, deterministic=True, amp=False, pretrained=False,
        project=str(workdir / "runs"), name=recipe.name, exist_ok=True, plots=False, cache="ram", patience=0,
        verbose=True, **dict(recipe.hyp),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    best = workdir / "runs" / recipe.name / "weights" / "best.pt"
    if not best.is_file():
        raise RuntimeError(f"training {recipe.name} finished without {best}")
    log(f"{recipe.name}: trained in {seconds / 60:.1f} min")
    return best, seconds


def evaluate_weights(card_name: str, weights: Path, sha256: str, log: Callable[[str], None] = print) -> dict[str, float]:
    """Score committed weights on synth val through the task adapter ``vcmbench run`` uses."""
    from ..cards import CardSet

    cards = CardSet()
    task_card = cards.get("task", card_name).with_settings(weights=str(weights), sha256=sha256)
    task = build(task_card)
    ds = build(cards.get("dataset", "synth"))
    ds.check()
    items = ds.items()
    preds: dict[str, Any] = {}
    for i in range(0, len(items), task.batch_size):
        chunk = items[i : i + task.batch_size]
        for it, p in zip(chunk, task.predict([ds.load_image(x) for x in chunk]), strict=True):
            preds[it.id] = p
    metrics = task.evaluate(preds, ds)
    log(f"{card_name} on synth val ({len(items)} images): " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def _environment(device: str) -> dict[str, Any]:
    import torch
    import ultralytics

    return {
        "ultralytics": ultralytics.__version__, "torch": torch.__version__, "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }  # fmt: skip


def finish_model(
    recipe: Recipe, best: Path, seconds: float, out_dir: Path, epochs: int | None = None, device: str = "cpu",
    update_cards: bool = False, note: str | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Export a trained checkpoint to ``<out_dir>/<name>.pt``, score it on synth val, record it in
    ``<out_dir>/ultralytics_train_log.json`` (and, with ``update_cards``, in its task card)."""
    repo = builtin_cards_root()
    cfg = synth_config_from_card()
    dest = out_dir / f"{recipe.name}.pt"
    sha = export_checkpoint(best, dest)
    metrics = evaluate_weights(recipe.name, dest, sha, log)
    log_path = out_dir / "ultralytics_train_log.json"
    summary: dict[str, Any] = json.loads(log_path.read_text()) if log_path.is_file() else {}
    summary["synth_config"] = cfg.as_dict()
    summary["synth_key"] = cfg.key()
    entry = {
        "command": f"vcmbench train-synth --model {next(k for k, r in RECIPES.items() if r.name == recipe.name)}"
        + (f" --epochs {epochs}" if epochs else ""),
        "recipe": {**asdict(recipe), "epochs": epochs or recipe.epochs, "hyp": dict(recipe.hyp)},
        "train_seconds": round(seconds, 1), "environment": _environment(device),
        "weights": str(dest.relative_to(repo)) if dest.is_relative_to(repo) else str(dest),
        "bytes": dest.stat().st_size, "sha256": sha, "val_metrics": metrics,
    }  # fmt: skip
    if note:
        entry["note"] = note
    summary.setdefault("models", {})[recipe.name] = entry
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"{recipe.name}: {dest} ({dest.stat().st_size / 1e6:.2f} MB) sha256 {sha}")
    card = repo / "tasks" / f"{recipe.name}.yaml"
    if update_cards and card.is_file():
        update_card_sha(card, sha)
        log(f"{recipe.name}: updated sha256 in {card}")
    elif card.is_file():
        log(f"{recipe.name}: set `sha256: {sha}` in {card} (or rerun with --update-cards)")
    return entry


def train_synth(
    models: Sequence[str] = ("det", "seg"),
    out_dir: Path | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    workers: int = 2,
    update_cards: bool = False,
    keep: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the synth models, export them to ``out_dir`` (default ``<repo>/weights/synth``), score them.

    Returns the entries written to ``<out_dir>/ultralytics_train_log.json`` (recipe, timings,
    sha256, val metrics). ``update_cards`` rewrites ``sha256:`` in ``tasks/<name>.yaml``;
    ``keep`` keeps the Ultralytics run folders there instead of deleting them.
    """
    from ..errors import VcmbenchError

    unknown = set(models) - set(RECIPES)
    if unknown:
        raise VcmbenchError(f"train-synth: unknown model(s) {sorted(unknown)}; choose from {', '.join(RECIPES)}")
    out_dir = out_dir or builtin_cards_root() / "weights" / "synth"
    cfg = synth_config_from_card()
    workdir = Path(tempfile.mkdtemp(prefix="vcmbench-train-synth-")) if keep is None else keep
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(offline_ultralytics_env(workdir))
    t_gen = time.perf_counter()
    for split in ("train", "val"):
        ensure_split(cfg, split, log=log)
    log(f"synth train + val ready in {time.perf_counter() - t_gen:.1f} s")
    done: dict[str, Any] = {}
    try:
        for key in models:
            recipe = RECIPES[key]
            best, seconds = train_one(recipe, cfg, workdir, device, workers, epochs, log)
            done[recipe.name] = finish_model(recipe, best, seconds, out_dir, epochs, device, update_cards, log=log)
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return done


def synth_config_from_card() -> SynthConfig:
    """The generator parameters of the built-in ``datasets/synth.yaml`` card."""
    from ..cards import CardSet

    return config_from_settings(CardSet().get("dataset", "synth").settings)
