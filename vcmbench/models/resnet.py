"""ResNet feature extractor built from torchvision's residual blocks, with DeepLab options.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016. Options used by
DeepLab-family segmentation networks (Chen et al., "Rethinking Atrous Convolution for
Semantic Image Segmentation", arXiv:1706.05587):

- the "deeplab" stem: three 3x3 convolutions (stride 2, 1, 1) instead of one 7x7,
  then a 3x3 max-pool. With 128 stem channels and depth 50 this is the "R52" backbone
  of detectron2's DeepLab and Panoptic-DeepLab projects (a ResNet-50 with a deep stem);
- a dilated last stage (``res5_dilation``, output stride 16) with a multi-grid of
  dilation rates per block (``res5_multi_grid``, e.g. 1, 2, 4 -> rates 2, 4, 8);
- a ``width`` other than 64 (channels scale with it), for small test models.

The blocks are torchvision's ``BasicBlock`` / ``Bottleneck`` (stride in the 3x3
convolution); module names follow torchvision (``layer1`` .. ``layer4``, ``downsample``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["DEPTHS", "DeepLabStem", "BasicStem", "ResNet"]

#: depth -> (block, blocks per stage)
DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class DeepLabStem(nn.Module):
    """Three 3x3 conv + BN + ReLU (channels out/2, out/2, out; first with stride 2), then 3x3 max-pool /2."""

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride=2, padding=1, bias=False)
        self.bn1 = norm_layer(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(mid)
        self.conv3 = nn.Conv2d(mid, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn3 = norm_layer(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BasicStem(nn.Module):
    """The original ResNet stem: 7x7 conv /2 + BN + ReLU, 3x3 max-pool /2."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """Stem + four residual stages; ``forward`` returns ``{"res2": ..., "res3": ..., "res4": ..., "res5": ...}``.

    Strides of res2..res5 are 4, 8, 16, 32 (res5 16 when ``res5_dilation`` > 1).
    """

    def __init__(
        self,
        depth: int = 50,
        stem: str = "deeplab",
        stem_channels: int | None = None,
        width: int = 64,
        res5_dilation: int = 1,
        res5_multi_grid: Sequence[int] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"resnet depth must be one of {sorted(DEPTHS)}, got {depth}")
        if stem not in ("deeplab", "basic"):
            raise ValueError(f"resnet stem must be 'deeplab' or 'basic', got {stem!r}")
        if res5_dilation not in (1, 2, 4):
            raise ValueError(f"res5_dilation must be 1, 2 or 4, got {res5_dilation}")
        block, counts = DEPTHS[depth]
        if stem_channels is None:
            stem_channels = 2 * width if stem == "deeplab" else width
        self.stem: nn.Module = (DeepLabStem if stem == "deeplab" else BasicStem)(3, stem_channels, norm_layer)
        grid = list(res5_multi_grid) if res5_multi_grid is not None else [1] * counts[3]
        if len(grid) != counts[3]:
            raise ValueError(f"res5_multi_grid needs {counts[3]} rates for depth {depth}, got {grid}")
        inplanes = stem_channels
        self.out_channels: dict[str, int] = {}
        for i, n in enumerate(counts):
            planes = width * 2**i
            dilated = i == 3 and res5_dilation > 1
            stride = 1 if i == 0 or dilated else 2
            rates = [res5_dilation * g for g in grid] if dilated else [1] * n
            layer, inplanes = _make_stage(block, inplanes, planes, n, stride, rates, norm_layer)
            self.add_module(f"layer{i + 1}", layer)
            self.out_channels[f"res{i + 2}"] = inplanes
        self.depth = depth

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        x = self.stem(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            out[f"res{i + 2}"] = x
        return out


def _make_stage(
    block: type[nn.Module],
    inplanes: int,
    planes: int,
    n: int,
    stride: int,
    rates: Sequence[int],
    norm_layer: Callable[[int], nn.Module],
) -> tuple[nn.Sequential, int]:
    expansion = block.expansion  # type: ignore[attr-defined]
    out_ch = planes * expansion
    downsample = None
    if stride != 1 or inplanes != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, out_ch, 1, stride=stride, bias=False), norm_layer(out_ch)
        )
    blocks = []
    for j in range(n):
        b = block(inplanes if j == 0 else out_ch, planes, stride if j == 0 else 1,
                  downsample if j == 0 else None, norm_layer=norm_layer)  # fmt: skip
        _set_dilation(b, rates[j])
        blocks.append(b)
    return nn.Sequential(*blocks), out_ch


def _set_dilation(block: nn.Module, rate: int) -> None:
    """Dilate the block's 3x3 convolutions (torchvision's blocks take no per-block rate)."""
    if rate == 1:
        return
    for conv in (block.conv2,) if isinstance(block, Bottleneck) else (block.conv1, block.conv2):
        conv.dilation = (rate, rate)
        conv.padding = (rate, rate)
