"""Training learned image codecs for humans and machines: LIC, Object-ICM, SA-ICM, TL-ICM.

Objectives (R = estimated bits per pixel from the entropy model's likelihoods,
x and x̂ in [0, 1], m a {0, 1} mask broadcast over the colour channels, every MSE
a mean over all pixels):

- ``lic``:    R + λ·255²·MSE(x, x̂) (the CompressAI / TCM recipe: Ballé et al., ICLR
  2018; Liu et al., CVPR 2023);
- ``objicm``: R + λ·255²·MSE(x⊙m, x̂⊙m), m = union of ground-truth object masks
  (Object-ICM, the region-learning baseline SA-ICM compares against);
- ``saicm``:  the same with m = edges of Segment Anything masks (Shindo et al.,
  "Image Coding for Machines with Edge Information Learning Using Segment
  Anything", ICIP 2024);
- ``tlicm``:  task-loss ICM through the YOLOv5 detector used for evaluation, frozen
  (Le et al., "Image Coding for Machines: an End-to-End Learned Approach", ICASSP
  2021; the TL-ICM baseline of Shindo et al., ICIP 2024), with one of two objectives
  (``tl_objective``):

  - ``task`` (default): R + λ·255²·MSE(x, x̂) + λ2·L_det(x̂, boxes), L_det YOLOv5's
    own detection loss of the decoded crop against its ground-truth boxes
    (:mod:`vcmbench.train.detection`; boxes from a COCO instances JSON,
    ``annotations``). λ may be 0: R + λ2·L_det is the task loss alone, as the
    SA-ICM paper's TL-ICM (its Eq. 2) trains;
  - ``features``: R + λ·255²·MSE(x, x̂) + λ2·MSE(F(x), F(x̂)), F the first
    ``feature_layers`` layers of the detector (a feature-matching stand-in for the
    task loss that needs no labels; Fischer et al., 2022).

Recipe (after TCM's public training script): random crops, Adam (lr 1e-4) for the
transforms and a second Adam (lr 1e-3) for the entropy bottleneck's quantiles
(the auxiliary loss), step decay of the learning rate (×0.1 at the milestones),
gradient-norm clipping at 1.0. Every random draw of step *s* (crop positions,
quantization noise) comes from generators seeded with (seed, s), so a run
resumed from ``last.pt`` continues exactly as an uninterrupted one would.

Output folder: ``last.pt`` (full training state, written every ``ckpt_every``
steps), ``log.csv`` (train rows averaged over ``log_every`` steps and eval rows
on a fixed batch of centre crops), ``tb/`` (TensorBoard, when installed) and, at
the end, ``final.pt``: the codec checkpoint (entropy tables built with
``update(force=True)``) that a codec card's ``rate_points`` can point at.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import VcmbenchError
from ..media.devices import resolve_device

__all__ = ["LOSSES", "TrainConfig", "TrainError", "TrainResult", "train"]

LOSSES = ("lic", "objicm", "saicm", "tlicm")
MASKED = ("objicm", "saicm")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STATE_FORMAT = "vcmbench-train-state"
LOG_COLUMNS = ["kind", "step", "lr", "loss", "bpp", "mse", "psnr", "masked_mse", "feature_mse", "task_loss",
               "aux_loss", "grad_norm", "seconds"]  # fmt: skip
#: TL-ICM objectives: YOLOv5's detection loss against ground-truth boxes, or an MSE of early detector features
TL_OBJECTIVES = ("task", "features")
#: settings a resumed run must share with the run that wrote ``last.pt``
RESUME_KEYS = ("codec", "arch", "arch_kwargs", "lmbda", "lambda2", "batch_size", "crop", "seed", "lr", "aux_lr",
               "clip", "train_dir", "masks", "init", "feature_layers", "limit", "tl_objective",
               "annotations")  # fmt: skip


class TrainError(VcmbenchError):
    """A training setup problem; the message says how to fix it."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in ``last.pt`` and the final checkpoint's meta)."""

    codec: str
    train_dir: str
    out: str
    lmbda: float = 0.0130
    masks: str | None = None
    lambda2: float = 0.0
    arch: str = "mbt2018-mean"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    #: start from the weights of this checkpoint (fine-tuning); optimizer state starts fresh
    init: str | None = None
    steps: int = 1000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-4
    aux_lr: float = 1e-3
    #: learning-rate drops, as fractions of ``steps`` (<= 1) or step numbers (> 1)
    milestones: list[float] = field(default_factory=lambda: [0.9])
    gamma: float = 0.1
    clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    log_every: int = 10
    val_every: int = 100
    val_images: int = 8
    ckpt_every: int = 200
    save_dtype: str = "float32"
    #: file name of the codec checkpoint in ``out`` (``.pt.xz``: xz-compressed)
    final_name: str = "final.pt"
    limit: int | None = None
    #: TL-ICM: the YOLOv5 checkpoint whose detection loss (``task``) or first ``feature_layers`` layers
    #: (``features``) the objective goes through
    detector_weights: str | None = None
    feature_layers: int = 5
    #: TL-ICM objective: ``task`` (detection loss against ``annotations``' boxes) or ``features``
    tl_objective: str = "task"
    #: TL-ICM task loss: COCO instances JSON listing every training image (file name) and its boxes
    annotations: str | None = None
    resume: bool = True
    tensorboard: bool = True
    progress: bool = True

    def check(self) -> None:
        from ..models.lic import ARCHITECTURES

        if self.codec not in LOSSES:
            raise TrainError(f"--codec must be one of {', '.join(LOSSES)}, got {self.codec!r}")
        if self.arch not in ARCHITECTURES:
            raise TrainError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.codec in MASKED and not self.masks:
            raise TrainError(f"--codec {self.codec} trains on masked MSE: pass --masks DIR (made by `vcmbench masks`)")
        if self.codec == "tlicm":
            self._check_tlicm()
        if self.lmbda <= 0 and not (self.codec == "tlicm" and self.lmbda == 0):
            raise TrainError(f"--lambda must be > 0 (tlicm: >= 0), got {self.lmbda}")
        if self.steps < 1 or self.batch_size < 1:
            raise TrainError("--steps and --batch-size must be at least 1")
        if self.crop < 64 or self.crop % 64:
            raise TrainError(f"--crop must be a multiple of 64 (the model stride), got {self.crop}")
        if self.save_dtype not in ("float32", "float16"):
            raise TrainError("--save-dtype must be float32 or float16")

    def _check_tlicm(self) -> None:
        if self.tl_objective not in TL_OBJECTIVES:
            raise TrainError(f"--tl-objective must be one of {', '.join(TL_OBJECTIVES)}, got {self.tl_objective!r}")
        term = "detection loss" if self.tl_objective == "task" else "feature loss"
        if not self.detector_weights:
            raise TrainError(f"--codec tlicm needs --detector-weights (a YOLOv5 .pt checkpoint) for its {term}")
        if self.lambda2 <= 0:
            raise TrainError(f"--codec tlicm needs --lambda2 > 0 (weight of the {term})")
        if self.tl_objective == "task" and not self.annotations:
            raise TrainError("--codec tlicm --tl-objective task needs --annotations FILE (a COCO instances JSON with "
                             "the training images' boxes), or use --tl-objective features (no labels)")  # fmt: skip

    def milestone_steps(self) -> list[int]:
        return sorted(int(round(m * self.steps)) if m <= 1 else int(m) for m in self.milestones)

    def lr_at(self, step: int) -> float:
        """Learning rate of (0-based) step ``step``: ``lr`` times ``gamma`` per milestone passed."""
        return self.lr * self.gamma ** sum(step >= m for m in self.milestone_steps())


# ---- data -------------------------------------------------------------------------------------
def list_images(folder: str | os.PathLike[str], limit: int | None = None) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise TrainError(f"--train-dir {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise TrainError(f"--train-dir {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files[:limit] if limit else files


class Sample(NamedTuple):
    """An image (HxWx3 uint8), its {0, 1} mask and its boxes (n, 5: class, x1, y1, x2, y2 in its pixels)."""

    image: np.ndarray
    mask: np.ndarray | None
    boxes: np.ndarray | None


class Batch(NamedTuple):
    """Crops as tensors: images (N, 3, c, c) in [0, 1], masks (N, 1, c, c) and YOLOv5 target rows (n, 6)."""

    x: Tensor
    mask: Tensor | None
    targets: Tensor | None


class CropSampler:
    """Random crops (image, mask and boxes at the same place) of a folder of images.

    Up to ``preload`` images are decoded once and kept in memory as uint8; larger
    sets (e.g. COCO train2017) are read from disk for every crop. Either way the
    crops drawn from a given ``rng`` are the same. ``boxes`` (file name -> (n, 5):
    class, x1, y1, x2, y2 in pixels, from :func:`vcmbench.train.detection.read_boxes`)
    gives every crop the parts of its boxes inside it (:func:`~vcmbench.train.detection.crop_boxes`).
    """

    def __init__(self, files: Sequence[Path], crop: int, masks: str | None = None, preload: int = 2000,
                 boxes: Mapping[str, np.ndarray] | None = None) -> None:  # fmt: skip
        self.crop = crop
        self.files = list(files)
        self.mask_files: list[Path] | None = None
        if masks:
            from ..masks import mask_index

            index = mask_index(masks)
            missing = [f.name for f in self.files if f.name not in index]
            if missing:
                raise TrainError(
                    f"{len(missing)} training image(s) have no mask in {masks} (e.g. {', '.join(missing[:3])}); "
                    "make them with `vcmbench masks` over the same images"
                )
            self.mask_files = [index[f.name] for f in self.files]
        self.boxes = None if boxes is None else [boxes[f.name] for f in self.files]
        self._cache: list[Sample] | None = None
        if len(self.files) <= preload:
            self._cache = [self._read(i) for i in range(len(self.files))]

    def _read(self, i: int) -> Sample:
        """Image ``i``, its mask and boxes, enlarged if a side is shorter than the crop."""
        from PIL import Image

        with Image.open(self.files[i]) as im:
            rgb = im.convert("RGB")
        mask_im = None
        if self.mask_files is not None:
            with Image.open(self.mask_files[i]) as m:
                mask_im = m.convert("L")
            if mask_im.size != rgb.size:
                raise TrainError(f"mask {self.mask_files[i]} is {mask_im.size}, image {self.files[i]} is {rgb.size}")
        boxes = None if self.boxes is None else self.boxes[i]
        w, h = rgb.size
        if min(w, h) < self.crop:  # enlarge small images so a crop fits
            scale = self.crop / min(w, h)
            size = (math.ceil(w * scale), math.ceil(h * scale))
            rgb = rgb.resize(size, Image.BICUBIC)
            mask_im = mask_im.resize(size, Image.NEAREST) if mask_im is not None else None
            if boxes is not None:
                boxes = boxes * np.array([1, size[0] / w, size[1] / h, size[0] / w, size[1] / h], dtype=np.float32)
        mask = (np.asarray(mask_im) > 127).astype(np.uint8) if mask_im is not None else None
        return Sample(np.asarray(rgb, dtype=np.uint8), mask, boxes)

    def _get(self, i: int) -> Sample:
        return self._cache[i] if self._cache is not None else self._read(i)

    def __len__(self) -> int:
        return len(self.files)

    def _tensor(self, samples: list[Sample]) -> Batch:
        x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float().div_(255.0)
        m = None
        if self.mask_files is not None:
            m = torch.from_numpy(np.stack([s.mask for s in samples]))[:, None].float()  # type: ignore[misc]
        targets = None
        if self.boxes is not None:
            from .detection import yolo_targets

            targets = yolo_targets([s.boxes for s in samples], self.crop)  # type: ignore[misc]
        return Batch(x, m, targets)

    def _crop(self, i: int, rng: np.random.Generator | None) -> Sample:
        """A random crop of image ``i`` (position drawn from ``rng``), or its centre crop without one."""
        img, mask, boxes = self._get(i)
        c = self.crop
        if rng is not None:
            y0 = int(rng.integers(0, img.shape[0] - c + 1))
            x0 = int(rng.integers(0, img.shape[1] - c + 1))
        else:
            y0, x0 = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
        if boxes is not None:
            from .detection import crop_boxes

            boxes = crop_boxes(boxes, y0, x0, c)
        return Sample(img[y0 : y0 + c, x0 : x0 + c], mask[y0 : y0 + c, x0 : x0 + c] if mask is not None else None,
                      boxes)  # fmt: skip

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        """``size`` random crops; all randomness comes from ``rng``."""
        picks = rng.integers(0, len(self.files), size=size)
        return self._tensor([self._crop(int(i), rng) for i in picks])

    def fixed_batch(self, count: int) -> Batch:
        """Centre crops of ``count`` images spread over the set: the evaluation batch."""
        picks = np.unique(np.linspace(0, len(self.files) - 1, num=min(count, len(self.files))).round().astype(int))
        return self._tensor([self._crop(int(i), None) for i in picks])


# ---- TL-ICM feature extractor ---------------------------------------------------------------------
class DetectorFeatures(nn.Module):
    """F for TL-ICM: the first ``layers`` layers of a YOLOv5 checkpoint, frozen, in eval mode.

    Loaded through :func:`vcmbench.tasks.yolov5.load_yolov5_checkpoint` (the same
    loader the evaluation task uses); the first layers of YOLOv5's backbone form a
    plain chain (each takes the previous output), which is checked.
    """

    def __init__(self, weights: str | os.PathLike[str], layers: int = 5) -> None:
        super().__init__()
        from ..tasks.yolov5 import load_yolov5_checkpoint

        model = load_yolov5_checkpoint(weights, "cpu", fuse=True)
        seq = model.model[:layers]
        for i, m in enumerate(seq):
            if getattr(m, "f", -1) != -1:
                raise TrainError(f"YOLOv5 layer {i} does not take the previous layer's output; use fewer --feature-layers")
        for m in seq.modules():
            if hasattr(m, "inplace"):
                m.inplace = False  # in-place activations break backpropagation into x̂
        self.layers = seq.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> DetectorFeatures:
        return super().train(False)  # always frozen, BatchNorm statistics included

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


# ---- loss ----------------------------------------------------------------------------------------
class TaskModels(NamedTuple):
    """TL-ICM's frozen detector terms: the feature extractor F (``features``) or the detection loss (``task``)."""

    features: nn.Module | None = None
    detection: nn.Module | None = None


def rd_terms(
    out: dict[str, Any], x: Tensor, mask: Tensor | None, features: nn.Module | None = None,
    detection: nn.Module | None = None, targets: Tensor | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """bpp, MSE, masked MSE, feature MSE and detection loss of one forward pass (see the module docstring)."""
    n, _, h, w = x.shape
    bits = sum((-torch.log2(lik)).sum() for lik in out["likelihoods"].values())
    x_hat = out["x_hat"]
    terms = {"bpp": bits / (n * h * w), "mse": F.mse_loss(x_hat, x)}
    if mask is not None:
        terms["masked_mse"] = F.mse_loss(x_hat * mask, x * mask)
    if features is not None:
        with torch.no_grad():
            target = features(x)
        terms["feature_mse"] = F.mse_loss(features(x_hat), target)
    if detection is not None:
        if targets is None:
            raise TrainError("the detection loss needs the crops' ground-truth boxes")
        terms["task_loss"] = detection(x_hat, targets)
    return terms


def objective(codec: str, terms: dict[str, Tensor], lmbda: float, lambda2: float = 0.0,
              tl_objective: str = "task") -> Tensor:  # fmt: skip
    """The training loss of ``codec`` (and, for tlicm, ``tl_objective``) from :func:`rd_terms`."""
    if codec == "lic":
        return terms["bpp"] + lmbda * 255**2 * terms["mse"]
    if codec in MASKED:
        return terms["bpp"] + lmbda * 255**2 * terms["masked_mse"]
    if codec == "tlicm":
        tl_term = terms["task_loss"] if tl_objective == "task" else terms["feature_mse"]
        return terms["bpp"] + lmbda * 255**2 * terms["mse"] + lambda2 * tl_term
    raise TrainError(f"unknown objective {codec!r}")


# ---- the run ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    steps: int
    checkpoint: Path
    sha256: str
    final_eval: dict[str, float]
    seconds: float
    resumed_from: int = 0


def _optimizers(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    main = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles") and p.requires_grad]
    return torch.optim.Adam(main, lr=cfg.lr), torch.optim.Adam(aux, lr=cfg.aux_lr)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


class _Log:
    """CSV (always) and TensorBoard (when installed) logging."""

    def __init__(self, out: Path, resume_step: int, tensorboard: bool) -> None:
        self.path = out / "log.csv"
        rows = []
        if resume_step and self.path.exists():  # drop rows a crashed run wrote after its last checkpoint
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        self.tb: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step or None)
            except Exception:  # tensorboard missing or broken: the CSV log is enough
                self.tb = None

    def write(self, kind: str, step: int, values: dict[str, float]) -> None:
        row = {"kind": kind, "step": step, **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()}}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, LOG_COLUMNS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float) and k != "seconds":
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _config_json(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(cfg), default=str))


def build_for_training(cfg: TrainConfig) -> nn.Module:
    """A fresh model, or one initialised from ``cfg.init`` (same architecture required)."""
    from ..models.lic import build_model, load_checkpoint

    if cfg.init:
        ck = load_checkpoint(cfg.init, cfg.arch, cfg.arch_kwargs or None)
        if cfg.arch_kwargs and ck.arch_kwargs != cfg.arch_kwargs:
            raise TrainError(f"--init {cfg.init} is {ck.arch} {ck.arch_kwargs}, not {cfg.arch_kwargs}")
        cfg.arch_kwargs = dict(ck.arch_kwargs)
        return ck.model
    return build_model(cfg.arch, **cfg.arch_kwargs)


def _terms(model: nn.Module, batch: Batch, task: TaskModels, device: torch.device) -> dict[str, Tensor]:
    """The loss terms of the model's forward pass on ``batch`` (moved to ``device``)."""
    x = batch.x.to(device)
    m = None if batch.mask is None else batch.mask.to(device)
    return rd_terms(model(x), x, m, task.features, task.detection, batch.targets)


@torch.no_grad()
def evaluate(model: nn.Module, batch: Batch, cfg: TrainConfig, task: TaskModels,
             device: torch.device) -> dict[str, float]:  # fmt: skip
    """Eval-mode loss terms (quantized latents, no noise) on a fixed batch."""
    was = model.training
    model.eval()
    terms = _terms(model, batch, task, device)
    loss = objective(cfg.codec, terms, cfg.lmbda, cfg.lambda2, cfg.tl_objective)
    model.train(was)
    out = {k: float(v) for k, v in terms.items()}
    out["loss"] = float(loss)
    out["psnr"] = 10 * math.log10(1.0 / max(out["mse"], 1e-12))
    return out


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run (or resume) a training; returns the final codec checkpoint."""
    from ..media.hashing import file_sha256
    from ..models.lic import save_checkpoint

    say = log or (lambda msg: print(msg, file=sys.stderr))
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device, "vcmbench train --device", TrainError)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    files = list_images(cfg.train_dir, cfg.limit)
    task = _task_models(cfg)
    boxes = _boxes(cfg, files, task)
    sampler = CropSampler(files, cfg.crop, cfg.masks if cfg.codec in MASKED else None, boxes=boxes)
    say(f"train {cfg.codec}: {len(sampler)} images from {cfg.train_dir}, {cfg.crop}px crops, batch {cfg.batch_size}, "
        f"{cfg.steps} steps, lambda {cfg.lmbda}, arch {cfg.arch} {cfg.arch_kwargs}, device {device}")  # fmt: skip
    if cfg.codec == "tlicm":
        held = f", {sum(len(b) for b in boxes.values())} boxes from {cfg.annotations}" if boxes is not None else ""
        say(f"tlicm objective: {cfg.tl_objective} (lambda2 {cfg.lambda2}, detector {cfg.detector_weights}){held}")

    state_path = out / "last.pt"
    state = _resume_state(cfg, state_path) if cfg.resume and state_path.exists() else None
    if state is not None:
        cfg.arch_kwargs = dict(state["config"]["arch_kwargs"])
    torch.manual_seed(cfg.seed)  # initial weights
    model = build_for_training(cfg) if state is None else _model_from_state(cfg, state)
    model = model.to(device).train()
    task = TaskModels(*(m.to(device) if m is not None else None for m in task))
    opt, aux_opt = _optimizers(model, cfg)
    start = 0
    elapsed = 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        aux_opt.load_state_dict(state["aux_optimizer"])
        start = int(state["step"])
        elapsed = float(state.get("elapsed", 0.0))
        say(f"resuming from {state_path} at step {start}")
    if start >= cfg.steps and (out / cfg.final_name).exists():
        say(f"{out} already finished {start} steps; nothing to do (raise --steps to train longer)")
    logger = _Log(out, start, cfg.tensorboard)
    eval_batch = sampler.fixed_batch(cfg.val_images)
    if start == 0:
        logger.write("eval", 0, {**evaluate(model, eval_batch, cfg, task, device), "lr": cfg.lr_at(0)})

    def save_state(step: int) -> None:
        blob = {"format": STATE_FORMAT, "config": _config_json(cfg), "step": step, "elapsed": elapsed,
                "model": model.state_dict(), "optimizer": opt.state_dict(), "aux_optimizer": aux_opt.state_dict()}  # fmt: skip
        tmp = state_path.with_name("last.pt.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, state_path)

    bar = _progress_bar(cfg, start)
    acc: dict[str, float] = {}
    count = 0
    t_last = time.perf_counter()
    main_params = [p for group in opt.param_groups for p in group["params"]]
    try:
        for step in range(start, cfg.steps):
            lr = cfg.lr_at(step)
            for group in opt.param_groups:
                group["lr"] = lr
            vals = _train_step(cfg, step, model, (opt, aux_opt), main_params, sampler, task, device)
            for k, v in vals.items():
                acc[k] = acc.get(k, 0.0) + v
            count += 1
            done = step + 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{vals['loss']:.4f}", bpp=f"{vals['bpp']:.3f}")
            if done % cfg.log_every == 0 or done == cfg.steps:
                mean = {k: v / count for k, v in acc.items()}
                mean["psnr"] = 10 * math.log10(1.0 / max(mean["mse"], 1e-12))
                logger.write("train", done, {**mean, "lr": lr, "seconds": round(elapsed, 2)})
                acc, count = {}, 0
            if done % cfg.val_every == 0 or done == cfg.steps:
                ev = evaluate(model, eval_batch, cfg, task, device)
                logger.write("eval", done, {**ev, "lr": lr, "seconds": round(elapsed, 2)})
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                save_state(done)
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    final_eval = evaluate(model, eval_batch, cfg, task, device)
    meta = _checkpoint_meta(cfg, len(sampler), final_eval)
    meta["train_images_sha256"] = training_set_sha256(files, cfg.init)
    ckpt = save_checkpoint(model, out / cfg.final_name, cfg.arch, cfg.arch_kwargs, meta, cfg.save_dtype)
    sha = file_sha256(ckpt)
    say(f"final checkpoint {ckpt} (sha256 {sha}); eval batch: loss {final_eval['loss']:.4f}, "
        f"bpp {final_eval['bpp']:.4f}, PSNR {final_eval['psnr']:.2f} dB")  # fmt: skip
    return TrainResult(out, cfg.steps, ckpt, sha, final_eval, elapsed, start)


def _resume_state(cfg: TrainConfig, state_path: Path) -> dict[str, Any]:
    """The training state saved in ``state_path``, checked to come from a run with the same settings."""
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise TrainError(f"{state_path} is not a vcmbench training state; use another --out")
    saved = _with_legacy_settings(state["config"])
    now = _config_json(cfg)
    differ = [k for k in RESUME_KEYS if saved.get(k) != now.get(k) and not (k == "arch_kwargs" and cfg.init)]
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise TrainError(f"{state_path} was written by a run with other settings ({shown}); use another --out "
                         "or --no-resume to start over")  # fmt: skip
    return state


def _with_legacy_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved run configuration with the settings it predates filled in as it ran: no annotations, and the
    feature objective for tlicm (the only one before the task loss)."""
    out = dict(saved)
    out.setdefault("annotations", None)
    out.setdefault("tl_objective", "features" if saved.get("codec") == "tlicm" else TrainConfig.tl_objective)
    return out


def _progress_bar(cfg: TrainConfig, start: int) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=f"train {cfg.codec}", dynamic_ncols=True, file=sys.stderr)


def _train_step(cfg: TrainConfig, step: int, model: nn.Module, opts: tuple[Any, Any], main_params: list[Any],
                sampler: CropSampler, task: TaskModels, device: Any) -> dict[str, float]:  # fmt: skip
    """One optimisation step (main and auxiliary losses) on the step's seeded batch; its loss terms."""
    opt, aux_opt = opts
    batch = sampler.batch(np.random.default_rng([cfg.seed, step]), cfg.batch_size)
    torch.manual_seed(_step_seed(cfg.seed, step))  # quantization noise of this step
    opt.zero_grad(set_to_none=True)
    aux_opt.zero_grad(set_to_none=True)
    terms = _terms(model, batch, task, device)
    loss = objective(cfg.codec, terms, cfg.lmbda, cfg.lambda2, cfg.tl_objective)
    if not torch.isfinite(loss):
        raise TrainError(f"step {step}: the loss is {float(loss)}; lower --lr or check the data")
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(main_params, cfg.clip)) if cfg.clip > 0 else float("nan")
    opt.step()
    aux_loss = model.aux_loss()  # type: ignore[operator]
    aux_loss.backward()
    aux_opt.step()
    vals = {k: float(v.detach()) for k, v in terms.items()}
    vals.update(loss=float(loss.detach()), aux_loss=float(aux_loss.detach()), grad_norm=grad_norm)
    return vals


def _checkpoint_meta(cfg: TrainConfig, train_images: int, final_eval: dict[str, float]) -> dict[str, Any]:
    """What the final checkpoint records of its training (no wall time: the same settings and data give the
    same checkpoint bytes)."""
    return {
        "loss": cfg.codec, "lambda": cfg.lmbda, "lambda2": cfg.lambda2 or None, "steps": cfg.steps,
        "crop": cfg.crop, "batch_size": cfg.batch_size, "seed": cfg.seed, "train_dir": str(cfg.train_dir),
        "train_images": train_images, "masks": str(cfg.masks) if cfg.masks else None,
        "masks_params": _mask_params(cfg.masks) if cfg.codec in MASKED else None,
        "init": cfg.init, "final_eval": final_eval, **_tlicm_meta(cfg),
    }  # fmt: skip


def _tlicm_meta(cfg: TrainConfig) -> dict[str, Any]:
    """TL-ICM's objective and what it went through: the detector and (task loss) the annotation file."""
    if cfg.codec != "tlicm":
        return {}
    from ..media.hashing import file_sha256

    task = cfg.tl_objective == "task"
    return {
        "tl_objective": cfg.tl_objective, "detector_weights_sha256": file_sha256(cfg.detector_weights),  # type: ignore[arg-type]
        "feature_layers": None if task else cfg.feature_layers,
        "annotations": str(cfg.annotations) if task else None,
        "annotations_sha256": file_sha256(cfg.annotations) if task else None,  # type: ignore[arg-type]
    }  # fmt: skip


def _task_models(cfg: TrainConfig) -> TaskModels:
    """The frozen detector term of TL-ICM's objective (none for the other codecs)."""
    if cfg.codec != "tlicm":
        return TaskModels()
    if cfg.tl_objective == "features":
        return TaskModels(features=DetectorFeatures(cfg.detector_weights, cfg.feature_layers))  # type: ignore[arg-type]
    from .detection import DetectionLoss

    return TaskModels(detection=DetectionLoss(cfg.detector_weights, cfg.crop))  # type: ignore[arg-type]


def _boxes(cfg: TrainConfig, files: Sequence[Path], task: TaskModels) -> dict[str, np.ndarray] | None:
    """The training images' ground-truth boxes as the detector's classes (task loss only)."""
    if task.detection is None:
        return None
    from .detection import read_boxes

    return read_boxes(cfg.annotations, files, task.detection.class_names())  # type: ignore[arg-type, operator]


def training_set_sha256(files: Sequence[Path], init: str | None) -> list[str]:
    """The sorted sha256 of every image the model has seen: this run's ``files`` plus, when it was
    fine-tuned from ``init``, the images that checkpoint records (a fine-tune inherits its base's data)."""
    from ..media.hashing import file_sha256

    hashes = {file_sha256(f) for f in files}
    if init:
        from ..codecs.training_record import read_record

        inherited = read_record(init).training_images
        if inherited is None:
            raise TrainError(f"--init {init} records no training set (train_images_sha256); a fine-tune of it "
                             "could not say which images it must not be evaluated on. Retrain the base with this "
                             "vcmbench")  # fmt: skip
        hashes.update(inherited)
    return sorted(hashes)


def _model_from_state(cfg: TrainConfig, state: dict[str, Any]) -> nn.Module:
    from ..models.lic import build_model

    model = build_model(cfg.arch, **cfg.arch_kwargs)
    model.load_state_dict(state["model"])
    return model


def _mask_params(folder: str | None) -> dict[str, Any] | None:
    if not folder:
        return None
    from ..masks import read_manifest

    manifest = read_manifest(folder)
    return {"params": manifest.get("params"), "params_hash": manifest.get("params_hash")}


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``log.csv`` with numbers parsed (empty cells -> NaN)."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (r[k] if k == "kind" else float(r[k]) if r[k] not in ("", None) else float("nan"))
                         for k in r})  # fmt: skip
    return rows
