"""The ``vcmbench masks`` and ``vcmbench train`` subcommands (argument parsing only; imports nothing heavy)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

MASKS_EPILOG = """examples:
  vcmbench masks --dataset coco --data-root ~/coco --split train2017 --source sam --sam-model vit_h --alpha 0.93 \\
      --out masks/sam-a93
  vcmbench masks --dataset coco --data-root ~/coco --split train2017 --source coco --out masks/objects  # Object-ICM
  vcmbench masks --images ~/coco/train2017 --annotations ~/coco/annotations/instances_train2017.json \\
      --source coco --out masks/objects                                                   # the same, by paths
  vcmbench masks --images ~/photos --source felzenszwalb --out masks/fz                   # offline, no weights
"""

TRAIN_EPILOG = """examples:
  vcmbench train --codec saicm --train-dir ~/coco/train2017 --masks masks/sam-a93 --lambda 0.05 --out runs/saicm
  vcmbench train --codec lic --arch tcm --arch-kwargs N=64 --train-dir ~/imgs --lambda 0.013 --crop 256 --out runs/tcm
  vcmbench train --codec tlicm --train-dir ~/coco/train2017 --annotations ~/coco/annotations/instances_train2017.json \\
      --lambda 0.013 --lambda2 1 --detector-weights yolov5n.pt --init runs/lic/final.pt --out runs/tlicm
  vcmbench train --codec tlicm --tl-objective features --train-dir ~/imgs --lambda 0.013 --lambda2 50 \\
      --detector-weights yolov5n.pt --out runs/tlicm-features                           # no labels needed
"""


def _kv(text: str) -> dict[str, Any]:
    """``N=64,M=96`` -> {"N": 64, "M": 96} (values read as YAML 1.2 scalars: ``4:2:0``, ``yes`` stay strings)."""
    import yaml

    from .. import yaml12

    out: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {part!r}")
        k, v = part.split("=", 1)
        try:
            out[k.strip()] = yaml12.load(v)
        except yaml.YAMLError as exc:
            raise argparse.ArgumentTypeError(f"{k.strip()}={v}: not a YAML value ({exc}); quote it") from None
    return out


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def add_masks_parser(sub: Any) -> None:
    summary = "make training masks: SAM edges (SA-ICM), COCO objects (Object-ICM), classical"
    m = sub.add_parser("masks", help=summary, description=summary,
                       epilog=MASKS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    src = m.add_argument_group("images")
    src.add_argument("--dataset", default=None, help="dataset card (e.g. coco); or use --images")
    src.add_argument("--data-root", default=None, help="root folder of the dataset")
    src.add_argument("--split", default=None, help="the dataset's split, e.g. train2017 (coco: images <root>/<split>/, "
                     "annotations annotations/instances_<split>.json); implies --dataset coco [the card's]")  # fmt: skip
    src.add_argument("--images", default=None, help="a folder of images instead of a dataset card")
    src.add_argument("--annotations", default=None, help="COCO instances JSON of --images (--source coco), or "
                     "of --split relative to --data-root (absolute: anywhere) [annotations/instances_<split>.json]")  # fmt: skip
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
    from ..masks import EdgeParams, MaskParams, make_masks

    edges = EdgeParams(args.canny_low, args.canny_high, args.canny_aperture, False, args.dilate, args.dilate_iterations)
    params = MaskParams(
        source=args.source, edges=edges, sam_model=args.sam_model, alpha=args.alpha,
        points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
        stability_score_thresh=args.stability_thresh, box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_region_area, fz_scale=args.fz_scale,
        fz_sigma=args.fz_sigma, fz_min_size=args.fz_min_size, slic_segments=args.slic_segments,
        slic_compactness=args.slic_compactness, include_crowd=not args.no_crowd,
    )  # fmt: skip
    items, dataset, info = _mask_items(args)
    run = make_masks(items, args.out, params, dataset=dataset, dataset_info=info, sam_checkpoint=args.sam_checkpoint,
                     device=args.device, overwrite=args.overwrite, progress=not args.no_progress,
                     log=lambda msg: print(msg, file=sys.stderr))  # fmt: skip
    cov = [e["coverage"] for e in run.manifest["items"].values()]
    mean = sum(cov) / len(cov) if cov else float("nan")
    print(f"{run.out}: {run.made} masks made, {run.skipped} already there, {len(run.failed)} failed; "
          f"mean coverage {mean:.3f}; manifest {run.out / 'manifest.json'}")  # fmt: skip
    return 1 if run.failed else 0


def _mask_items(args: argparse.Namespace) -> tuple[list[Any], Any, dict[str, Any]]:
    """(mask items, the dataset holding their annotations or None, what the manifest records of where they came
    from) of ``vcmbench masks``: a folder (``--images``, with ``--annotations`` a COCO-layout one) or a dataset
    card's split (``--dataset``, ``--split``)."""
    from ..masks import MaskError

    if args.images and (args.dataset or args.split):
        raise MaskError("say which images one way: --images DIR (with --annotations FILE for --source coco) or "
                        "--dataset NAME / --split SPLIT (with --data-root)")  # fmt: skip
    if args.images and args.annotations:
        dataset, info = _annotated_folder(args)
    elif args.images:
        return _folder_items(args), None, {"images": str(Path(args.images).resolve())}
    elif args.dataset or args.split:
        dataset, info = _dataset_split(args)
    else:
        raise MaskError("say which images: --dataset NAME --split SPLIT (with --data-root), --images DIR, or "
                        "--images DIR --annotations FILE (COCO layout)")  # fmt: skip
    return _dataset_items(args, dataset), dataset, info


def _folder_items(args: argparse.Namespace) -> list[Any]:
    from ..masks import MaskError, MaskItem
    from .lic import list_images

    if args.source == "coco":
        raise MaskError(f"--source coco needs the ground-truth annotations of {args.images}: add --annotations "
                        "FILE (a COCO instances JSON), or use --dataset coco --split SPLIT --data-root DIR")  # fmt: skip
    files = list_images(args.images, args.limit)
    return [MaskItem(p.stem, p) for p in files]


def _annotated_folder(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The coco dataset adapter over any folder of images and its instances JSON (``--images`` +
    ``--annotations``): the folder is the split, its parent the root."""
    from ..adapters import build
    from ..cards import CardSet

    folder = Path(args.images).expanduser().resolve()
    annotations = Path(args.annotations).expanduser().resolve()
    card = CardSet([Path(d) for d in args.cards]).get("dataset", "coco")
    card = card.with_settings(root=str(folder.parent), split=folder.name, annotations=str(annotations))
    dataset = build(card)
    dataset.check()
    return dataset, {"images": str(folder), "annotations": str(annotations), "card_digest": card.digest()}


def _dataset_split(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A dataset card (``--dataset``, coco when only ``--split`` is given) set to ``--data-root`` and
    ``--split``; a split's annotation file is ``annotations/instances_<split>.json`` unless ``--annotations``."""
    from ..adapters import build
    from ..cards import CardSet
    from ..masks import MaskError

    name = args.dataset or "coco"
    card = CardSet([Path(d) for d in args.cards]).get("dataset", name)
    if args.data_root:
        card = card.with_settings(root=args.data_root)
    for option, key in (("--split", "split"), ("--annotations", "annotations")):
        if getattr(args, key) and key not in card.settings:
            raise MaskError(f"{option}: dataset {name} ({card.path}) has no {key!r} setting; leave {option} out")
    if args.split:
        card = card.with_settings(split=args.split)
        if "annotations" in card.settings:
            card = card.with_settings(annotations=args.annotations or f"annotations/instances_{args.split}.json")
    elif args.annotations:
        card = card.with_settings(annotations=args.annotations)
    dataset = build(card)
    dataset.check()
    info = {"name": name, "root": str(getattr(dataset, "root", "")), "card_digest": card.digest(),
            "split": card.settings.get("split"), "annotations": str(getattr(dataset, "annotation_file", "")) or None}  # fmt: skip
    return dataset, info


def _dataset_items(args: argparse.Namespace, dataset: Any) -> list[Any]:
    from ..masks import MaskItem

    ids = [t.strip() for t in args.ids.split(",")] if args.ids else None
    items = []
    for it in dataset.items(limit=args.limit, ids=ids):
        image_id = it.meta.get("image_id") if it.meta else None
        items.append(MaskItem(it.id, it.path, int(image_id) if image_id is not None else None))
    return items


def add_train_parser(sub: Any) -> None:
    summary = "train a learned codec: lic, objicm (object masks), saicm (SAM edges), tlicm"
    t = sub.add_parser("train", help=summary, description=summary,
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    t.add_argument("--codec", required=True, choices=["lic", "objicm", "saicm", "tlicm"], help="training objective")
    t.add_argument("--train-dir", required=True, help="folder of training images (searched recursively)")
    t.add_argument("--masks", default=None, help="mask folder from `vcmbench masks` (objicm, saicm)")
    t.add_argument("--out", required=True, help="output folder (last.pt, log.csv, tb/, final.pt)")
    t.add_argument("--lambda", dest="lmbda", type=float, required=True,
                   help="rate-distortion trade-off λ (weight of 255²·MSE; tlicm may use 0)")
    t.add_argument("--lambda2", type=float, default=0.0,
                   help="tlicm: weight of the detection loss (task) or of the feature MSE (features)")
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
    t.add_argument("--detector-weights", default=None,
                   help="tlicm: the YOLOv5 .pt the objective goes through (frozen)")
    t.add_argument("--tl-objective", choices=["task", "features"], default="task",
                   help="tlicm: task = YOLOv5's detection loss of the decoded crop against --annotations' boxes "
                        "(the paper's TL-ICM); features = MSE of the detector's first --feature-layers layers [task]")
    t.add_argument("--annotations", default=None,
                   help="tlicm task loss: COCO instances JSON of the --train-dir images (boxes, categories)")
    t.add_argument("--feature-layers", type=int, default=5, help="tlicm features: how many YOLOv5 layers form F [5]")
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
        detector_weights=args.detector_weights, feature_layers=args.feature_layers, tl_objective=args.tl_objective,
        annotations=args.annotations, resume=not args.no_resume,
        tensorboard=not args.no_tensorboard, progress=not args.no_progress,
    )  # fmt: skip
    result = train(cfg)
    print(json.dumps({"checkpoint": str(result.checkpoint), "sha256": result.sha256, "steps": result.steps,
                      "final_eval": result.final_eval, "train_seconds": round(result.seconds, 1)}, indent=1))  # fmt: skip
    print("\ncard entry (codecs/<codec>.yaml, settings.rate_points):\n"
          f"  N: {{{card_keys(result.checkpoint)}checkpoint: {result.checkpoint}, sha256: {result.sha256}}}")  # fmt: skip
    return 0


def card_keys(checkpoint: Path) -> str:
    """``lambda: ..., `` and the other rate-point keys a card checks (lambda2 and tl_objective of tlicm, the SAM
    threshold alpha of saicm), as the checkpoint records them."""
    from ..models.lic import read_checkpoint_file

    meta = read_checkpoint_file(checkpoint)["meta"]
    keys = {"lambda": meta.get("lambda")}
    if meta.get("loss") == "tlicm":
        keys.update(lambda2=meta.get("lambda2"), tl_objective=meta.get("tl_objective"))
    params = (meta.get("masks_params") or {}).get("params") or {}
    if meta.get("loss") == "saicm" and params.get("source") == "sam":
        keys["alpha"] = params.get("alpha")
    return "".join(f"{k}: {v}, " for k, v in keys.items() if v is not None)
