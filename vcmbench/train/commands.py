"""The ``vcmbench masks`` and ``vcmbench train`` subcommands (argument parsing only; imports nothing heavy)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MASKS_EPILOG = """examples:
  vcmbench masks --dataset coco --data-root ~/coco --source sam --sam-model vit_h --alpha 0.93 --out masks/sam-a93
  vcmbench masks --dataset coco --data-root ~/coco --source coco --out masks/objects      # Object-ICM
  vcmbench masks --images ~/photos --source felzenszwalb --out masks/fz                   # offline, no weights
"""

TRAIN_EPILOG = """examples:
  vcmbench train --codec saicm --train-dir ~/coco/train2017 --masks masks/sam-a93 --lambda 0.05 --out runs/saicm
  vcmbench train --codec lic --arch tcm --arch-kwargs N=64 --train-dir ~/imgs --lambda 0.013 --crop 256 --out runs/tcm
  vcmbench train --codec tlicm --train-dir ~/imgs --lambda 0.013 --lambda2 0.5 \\
      --detector-weights yolov5n.pt --out runs/tlicm
"""


def _kv(text: str) -> dict[str, Any]:
    """``N=64,M=96`` -> {"N": 64, "M": 96} (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def add_masks_parser(sub: Any) -> None:
    m = sub.add_parser("masks", help="make training masks: SAM edges (SA-ICM), COCO objects (Object-ICM), classical",
                       epilog=MASKS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    src = m.add_argument_group("images")
    src.add_argument("--dataset", default=None, help="dataset card (e.g. coco); or use --images")
    src.add_argument("--data-root", default=None, help="root folder of the dataset")
    src.add_argument("--images", default=None, help="a folder of images instead of a dataset card")
    src.add_argument("--limit", type=int, default=None, help="first N items")
    src.add_argument("--ids", default=None, help="only these item ids (comma separated)")
    src.add_argument("--cards", action="append", default=[], metavar="DIR")
    m.add_argument("--source", required=True, choices=["sam", "coco", "felzenszwalb", "slic"])
    m.add_argument("--out", required=True, help="mask folder (PNG per image + manifest.json)")
    m.add_argument("--overwrite", action="store_true", help="replace masks made with other parameters")
    m.add_argument("--device", default="auto", help="SAM device: auto, cpu, cuda [auto]")
    m.add_argument("--no-progress", action="store_true")
    s = m.add_argument_group("SAM (Kirillov et al., ICCV 2023)")
    s.add_argument("--sam-model", default="vit_h", help="vit_h, vit_l, vit_b (or tiny-random: tests only) [vit_h]")
    s.add_argument("--sam-checkpoint", default=None, help="SAM .pth (checked against the official sha256); "
                   "default: $VCMBENCH_WEIGHTS_DIR or the cache, else download")  # fmt: skip
    s.add_argument("--alpha", type=float, default=0.93,
                   help="SA-ICM's alpha, used as SAM's pred_iou_thresh (our reading of the paper) [0.93]")
    s.add_argument("--points-per-side", type=int, default=32)
    s.add_argument("--points-per-batch", type=int, default=64)
    s.add_argument("--stability-thresh", type=float, default=0.95, help="SAM stability_score_thresh [0.95]")
    s.add_argument("--box-nms-thresh", type=float, default=0.7)
    s.add_argument("--crop-n-layers", type=int, default=0)
    s.add_argument("--min-region-area", type=int, default=0)
    e = m.add_argument_group("edges")
    e.add_argument("--canny-low", type=float, default=100.0)
    e.add_argument("--canny-high", type=float, default=200.0)
    e.add_argument("--canny-aperture", type=int, default=3)
    e.add_argument("--dilate", type=int, default=0, help="square dilation kernel side in px (0: none) [0]")
    e.add_argument("--dilate-iterations", type=int, default=1)
    c = m.add_argument_group("classical sources")
    c.add_argument("--fz-scale", type=float, default=300.0)
    c.add_argument("--fz-sigma", type=float, default=0.8)
    c.add_argument("--fz-min-size", type=int, default=200)
    c.add_argument("--slic-segments", type=int, default=150)
    c.add_argument("--slic-compactness", type=float, default=10.0)
    m.add_argument("--no-crowd", action="store_true", help="--source coco: leave crowd regions out")


def cmd_masks(args: argparse.Namespace) -> int:
    from ..adapters import build
    from ..masks import EdgeParams, MaskError, MaskItem, MaskParams, make_masks

    edges = EdgeParams(args.canny_low, args.canny_high, args.canny_aperture, False, args.dilate, args.dilate_iterations)
    params = MaskParams(
        source=args.source, edges=edges, sam_model=args.sam_model, alpha=args.alpha,
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        stability_score_thresh=args.stability_thresh, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_region_area, fz_scale=args.fz_scale,
        fz_sigma=args.fz_sigma, fz_min_size=args.fz_min_size, slic_segments=args.slic_segments,
        slic_compactness=args.slic_compactness, include_crowd=not args.no_crowd,
    )  # fmt: skip
    dataset = None
    if args.images:
        from .lic import list_images

        files = list_images(args.images)
        items = [MaskItem(p.stem, p) for p in files]
        info: dict[str, Any] = {"images": str(Path(args.images).resolve())}
    elif args.dataset:
        from ..cards import CardSet

        card = CardSet([Path(d) for d in args.cards]).get("dataset", args.dataset)
        if args.data_root:
            card = card.with_settings(root=args.data_root)
        dataset = build(card)
        dataset.check()
        ids = [t.strip() for t in args.ids.split(",")] if args.ids else None
        selected = dataset.items(limit=args.limit, ids=ids)
        items = []
        for it in selected:
            image_id = it.meta.get("image_id") if it.meta else None
            items.append(MaskItem(it.id, it.path, int(image_id) if image_id is not None else None))
        info = {"name": args.dataset, "root": str(getattr(dataset, "root", "")), "card_digest": card.digest()}
        args.limit = None
    else:
        raise MaskError("say which images: --dataset NAME (with --data-root) or --images DIR")
    if args.limit:
        items = items[: args.limit]
    if args.source == "coco" and dataset is None:
        raise MaskError("--source coco needs --dataset coco (the ground-truth annotations)")
    run = make_masks(items, args.out, params, dataset=dataset, dataset_info=info, sam_checkpoint=args.sam_checkpoint,
                     device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                     log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    cov = [e["coverage"] for e in run.manifest["items"].values()]
    mean = sum(cov) / len(cov) if cov else float("nan")
    print(f"{run.out}: {run.made} masks made, {run.skipped} already there, {len(run.failed)} failed; "
          f"mean coverage {mean:.3f}; manifest {run.out / 'manifest.json'}")  # fmt: skip
    return 1 if run.failed else 0


def add_train_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a learned codec: lic, objicm (object masks), saicm (SAM edges), tlicm",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    t.add_argument("--codec", required=True, choices=["lic", "objicm", "saicm", "tlicm"], help="training objective")
    t.add_argument("--train-dir", required=True, help="folder of training images (searched recursively)")
    t.add_argument("--masks", default=None, help="mask folder from `vcmbench masks` (objicm, saicm)")
    t.add_argument("--out", required=True, help="output folder (last.pt, log.csv, tb/, final.pt)")
    t.add_argument("--lambda", dest="lmbda", type=float, required=True, help="rate-distortion trade-off λ")
    t.add_argument("--lambda2", type=float, default=0.0, help="tlicm: weight of the feature loss")
    t.add_argument("--arch", default="mbt2018-mean", help="tcm or a CompressAI zoo architecture [mbt2018-mean]")
    t.add_argument("--arch-kwargs", type=_kv, default={}, metavar="K=V,...", help="e.g. N=64,M=96 or quality=3")
    t.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop", type=int, default=256, help="random crop side, a multiple of 64 [256]")
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--aux-lr", type=float, default=1e-3)
    t.add_argument("--milestones", type=_floats, default=[0.9], help="LR x gamma at these fractions/steps [0.9]")
    t.add_argument("--gamma", type=float, default=0.1)
    t.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off) [1.0]")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--limit", type=int, default=None, help="use the first N training images")
    t.add_argument("--log-every", type=int, default=10)
    t.add_argument("--val-every", type=int, default=100)
    t.add_argument("--val-images", type=int, default=8)
    t.add_argument("--ckpt-every", type=int, default=200)
    t.add_argument("--save-dtype", choices=["float32", "float16"], default="float32",
                   help="parameter precision of final.pt (float16 halves the file) [float32]")
    t.add_argument("--final-name", default="final.pt", help="codec checkpoint file name in OUT; a name ending in "
                   ".xz is xz-compressed (about 25%% smaller) [final.pt]")
    t.add_argument("--detector-weights", default=None, help="tlicm: YOLOv5 .pt whose first layers form F")
    t.add_argument("--feature-layers", type=int, default=5, help="tlicm: how many YOLOv5 layers form F [5]")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    t.add_argument("--no-tensorboard", action="store_true")
    t.add_argument("--no-progress", action="store_true")


def cmd_train(args: argparse.Namespace) -> int:
    from .lic import TrainConfig, train

    cfg = TrainConfig(
        codec=args.codec, train_dir=args.train_dir, out=args.out, lmbda=args.lmbda, masks=args.masks,
        lambda2=args.lambda2, arch=args.arch, arch_kwargs=args.arch_kwargs, init=args.init, steps=args.steps,
        batch_size=args.batch_size, crop=args.crop, lr=args.lr, aux_lr=args.aux_lr, milestones=args.milestones,
        gamma=args.gamma, clip=args.clip, seed=args.seed, device=args.device, threads=args.threads,
        log_every=args.log_every, val_every=args.val_every, val_images=args.val_images,
        ckpt_every=args.ckpt_every, save_dtype=args.save_dtype, final_name=args.final_name, limit=args.limit,
        detector_weights=args.detector_weights, feature_layers=args.feature_layers, resume=not args.no_resume,
        tensorboard=not args.no_tensorboard, progress=not args.no_progress,
    )  # fmt: skip
    result = train(cfg)
    print(json.dumps({"checkpoint": str(result.checkpoint), "sha256": result.sha256, "steps": result.steps,
                      "final_eval": result.final_eval, "train_seconds": round(result.seconds, 1)}, indent=1))  # fmt: skip
    print("\ncard entry (codecs/<codec>.yaml, settings.rate_points):\n"
          f"  N: {{lambda: {cfg.lmbda}, checkpoint: {result.checkpoint}, sha256: {result.sha256}}}")  # fmt: skip
    return 0
