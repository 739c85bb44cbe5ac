"""Panoptic-DeepLab panoptic segmentation scored with PQ / SQ / RQ.

Cheng et al., "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for Bottom-Up
Panoptic Segmentation", CVPR 2020. The network and the grouping post-process are
:mod:`vcmbench.models.panoptic_deeplab`. Weights come in two formats:

- ``format: detectron2``: a detectron2 model-zoo checkpoint (``.pkl``), by default the
  Cityscapes R52-DC5 model (PQ 60.3 / SQ 81.5 / RQ 72.9 on Cityscapes val with
  detectron2), loaded through :func:`~vcmbench.models.panoptic_deeplab.load_detectron2_checkpoint`;
  the architecture is :data:`CITYSCAPES_R52_DC5` with the card's ``config`` overrides;
- ``format: vcmbench``: a file written by :mod:`vcmbench.train.synth_models` that carries
  its architecture, thing classes and weights (fp16).

Inference follows detectron2's: shorter side resized to ``min_size`` unless the longer
would exceed ``max_size`` (Cityscapes' 1024x2048 stays as is; ``min_size: null`` never
resizes), pixel mean/std normalisation, zero padding to a multiple of 32, outputs upsampled
x4 and cropped; when the image was resized, the maps are resized back to the original
size before grouping and offsets rescaled with them. Post-process defaults are
detectron2's (centre threshold 0.1, NMS kernel 7, top-200 centres, stuff area 2048).

Predictions per image: ``{"height", "width", "png": base64 COCO panoptic PNG (segment
id = R + 256 G + 256^2 B, 0 = void), "segments_info": [{"id", "class", "isthing",
"area", "score" (things)}]}``; ``class`` is the model's class index, mapped to the
dataset's category ids at evaluation (``categories``, or the dataset's panoptic
categories sorted by id, which is detectron2's contiguous-id convention).

Scores: PQ/SQ/RQ for all, things and stuff (:mod:`vcmbench.metrics.panoptic`; with
cityscapesscripts' evaluator when the dataset is Cityscapes), and instance mask AP of the
thing segments (``ap``, ``ap50``; score = semantic probability x centre heatmap, as in
detectron2) when the dataset also has COCO instance ground truth; on Cityscapes (instanceIds
ground truth) ``ap``, ``ap50`` and per class ``ap_<class>``, ``ap50_<class>`` are the instance-level
AP of cityscapesscripts' ``evalInstanceLevelSemanticLabeling``
(:mod:`vcmbench.metrics.cityscapes_instances`). PQ stays the headline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from ..cards import Card, resolve_card_path
from ..contracts import CocoInstances, InstanceIdMaps, PanopticSource
from ..errors import WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256
from ..registry import register
from ..weights import resolve_weights
from .base import Task

if TYPE_CHECKING:
    from ..models.panoptic_deeplab import PanopticDeepLab, PostProcessConfig

__all__ = ["IMPL_VERSION", "PanopticDeepLabTask", "load_vcmbench_panoptic", "save_vcmbench_panoptic"]

IMPL_VERSION = "1"
FORMATS = ("detectron2", "vcmbench")
FILE_FORMAT = "vcmbench.panoptic_deeplab"


def save_vcmbench_panoptic(
    path: str | Path, model: PanopticDeepLab, thing_classes: Sequence[int], meta: Mapping[str, Any] | None = None,
    half: bool = True,
) -> None:
    """Write a model as ``{"format", "config", "thing_classes", "meta", "state_dict"}`` (fp16 floats by default)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    torch.save(
        {"format": FILE_FORMAT, "config": model.config.to_dict(), "thing_classes": [int(c) for c in thing_classes],
         "meta": dict(meta or {}), "state_dict": state},
        str(path),
    )  # fmt: skip


def load_vcmbench_panoptic(path: str | Path) -> tuple[PanopticDeepLab, list[int]]:
    """Inverse of :func:`save_vcmbench_panoptic`: (model in eval mode, float32; thing classes)."""
    from ..models.panoptic_deeplab import PanopticDeepLab, PanopticDeepLabConfig

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read Panoptic-DeepLab weights {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != FILE_FORMAT:
        raise WeightsError(f"{path} is not a {FILE_FORMAT} file; for a detectron2 .pkl set format: detectron2")
    model = PanopticDeepLab(PanopticDeepLabConfig.from_dict(obj["config"]))
    ref = model.state_dict()
    try:
        model.load_state_dict({k: v.to(ref[k].dtype) if k in ref else v for k, v in obj["state_dict"].items()})
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit their own config: {str(exc)[:600]}") from None
    return model.eval(), [int(c) for c in obj["thing_classes"]]


@register("task", "panoptic_deeplab")
class PanopticDeepLabTask(Task):
    """Panoptic-DeepLab (native PyTorch), PQ/SQ/RQ + instance AP."""

    metrics: ClassVar[tuple[str, ...]] = ("pq", "pq_th", "pq_st")
    location_settings: ClassVar[tuple[str, ...]] = ("weights", "url")
    #: PQ needs panoptic ground truth; a dataset that also has COCO instances gets mask AP of the things, one
    #: with Cityscapes instanceIds maps (:class:`InstanceIdMaps`) Cityscapes' instance-level AP
    requires: ClassVar[tuple[type, ...]] = (PanopticSource,)

    def __init__(
        self,
        weights: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        format: str = "detectron2",
        config: Mapping[str, Any] | None = None,
        thing_classes: Sequence[int] | None = None,
        categories: Sequence[int] | None = None,
        center_threshold: float = 0.1,
        nms_kernel: int = 7,
        top_k: int = 200,
        stuff_area: int = 2048,
        min_size: int | None = 1024,
        max_size: int | None = 2048,
        batch_size: int = 1,
        device: str = "auto",
    ) -> None:
        if format not in FORMATS:
            raise ValueError(f"panoptic_deeplab: format must be one of {', '.join(FORMATS)}, got {format!r}")
        if format == "vcmbench" and config:
            raise ValueError("panoptic_deeplab: a vcmbench weights file carries its own config; leave config: empty")
        if not 0 <= float(center_threshold) <= 1:
            raise ValueError(f"panoptic_deeplab: center_threshold must lie in [0, 1], got {center_threshold}")
        if int(nms_kernel) < 1 or int(nms_kernel) % 2 == 0:
            raise ValueError(f"panoptic_deeplab: nms_kernel must be a positive odd integer, got {nms_kernel}")
        if int(top_k) < 1 or int(stuff_area) < 0 or int(batch_size) < 1:
            raise ValueError("panoptic_deeplab: top_k and batch_size must be >= 1, stuff_area >= 0")
        if config:
            from ..models.panoptic_deeplab import CITYSCAPES_R52_DC5, PanopticDeepLabConfig

            PanopticDeepLabConfig.from_dict({**CITYSCAPES_R52_DC5.to_dict(), **dict(config)})  # validates keys
        self.weights = weights
        self.url = url
        self.sha256 = sha256
        self.format = format
        self.config = dict(config or {})
        self.thing_classes = [int(c) for c in thing_classes] if thing_classes is not None else None
        self.categories = [int(c) for c in categories] if categories is not None else None
        self.center_threshold = float(center_threshold)
        self.nms_kernel = int(nms_kernel)
        self.top_k = int(top_k)
        self.stuff_area = int(stuff_area)
        self.min_size = int(min_size) if min_size else None
        self.max_size = int(max_size) if max_size else None
        self.batch_size = int(batch_size)
        self.device = device
        self.name = "panoptic_deeplab"
        self._weights_path: Path | None = None
        self._model: PanopticDeepLab | None = None
        self._pp: PostProcessConfig | None = None
        self._device: torch.device | None = None

    @classmethod
    def from_card(cls, card: Card) -> PanopticDeepLabTask:
        settings = dict(card.settings)
        settings["weights"] = resolve_card_path(settings.get("weights"), card)
        task = cls(**settings)
        task.name = card.name
        task.card_settings = dict(card.settings)
        return task

    # -- identity -------------------------------------------------------------------------------
    def weights_path(self) -> Path:
        if self._weights_path is None:
            if self.weights:
                filename = Path(self.weights).name
            elif self.url:
                filename = Path(urlparse(self.url).path).name
                # detectron2 names every zoo file model_final_<id>.pkl: keep the model folder in the name
                parent = Path(urlparse(self.url).path).parent.name
                filename = f"{parent}_{filename}" if parent else filename
            else:
                raise WeightsError(f"task {self.name}: no weights: set `weights:` or `url:` in its card")
            self._weights_path = resolve_weights(self.weights, self.url, self.sha256, filename, f"task {self.name}")
        return self._weights_path

    def version(self) -> str:
        return f"{IMPL_VERSION}+{self.format}+weights.sha256:{file_sha256(self.weights_path())}"

    # -- model ----------------------------------------------------------------------------------
    def load(self) -> None:
        if self._model is not None:
            return
        from ..models.panoptic_deeplab import (
            CITYSCAPES_R52_DC5,
            PanopticDeepLabConfig,
            PostProcessConfig,
            load_detectron2_checkpoint,
        )

        self._device = resolve_device(self.device, self.name)
        path = self.weights_path()
        if self.format == "detectron2":
            cfg = PanopticDeepLabConfig.from_dict({**CITYSCAPES_R52_DC5.to_dict(), **self.config})
            model = load_detectron2_checkpoint(path, cfg)
            things = list(range(11, 19)) if cfg.num_classes == 19 else []
        else:
            model, things = load_vcmbench_panoptic(path)
        if self.thing_classes is not None:
            things = self.thing_classes
        n = model.config.num_classes
        bad = [c for c in things if not 0 <= c < n]
        if bad:
            raise ValueError(f"{self.name}: thing_classes {bad} outside the model's {n} classes")
        self._pp = PostProcessConfig(tuple(things), self.center_threshold, self.nms_kernel, self.top_k, self.stuff_area)
        self._model = model.to(self._device).eval()

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        """detectron2's ResizeShortestEdge at test time (min_size, max_size)."""
        if not self.min_size:
            return h, w
        scale = self.min_size / min(h, w)
        if self.max_size and max(h, w) * scale > self.max_size:
            scale = self.max_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    # -- inference ------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        from ..metrics.panoptic import encode_id_png
        from ..models.panoptic_deeplab import panoptic_from_outputs

        if self._model is None:
            self.load()
        assert self._model is not None and self._pp is not None
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{self.name}: expected HxWx3 uint8 RGB images, got {im.shape} {im.dtype}")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        out: list[dict[str, Any]] = [{} for _ in images]
        with torch.inference_mode():
            for members in groups.values():
                for s in range(0, len(members), self.batch_size):
                    chunk = members[s : s + self.batch_size]
                    h, w = images[chunk[0]].shape[:2]
                    x = torch.stack([torch.from_numpy(np.array(images[i])) for i in chunk])
                    x = x.to(self._device).permute(0, 3, 1, 2).float()
                    ih, iw = self._input_size(h, w)
                    if (ih, iw) != (h, w):
                        x = F.interpolate(x, size=(ih, iw), mode="bilinear", align_corners=False)
                    res = self._model.infer(x)
                    if (ih, iw) != (h, w):
                        res = {k: F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False) for k, v in res.items()}
                        res["offset"] = res["offset"] * torch.tensor([h / ih, w / iw], device=x.device).view(1, 2, 1, 1)
                    for j, i in enumerate(chunk):
                        ids, segs = panoptic_from_outputs(res["semantic"][j], res["center"][j], res["offset"][j], self._pp)
                        out[i] = {"height": h, "width": w, "png": encode_id_png(ids), "segments_info": segs}
        return out

    # -- scoring --------------------------------------------------------------------------------
    def category_ids(self, dataset_categories: Sequence[Mapping[str, Any]]) -> list[int]:
        """Dataset category id of each model class."""
        if self.categories is not None:
            return self.categories
        return [int(c["id"]) for c in sorted(dataset_categories, key=lambda c: int(c["id"]))]

    def evaluate(self, predictions: Mapping[str, Any], dataset: PanopticSource) -> dict[str, float]:
        from ..metrics.panoptic import evaluate_predictions

        gt = dataset.panoptic_gt()
        cats = self.category_ids(gt.categories)
        by_image = {}
        for item_id, p in predictions.items():
            segs = []
            for s in p["segments_info"]:
                if not 0 <= s["class"] < len(cats):
                    raise ValueError(
                        f"{self.name}: model class {s['class']} has no dataset category ({len(cats)} categories: "
                        f"{cats}); set categories: in the card"
                    )
                segs.append({"id": s["id"], "category_id": cats[s["class"]]})
            by_image[dataset.panoptic_image_id(item_id)] = {"png": p["png"], "segments_info": segs}
        metrics = evaluate_predictions(by_image, gt)
        if isinstance(dataset, CocoInstances):
            metrics.update(self._instance_ap(predictions, dataset, cats))
        elif isinstance(dataset, InstanceIdMaps):
            metrics.update(self._cityscapes_ap(predictions, dataset, cats))
        return metrics

    def _cityscapes_ap(self, predictions: Mapping[str, Any], dataset: InstanceIdMaps, cats: list[int]) -> dict[str, float]:
        """Cityscapes instance-level AP of the thing segments against the instanceIds maps (``ap``, ``ap50``, and
        ``ap_<class>``, ``ap50_<class>``), as cityscapesscripts' evalInstanceLevelSemanticLabeling computes it."""
        from ..metrics.cityscapes_instances import evaluate, image_regions_from_segments, read_instance_ids
        from ..metrics.panoptic import decode_id_png

        images = []
        for item_id, p in predictions.items():
            things = [(s["id"], cats[s["class"]], float(s.get("score", 1.0))) for s in p["segments_info"] if s["isthing"]]
            gt_ids = read_instance_ids(dataset.instance_ids_file(item_id))
            images.append(image_regions_from_segments(gt_ids, decode_id_png(p["png"]), things, name=f"{self.name} {item_id}"))
        return evaluate(images).metrics()

    def _instance_ap(self, predictions: Mapping[str, Any], dataset: CocoInstances, cats: list[int]) -> dict[str, float]:
        """Mask AP of the thing segments against the dataset's COCO instances (``ap``, ``ap50``)."""
        from ..metrics.coco_map import coco_segm_eval, encode_masks
        from ..metrics.panoptic import decode_id_png

        gt = dataset.coco_gt()
        img_ids = [dataset.image_id(k) for k in predictions]
        if not all("segmentation" in a for a in gt.loadAnns(gt.getAnnIds(imgIds=img_ids))):
            return {}  # boxes only: no mask AP
        results = []
        for item_id, p in predictions.items():
            image_id = dataset.image_id(item_id)
            things = [s for s in p["segments_info"] if s["isthing"]]
            if not things:
                continue
            ids = decode_id_png(p["png"])
            rles = encode_masks(np.stack([ids == s["id"] for s in things]))
            for s, rle in zip(things, rles, strict=True):
                results.append({"image_id": image_id, "category_id": cats[s["class"]], "score": s.get("score", 1.0),
                                "segmentation": rle})  # fmt: skip
        m = coco_segm_eval(gt, results, img_ids)
        return {"ap": m["segm_map"], "ap50": m["segm_map50"]}
