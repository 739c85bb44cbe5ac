"""Mask R-CNN instance segmentation scored with COCO box and mask mAP (pycocotools).

He et al., "Mask R-CNN", ICCV 2017. The default backend runs torchvision's models
(:mod:`vcmbench.models.mask_rcnn`): R50-FPN v1 (``arch: resnet50_fpn``, the classic
recipe, COCO val2017 box 37.9 / mask 34.6) or v2 (``arch: resnet50_fpn_v2``, 47.4 /
41.8), with the official torchvision weights downloaded once into the cache and checked
against the sha256 prefix in their file name, or a local file; and the light models
trained on ``synth`` (``arch: light``; the weights file carries its architecture).

Inference follows torchvision's reference evaluation: the model's own resize (shorter
side ``min_size`` 800, longer at most ``max_size`` 1333) and normalisation, score
threshold 0.05, NMS 0.5, 100 detections per image, masks pasted at full resolution and
binarised at 0.5. Images of the same size share a forward pass (so a prediction depends
on its image only: torchvision pads a batch to its largest image).

Predictions per image: ``[{"bbox": [x, y, w, h], "score", "label", "segmentation":
{"size": [h, w], "counts": str}}, ...]`` -- compressed RLE, as in COCO result files.
``label`` is the model's class; torchvision's COCO models emit COCO category ids
(1..90, "COCO-91"), which is also what the light models are trained to emit for their
dataset. ``label_map`` maps labels to other category ids.

``backend: detectron2`` runs a detectron2 config + checkpoint instead, only if
``import detectron2`` works (it has no wheel on PyPI and is not installed here, so that
branch is untested in this repository).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import numpy as np
import torch

from ..cards import Card, resolve_card_path
from ..contracts import CocoInstances
from ..errors import WeightsError
from ..media.devices import resolve_device
from ..media.hashing import file_sha256
from ..metrics.coco_map import encode_masks
from ..registry import register
from ..weights import resolve_weights
from .base import Task

__all__ = ["IMPL_VERSION", "MaskRCNNTask"]

IMPL_VERSION = "1"
BACKENDS = ("torchvision", "detectron2")


def check_sha256_prefix(path: Path, prefix: str, what: str) -> None:
    """torch.hub's check: the file's sha256 starts with the hex digits published in its file name."""
    actual = file_sha256(path)
    if not actual.startswith(prefix.lower()):
        raise WeightsError(
            f"weights file {path} for {what} fails its checksum: sha256 should start with {prefix}, actual "
            f"{actual}. Fix: delete {path} to download it again, or point `weights:` at the right file"
        )


@register("task", "mask_rcnn")
class MaskRCNNTask(Task):
    """Mask R-CNN (torchvision, or detectron2 when installed); COCO bbox + segm mAP."""
    #: frames of video datasets are scored like images (against the COCO ground truth of their labels)
    media: ClassVar[tuple[str, ...]] = ("image", "video")
    requires: ClassVar[tuple[type, ...]] = (CocoInstances,)

    metrics: ClassVar[tuple[str, ...]] = ("map", "segm_map")
    location_settings: ClassVar[tuple[str, ...]] = ("weights", "url")

    def __init__(
        self,
        arch: str = "resnet50_fpn",
        weights: str | None = None,
        url: str | None = None,
        sha256: str | None = None,
        backend: str = "torchvision",
        min_size: int | None = None,
        max_size: int | None = None,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_thresh: float = 0.5,
        batch_size: int = 2,
        device: str = "auto",
        label_map: Mapping[int, int] | None = None,
        d2_config: str | None = None,
    ) -> None:
        from ..models.mask_rcnn import ARCHS

        if backend not in BACKENDS:
            raise ValueError(f"mask_rcnn: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "detectron2":
            try:
                import detectron2  # noqa: F401
            except ImportError:
                raise ValueError(
                    "mask_rcnn: backend detectron2 needs the detectron2 package, which is not importable here "
                    "(it has no wheel on PyPI: build it from source, see "
                    "https://detectron2.readthedocs.io/en/latest/tutorials/install.html), or use backend: torchvision"
                ) from None
            if not d2_config:
                raise ValueError("mask_rcnn: backend detectron2 needs d2_config: (a detectron2 config .yaml)")
        elif arch not in ARCHS:
            raise ValueError(f"mask_rcnn: arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        if arch == "light" and not weights:
            raise ValueError("mask_rcnn: arch light has no official download; set weights: to a trained file")
        for name, v in (("score_thresh", score_thresh), ("nms_thresh", nms_thresh), ("mask_thresh", mask_thresh)):
            if not 0 <= float(v) <= 1:
                raise ValueError(f"mask_rcnn: {name} must lie in [0, 1], got {v}")
        if int(detections_per_img) < 1 or int(batch_size) < 1:
            raise ValueError("mask_rcnn: detections_per_img and batch_size must be at least 1")
        if sha256 is not None and not (8 <= len(str(sha256)) <= 64 and all(c in "0123456789abcdefABCDEF" for c in str(sha256))):
            raise ValueError(f"mask_rcnn: sha256 must be a hex digest or a prefix of at least 8 hex digits, got {sha256!r}")
        self.arch = arch
        self.weights = weights
        self.url = url
        self.sha256 = sha256
        self.backend = backend
        self.min_size = min_size
        self.max_size = max_size
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.mask_thresh = float(mask_thresh)
        self.batch_size = int(batch_size)
        self.device = device
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()} or None
        self.d2_config = d2_config
        self.name = "mask_rcnn"
        self._weights_path: Path | None = None
        self._model: Any = None
        self._device: torch.device | None = None

    @classmethod
    def from_card(cls, card: Card) -> MaskRCNNTask:
        settings = dict(card.settings)
        for key in ("weights", "d2_config"):
            settings[key] = resolve_card_path(settings.get(key), card)
        task = cls(**settings)
        task.name = card.name
        task.card_settings = dict(card.settings)
        return task

    # -- identity -------------------------------------------------------------------------------
    def _source(self) -> tuple[str | None, str | None]:
        """(url, expected sha256 or prefix): the official torchvision file of ``arch`` unless overridden."""
        from ..models.mask_rcnn import OFFICIAL_WEIGHTS

        url, sha = self.url, self.sha256
        official = OFFICIAL_WEIGHTS.get(self.arch) if self.backend == "torchvision" else None
        if url is None and not self.weights and official:
            url = official[0]
        if sha is None and official and url == official[0] and not self.weights:
            sha = official[1]
        return url, sha

    def weights_path(self) -> Path:
        """The verified weights file (explicit path, weights dir, cache, or download)."""
        if self._weights_path is None:
            url, sha = self._source()
            if self.weights:
                filename = Path(self.weights).name
            elif url:
                filename = Path(urlparse(url).path).name
            else:
                raise WeightsError(f"task {self.name}: no weights: set `weights:` or `url:` in its card")
            full = sha if sha and len(sha) == 64 else None
            path = resolve_weights(self.weights, url, full, filename, f"task {self.name}")
            if sha and len(sha) < 64:
                check_sha256_prefix(path, sha, f"task {self.name}")
            self._weights_path = path
        return self._weights_path

    def version(self) -> str:
        return f"{IMPL_VERSION}+{self.backend}+weights.sha256:{file_sha256(self.weights_path())}"

    # -- model ----------------------------------------------------------------------------------
    def _model_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "box_score_thresh": self.score_thresh,
            "box_nms_thresh": self.nms_thresh,
            "box_detections_per_img": self.detections_per_img,
        }
        if self.min_size is not None:
            kw["min_size"] = int(self.min_size)
        if self.max_size is not None:
            kw["max_size"] = int(self.max_size)
        return kw

    def load(self) -> None:
        if self._model is not None:
            return
        self._device = resolve_device(self.device, self.name)
        path = self.weights_path()
        if self.backend == "detectron2":
            self._model = self._load_detectron2(path)
            return
        self._model = load_maskrcnn_weights(path, self.arch, **self._model_kwargs()).to(self._device)

    def _load_detectron2(self, path: Path) -> Any:  # pragma: no cover - needs detectron2
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultPredictor

        cfg = get_cfg()
        cfg.merge_from_file(str(self.d2_config))
        cfg.MODEL.WEIGHTS = str(path)
        cfg.MODEL.DEVICE = str(self._device)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = self.score_thresh
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = self.nms_thresh
        cfg.TEST.DETECTIONS_PER_IMAGE = self.detections_per_img
        return DefaultPredictor(cfg)

    # -- inference ------------------------------------------------------------------------------
    def predict(self, images: Sequence[np.ndarray]) -> list[list[dict[str, Any]]]:
        if self._model is None:
            self.load()
        for im in images:
            if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
                raise ValueError(f"{self.name}: expected HxWx3 uint8 RGB images, got {im.shape} {im.dtype}")
        if self.backend == "detectron2":  # pragma: no cover - needs detectron2
            return [self._predict_detectron2(im) for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        out: list[list[dict[str, Any]]] = [[] for _ in images]
        with torch.inference_mode():
            for members in groups.values():
                for s in range(0, len(members), self.batch_size):
                    chunk = members[s : s + self.batch_size]
                    x = [torch.from_numpy(np.array(images[i])).to(self._device).permute(2, 0, 1).float() / 255
                         for i in chunk]  # fmt: skip
                    for i, res in zip(chunk, self._model(x), strict=True):
                        out[i] = self._to_rows(res["boxes"], res["scores"], res["labels"], res["masks"][:, 0])
        return out

    def _to_rows(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor) -> list[dict[str, Any]]:
        masks = (probs > self.mask_thresh).cpu().numpy()
        rles = encode_masks(masks)
        rows = []
        for (x1, y1, x2, y2), score, label, rle in zip(
            boxes.cpu().double().tolist(), scores.cpu().double().tolist(), labels.cpu().tolist(), rles, strict=True
        ):
            rows.append({
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "score": round(score, 5), "label": int(label), "segmentation": rle,
            })  # fmt: skip
        return rows

    def _predict_detectron2(self, image: np.ndarray) -> list[dict[str, Any]]:  # pragma: no cover
        from detectron2.data import MetadataCatalog

        inst = self._model(np.ascontiguousarray(image[:, :, ::-1]))["instances"].to("cpu")
        meta = MetadataCatalog.get(self._model.cfg.DATASETS.TEST[0])
        to_id = {v: k for k, v in getattr(meta, "thing_dataset_id_to_contiguous_id", {}).items()}
        labels = torch.tensor([to_id.get(int(c), int(c)) for c in inst.pred_classes])
        return self._to_rows(inst.pred_boxes.tensor, inst.scores, labels, inst.pred_masks.float())

    # -- scoring --------------------------------------------------------------------------------
    def coco_results(self, predictions: Mapping[str, Any], dataset: CocoInstances) -> list[dict[str, Any]]:
        """COCO result dicts (``image_id``, ``category_id``, ``bbox``, ``score``, ``segmentation``)."""
        out = []
        for item_id, dets in predictions.items():
            image_id = dataset.image_id(item_id)
            for d in dets:
                cat = self.label_map.get(d["label"]) if self.label_map else d["label"]
                if cat is None:
                    continue
                out.append({"image_id": image_id, "category_id": cat, "bbox": d["bbox"], "score": d["score"],
                            "segmentation": d["segmentation"]})  # fmt: skip
        return out

    def evaluate(self, predictions: Mapping[str, Any], dataset: CocoInstances) -> dict[str, float]:
        from ..metrics.coco_map import coco_bbox_eval, coco_segm_eval

        if not callable(getattr(dataset, "coco_gt", None)):
            raise ValueError(
                f"{self.name}: dataset {dataset.name} has no COCO instance ground truth (coco_gt); "
                "Mask R-CNN is scored on COCO-format datasets (coco, synth, visdrone)"
            )
        gt = dataset.coco_gt()
        results = self.coco_results(predictions, dataset)
        img_ids = [dataset.image_id(k) for k in predictions]
        boxes = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
        metrics = coco_bbox_eval(gt, boxes, img_ids)
        anns = gt.loadAnns(gt.getAnnIds(imgIds=img_ids))
        if all("segmentation" in a for a in anns):  # datasets with boxes only (VisDrone) get box mAP only
            metrics.update(coco_segm_eval(gt, results, img_ids))
        return metrics


def load_maskrcnn_weights(path: Path, arch: str, **kwargs: Any) -> torch.nn.Module:
    """Build ``arch`` and load ``path``: a torchvision state dict, or a vcmbench light-model file
    (``{"format": "vcmbench.light_maskrcnn", "config": ..., "state_dict": ...}``)."""
    from ..models.mask_rcnn import LightMaskRCNNConfig, build_maskrcnn

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot load Mask R-CNN weights {path} ({type(exc).__name__}: {exc})") from None
    light = None
    if isinstance(obj, dict) and obj.get("format") == "vcmbench.light_maskrcnn":
        if arch != "light":
            raise WeightsError(f"{path} holds a light Mask R-CNN: set arch: light")
        light = LightMaskRCNNConfig.from_dict(obj["config"])
        state = obj["state_dict"]
        num_classes = light.num_classes
    else:
        if arch == "light":
            raise WeightsError(f"{path} is not a vcmbench light Mask R-CNN file (no 'format' key)")
        state = obj
        num_classes = int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) if "roi_heads.box_predictor.cls_score.weight" in state else 91
    model = build_maskrcnn(arch, num_classes=num_classes, light=light, **kwargs)
    ref = model.state_dict()
    state = {k: v.to(ref[k].dtype) if k in ref and isinstance(v, torch.Tensor) else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path} does not fit Mask R-CNN arch {arch!r}: {str(exc)[:600]}") from None
    return model.eval()
