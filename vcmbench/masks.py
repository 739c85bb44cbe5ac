"""Training masks for region-weighted learned codecs: SAM edges (SA-ICM), object masks (Object-ICM), classical edges.

Sources (``vcmbench masks --source ...``):

- ``sam``: the automatic mask generator of Segment Anything (Kirillov et al.,
  "Segment Anything", ICCV 2023) -> a segmentation map -> Canny edges
  (Canny, PAMI 1986) -> optional dilation. This is how SA-ICM (Shindo et al.,
  "Image Coding for Machines with Edge Information Learning Using Segment
  Anything", ICIP 2024) makes its training masks. The paper's confidence α
  (0.78 or 0.93 for its released models) is not mapped to a SAM setting in
  the paper; **our reading** is SAM's predicted-IoU threshold
  (``pred_iou_thresh``), which ``--alpha`` sets; ``--stability-thresh`` and the
  other generator settings stay overridable. Canny thresholds and the dilation are
  unpublished: they are parameters and are recorded in the manifest.
- ``coco``: the union of a COCO image's ground-truth object masks (every
  annotation, crowd regions included): the filled masks Object-ICM trains with.
- ``felzenszwalb`` / ``slic``: a weights-free classical segmentation from
  scikit-image (Felzenszwalb & Huttenlocher, IJCV 2004; Achanta et al., PAMI
  2012) -> the same edge path as SAM. A stand-in for offline use when no SAM
  weights are available; it is not what the paper used.

Edges of a segmentation map: every segment (and the uncovered background) is
rendered as its own binary layer, Canny runs on each layer and the results are
OR-ed. Running Canny on one image of label values instead would miss the
boundary between two labels whose values happen to be close.

Output: ``<out>/<item id>.png`` (uint8, 255 = mask) and ``<out>/manifest.json``
holding every parameter, the software versions, the SAM checkpoint's sha256
and one entry per image (its sha256, coverage, segment count, seconds). A
folder belongs to one parameter set: running again with the same parameters
skips the images already done (resume); different parameters are refused
unless ``overwrite`` is set.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VcmbenchError, WeightsError
from .media.devices import resolve_device
from .media.hashing import file_sha256, stable_hash
from .media.image import read_rgb

__all__ = [
    "SAM_CHECKPOINTS",
    "SOURCES",
    "EdgeParams",
    "MaskError",
    "MaskItem",
    "MaskParams",
    "label_edges",
    "make_masks",
    "read_manifest",
]

SOURCES = ("sam", "coco", "felzenszwalb", "slic")
MANIFEST = "manifest.json"
FORMAT = "vcmbench-masks"
FORMAT_VERSION = 1

#: official Segment Anything checkpoints: model type -> (url, sha256)
SAM_CHECKPOINTS: dict[str, tuple[str, str]] = {
    "vit_h": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
    ),
    "vit_l": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
    ),
    "vit_b": (
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
    ),
}
#: a SAM with a 2-layer, 64-wide image encoder and random weights: exercises the real SAM code
#: path in tests; its masks are meaningless
TINY_RANDOM = "tiny-random"


class MaskError(VcmbenchError):
    """A mask folder, source or parameter problem; the message says how to fix it."""


@dataclass(frozen=True)
class EdgeParams:
    """Canny on each segment's binary layer, then an optional square dilation."""

    canny_low: float = 100.0
    canny_high: float = 200.0
    canny_aperture: int = 3
    canny_l2: bool = False
    #: side of the square dilation kernel in pixels (0 or 1: no dilation)
    dilate: int = 0
    dilate_iterations: int = 1


@dataclass(frozen=True)
class MaskParams:
    """Every setting that determines a mask; hashed into the manifest."""

    source: str
    edges: EdgeParams = field(default_factory=EdgeParams)
    # -- sam
    sam_model: str = "vit_h"
    #: our reading of SA-ICM's α: SAM's predicted-IoU threshold
    alpha: float = 0.93
    points_per_side: int = 32
    points_per_batch: int = 64
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    min_mask_region_area: int = 0
    #: seed of the random weights of the tiny test model (ignored for real checkpoints)
    seed: int = 0
    # -- felzenszwalb
    fz_scale: float = 300.0
    fz_sigma: float = 0.8
    fz_min_size: int = 200
    # -- slic
    slic_segments: int = 150
    slic_compactness: float = 10.0
    # -- coco
    include_crowd: bool = True

    def relevant(self) -> dict[str, Any]:
        """Only the settings that matter for this source (what the manifest records and hashes)."""
        d = asdict(self)
        keep = {"source"}
        if self.source in ("sam", "felzenszwalb", "slic"):
            keep.add("edges")
        if self.source == "sam":
            keep |= {"sam_model", "alpha", "points_per_side", "points_per_batch", "stability_score_thresh",
                     "box_nms_thresh", "crop_n_layers", "min_mask_region_area"}  # fmt: skip
            if self.sam_model == TINY_RANDOM:
                keep.add("seed")
        elif self.source == "felzenszwalb":
            keep |= {"fz_scale", "fz_sigma", "fz_min_size"}
        elif self.source == "slic":
            keep |= {"slic_segments", "slic_compactness"}
        elif self.source == "coco":
            keep |= {"include_crowd", "edges"}
        return {k: v for k, v in d.items() if k in keep}

    def check(self) -> None:
        if self.source not in SOURCES:
            raise MaskError(f"unknown mask source {self.source!r}; choose one of {', '.join(SOURCES)}")
        if self.source == "sam" and self.sam_model not in (*SAM_CHECKPOINTS, TINY_RANDOM):
            raise MaskError(f"unknown SAM model {self.sam_model!r}; choose {', '.join(SAM_CHECKPOINTS)} "
                            f"(or {TINY_RANDOM} for tests)")  # fmt: skip
        if not 0.0 <= self.alpha <= 1.0:
            raise MaskError(f"--alpha (SAM pred_iou_thresh) must lie in [0, 1], got {self.alpha}")
        e = self.edges
        if e.canny_aperture not in (3, 5, 7):
            raise MaskError(f"Canny aperture must be 3, 5 or 7, got {e.canny_aperture}")
        if e.dilate < 0 or e.dilate_iterations < 1:
            raise MaskError("dilation kernel must be >= 0 and iterations >= 1")


@dataclass(frozen=True)
class MaskItem:
    """One image to make a mask for."""

    id: str
    path: Path
    #: COCO image id (``--source coco`` only)
    image_id: int | None = None


# ---- segmentation -> edges ------------------------------------------------------------------
def label_edges(labels: np.ndarray, params: EdgeParams) -> np.ndarray:
    """Edges (uint8, 0/255) of a label map: Canny on each label's binary layer, OR-ed, then dilated."""
    import cv2

    labels = np.asarray(labels)
    edges = np.zeros(labels.shape, dtype=np.uint8)
    for value in np.unique(labels):
        layer = np.where(labels == value, 255, 0).astype(np.uint8)
        edges |= cv2.Canny(layer, params.canny_low, params.canny_high,
                           apertureSize=params.canny_aperture, L2gradient=params.canny_l2)  # fmt: skip
    return dilate(edges, params)


def dilate(mask: np.ndarray, params: EdgeParams) -> np.ndarray:
    import cv2

    if params.dilate <= 1:
        return mask
    kernel = np.ones((params.dilate, params.dilate), dtype=np.uint8)
    return cv2.dilate(mask, kernel, iterations=params.dilate_iterations)


def masks_to_labels(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Paint boolean masks into a label map, largest first, so smaller segments stay visible (0 = uncovered)."""
    labels = np.zeros(shape, dtype=np.int32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for rank, i in enumerate(order, start=1):
        labels[masks[i]] = rank
    return labels


# ---- sources ------------------------------------------------------------------------------------
class _SamSource:
    def __init__(self, params: MaskParams, checkpoint: str | None, device: str) -> None:
        import torch

        self.params = params
        self.device = resolve_device(device, "masks", MaskError)
        self.checkpoint_sha256: str | None = None
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        from segment_anything.build_sam import _build_sam

        if params.sam_model == TINY_RANDOM:
            torch.manual_seed(params.seed)
            sam = _build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                             encoder_global_attn_indexes=[1], checkpoint=None)  # fmt: skip
            self.weights = f"random (seed {params.seed}); a test model, not a segmenter"
        else:
            path = resolve_sam_checkpoint(params.sam_model, checkpoint)
            self.checkpoint_sha256 = file_sha256(path)
            sam = sam_model_registry[params.sam_model](checkpoint=str(path))
            self.weights = str(path)
        sam.to(self.device).eval()
        self.generator = SamAutomaticMaskGenerator(
            sam,
            points_per_side=params.points_per_side,
            points_per_batch=params.points_per_batch,
            pred_iou_thresh=params.alpha,
            stability_score_thresh=params.stability_score_thresh,
            box_nms_thresh=params.box_nms_thresh,
            crop_n_layers=params.crop_n_layers,
            min_mask_region_area=params.min_mask_region_area,
            output_mode="binary_mask",
        )

    def __call__(self, image: np.ndarray, item: MaskItem) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        with torch.inference_mode():
            found = self.generator.generate(image)
        labels = masks_to_labels([m["segmentation"] for m in found], image.shape[:2])
        return label_edges(labels, self.params.edges), {"segments": len(found)}

    def detail(self) -> dict[str, Any]:
        return {"sam_weights": self.weights, "sam_checkpoint_sha256": self.checkpoint_sha256,
                "device": str(self.device)}  # fmt: skip


class _ClassicalSource:
    def __init__(self, params: MaskParams) -> None:
        self.params = params

    def __call__(self, image: np.ndarray, item: MaskItem) -> tuple[np.ndarray, dict[str, Any]]:
        from skimage import segmentation

        p = self.params
        if p.source == "felzenszwalb":
            labels = segmentation.felzenszwalb(image, scale=p.fz_scale, sigma=p.fz_sigma, min_size=p.fz_min_size)
        else:
            labels = segmentation.slic(image, n_segments=p.slic_segments, compactness=p.slic_compactness,
                                       start_label=1)  # fmt: skip
        return label_edges(labels, p.edges), {"segments": int(len(np.unique(labels)))}

    def detail(self) -> dict[str, Any]:
        return {}


class _CocoSource:
    def __init__(self, params: MaskParams, dataset: Any) -> None:
        if dataset is None or not hasattr(dataset, "coco_gt"):
            raise MaskError("--source coco needs a COCO dataset with annotations (--dataset coco --data-root DIR)")
        self.params = params
        self.coco = dataset.coco_gt()
        self.annotation_file = str(getattr(dataset, "annotation_file", ""))

    def __call__(self, image: np.ndarray, item: MaskItem) -> tuple[np.ndarray, dict[str, Any]]:
        if item.image_id is None:
            raise MaskError(f"item {item.id}: no COCO image id")
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[item.image_id], iscrowd=None))
        if not self.params.include_crowd:
            anns = [a for a in anns if not a.get("iscrowd")]
        mask = np.zeros(image.shape[:2], dtype=np.uint8)
        for ann in anns:
            m = self.coco.annToMask(ann)
            if m.shape != mask.shape:
                raise MaskError(f"item {item.id}: annotation size {m.shape} differs from the image {mask.shape}")
            mask[m > 0] = 255
        return dilate(mask, self.params.edges), {"segments": len(anns)}

    def detail(self) -> dict[str, Any]:
        return {"annotations": self.annotation_file,
                "annotations_sha256": file_sha256(self.annotation_file) if self.annotation_file else None}  # fmt: skip


def resolve_sam_checkpoint(model: str, checkpoint: str | None) -> Path:
    """A verified SAM checkpoint: the given path (checked against the official sha256) or a download into the cache."""
    from .weights import resolve_weights

    url, sha = SAM_CHECKPOINTS[model]
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise MaskError(f"SAM checkpoint {path} not found; pass --sam-checkpoint PATH or leave it out to "
                            f"download {url}")  # fmt: skip
        actual = file_sha256(path)
        if actual != sha:
            raise WeightsError(f"SAM checkpoint {path} is not the official {model} file (sha256 {actual}, "
                               f"expected {sha}); pass the right --sam-model or file")  # fmt: skip
        return path
    return resolve_weights(None, url, sha, Path(url).name, f"masks sam-{model}")


def build_source(params: MaskParams, dataset: Any = None, sam_checkpoint: str | None = None,
                 device: str = "auto") -> Any:  # fmt: skip
    """The callable ``(image, item) -> (mask, info)`` of a source."""
    params.check()
    if params.source == "sam":
        return _SamSource(params, sam_checkpoint, device)
    if params.source == "coco":
        return _CocoSource(params, dataset)
    return _ClassicalSource(params)


# ---- manifest + driver --------------------------------------------------------------------------
def software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("vcmbench", "segment-anything", "opencv-python-headless", "opencv-python", "scikit-image", "torch",
                "pycocotools"):  # fmt: skip
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a mask folder; a missing or foreign one is a :class:`MaskError`."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskError(f"{path} not found: {folder} is not a mask folder (make one with `vcmbench masks`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise MaskError(f"cannot read {path}: {exc}") from None
    if data.get("format") != FORMAT:
        raise MaskError(f"{path} is not a vcmbench mask manifest")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)


def _write_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(mask, "L").save(tmp, optimize=True)
    os.replace(tmp, path)


@dataclass
class MaskRun:
    out: Path
    made: int
    skipped: int
    failed: dict[str, str]
    manifest: dict[str, Any]


def make_masks(
    items: Iterable[MaskItem],
    out: str | os.PathLike[str],
    params: MaskParams,
    source: Callable[[np.ndarray, MaskItem], tuple[np.ndarray, dict[str, Any]]] | None = None,
    *,
    dataset: Any = None,
    dataset_info: dict[str, Any] | None = None,
    sam_checkpoint: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    save_every: int = 20,
    log: Callable[[str], None] | None = None,
) -> MaskRun:
    """Make (or resume) a mask folder for ``items``; returns what was made, skipped and failed."""
    params.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    relevant = params.relevant()
    phash = stable_hash(relevant)
    manifest = _existing_manifest(out, relevant, phash, overwrite)
    done: dict[str, Any] = dict(manifest.get("items", {})) if manifest else {}
    todo, skipped = _masks_to_make(items, done, out)
    if source is None and todo:
        source = build_source(params, dataset, sam_checkpoint, device)
    detail = source.detail() if source is not None and hasattr(source, "detail") else manifest.get("source_detail", {})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": relevant,
        "params_hash": phash,
        "interpretation": (
            "alpha is used as SAM's pred_iou_thresh (our reading of SA-ICM; the paper does not say)"
            if params.source == "sam" else None
        ),
        "source_detail": detail,
        "software": software_versions(),
        "dataset": dataset_info or manifest.get("dataset") or {},
        "items": done,
    }
    failed: dict[str, str] = {}
    iterator: Iterable[tuple[MaskItem, str]] = todo
    if progress and todo:
        from tqdm import tqdm

        iterator = tqdm(todo, desc=f"masks ({params.source})", dynamic_ncols=True)
    made = 0
    for n, (item, sha) in enumerate(iterator, start=1):
        assert source is not None
        try:
            done[item.id] = _make_one(item, sha, source, out)
        except VcmbenchError as exc:
            failed[item.id] = str(exc)
            if log:
                log(f"masks: item {item.id} ({item.path}) failed: {exc}")
            continue
        made += 1
        if n % save_every == 0:
            _write_json(out / MANIFEST, manifest)
    _write_json(out / MANIFEST, manifest)
    return MaskRun(out, made, skipped, failed, manifest)


def mask_index(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Image file name -> mask PNG path, for every image of a mask folder (used by training)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    out = {}
    for entry in manifest["items"].values():
        out[entry["image"]] = folder / entry["mask"]
    return out


def _existing_manifest(out: Path, relevant: dict[str, Any], phash: str, overwrite: bool) -> dict[str, Any]:
    """The manifest already in ``out`` when its masks were made with these parameters; ``{}`` when there is
    none, or when ``overwrite`` lets masks of other parameters be deleted (else those are an error)."""
    if not (out / MANIFEST).exists():
        return {}
    manifest = read_manifest(out)
    if manifest.get("params_hash") == phash:
        return manifest
    if not overwrite:
        old = manifest.get("params", {})
        diff = {k: (old.get(k), v) for k, v in relevant.items() if old.get(k) != v}
        diff.update({k: (v, None) for k, v in old.items() if k not in relevant})
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise MaskError(f"{out} holds masks made with other parameters ({shown}); choose another --out "
                        "or pass --overwrite to replace them")  # fmt: skip
    for entry in manifest.get("items", {}).values():
        (out / entry["mask"]).unlink(missing_ok=True)
    return {}


def _masks_to_make(items: Iterable[MaskItem], done: dict[str, Any], out: Path) -> tuple[list[tuple[MaskItem, str]], int]:
    """(item, image sha256) of the items without a current mask, and how many already have one."""
    todo: list[tuple[MaskItem, str]] = []
    skipped = 0
    for item in items:
        sha = file_sha256(item.path)
        entry = done.get(item.id)
        if entry and entry.get("image_sha256") == sha and (out / entry["mask"]).is_file():
            skipped += 1
            continue
        todo.append((item, sha))
    return todo, skipped


def _make_one(item: MaskItem, sha: str, source: Callable[[np.ndarray, MaskItem], tuple[np.ndarray, dict[str, Any]]],
              out: Path) -> dict[str, Any]:  # fmt: skip
    """Make and write one item's mask; its manifest entry."""
    image = read_rgb(item.path, item.id)
    t0 = time.perf_counter()
    mask, info = source(image, item)
    seconds = time.perf_counter() - t0
    name = f"{item.id}.png"
    _write_png(out / name, mask)
    return {
        "image": item.path.name, "image_path": str(item.path), "image_sha256": sha, "mask": name,
        "height": int(mask.shape[0]), "width": int(mask.shape[1]),
        "coverage": round(float((mask > 0).mean()), 6), "seconds": round(seconds, 3), **info,
    }  # fmt: skip
