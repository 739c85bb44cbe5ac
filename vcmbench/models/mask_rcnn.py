"""Mask R-CNN networks: torchvision's COCO models and a light variant for test models.

He et al., "Mask R-CNN", ICCV 2017; FPN: Lin et al., "Feature Pyramid Networks for
Object Detection", CVPR 2017. The R50-FPN models are torchvision's
(``maskrcnn_resnet50_fpn``: v1, the classic recipe, COCO box 37.9 / mask 34.6;
``maskrcnn_resnet50_fpn_v2``: Li et al., "Benchmarking Detection Transfer Learning with
Vision Transformers", 2021, box 47.4 / mask 41.8). Their official weights are published
under URLs whose file names end in the first 8 hex digits of the file's sha256
(torch.hub's convention); the table below copies them from torchvision's weight enums
(a test checks they agree with the installed torchvision).

The light variant (``arch: light``) is torchvision's ``MaskRCNN`` on a narrow ResNet
(:mod:`vcmbench.models.resnet`) with an FPN of few channels and small heads, trained by
:mod:`vcmbench.train.synth_models` on the generated ``synth`` dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

__all__ = ["LightMaskRCNNConfig", "OFFICIAL_WEIGHTS", "build_light_maskrcnn", "build_maskrcnn"]

#: arch -> (url, sha256 prefix), from torchvision.models.detection.MaskRCNN_ResNet50_FPN{,_V2}_Weights.COCO_V1
OFFICIAL_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet50_fpn": ("https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth", "bf2d0c1e"),
    "resnet50_fpn_v2": ("https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth", "73cbd019"),
}

ARCHS = ("resnet50_fpn", "resnet50_fpn_v2", "light")


@dataclass(frozen=True)
class LightMaskRCNNConfig:
    """A small Mask R-CNN: narrow ResNet + FPN, small box/mask heads, small anchors."""

    num_classes: int = 2  # including background (label 0)
    depth: int = 18
    width: int = 16
    fpn_channels: int = 64
    box_fc: int = 256
    mask_channels: int = 64
    anchor_sizes: tuple[int, ...] = (16, 32, 64, 128, 256)
    min_size: int = 256
    max_size: int = 512

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LightMaskRCNNConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown light Mask R-CNN config keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_light_maskrcnn(config: LightMaskRCNNConfig, **kwargs: Any) -> nn.Module:
    """torchvision ``MaskRCNN`` on a ``width``-channel ResNet-``depth`` + FPN (random init)."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    from .resnet import ResNet

    c = config
    body = ResNet(depth=c.depth, stem="basic", width=c.width)
    chans = [body.out_channels[f"res{i}"] for i in (2, 3, 4, 5)]
    backbone = BackboneWithFPN(
        body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}, chans, c.fpn_channels
    )
    anchors = AnchorGenerator(tuple((s,) for s in c.anchor_sizes), ((0.5, 1.0, 2.0),) * len(c.anchor_sizes))
    sizes = {"min_size": c.min_size, "max_size": c.max_size}
    sizes.update({k: kwargs.pop(k) for k in list(kwargs) if k in sizes})
    return MaskRCNN(
        backbone,
        num_classes=None,
        **sizes,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(c.fpn_channels * 7 * 7, c.box_fc),
        box_predictor=FastRCNNPredictor(c.box_fc, c.num_classes),
        mask_head=MaskRCNNHeads(c.fpn_channels, [c.mask_channels] * 4, 1),
        mask_predictor=MaskRCNNPredictor(c.mask_channels, c.mask_channels, c.num_classes),
        **kwargs,
    )


def build_maskrcnn(arch: str, num_classes: int = 91, light: LightMaskRCNNConfig | None = None, **kwargs: Any) -> nn.Module:
    """An untrained Mask R-CNN of ``arch`` (weights are loaded by the caller).

    ``kwargs`` go to torchvision's ``MaskRCNN`` (``min_size``, ``box_score_thresh``, ...).
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    if arch == "resnet50_fpn":
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if arch == "resnet50_fpn_v2":
        return maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    if arch == "light":
        if light is None:
            raise ValueError("arch 'light' needs its LightMaskRCNNConfig (stored in the weights file)")
        return build_light_maskrcnn(light, **kwargs)
    raise ValueError(f"unknown Mask R-CNN arch {arch!r}; known: {', '.join(ARCHS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
