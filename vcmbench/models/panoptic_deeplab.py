"""Panoptic-DeepLab as a plain PyTorch module, its grouping post-process, and a detectron2 checkpoint loader.

Cheng et al., "Panoptic-DeepLab: A Simple, Strong, and Fast Baseline for Bottom-Up
Panoptic Segmentation", CVPR 2020 (arXiv:1911.10194).

- **Encoder**: a ResNet (:mod:`vcmbench.models.resnet`), by default the "R52-DC5"
  of detectron2's model zoo: ResNet-50 with the three-3x3-conv DeepLab stem, last stage
  dilated (output stride 16) with multi-grid rates 1, 2, 4.
- **Two decoders** (semantic and instance), each DeepLabV3+-like (Chen et al., ECCV 2018):
  ASPP on res5 (1x1 conv, three atrous 3x3 convs, image pooling, 1x1 projection), then
  two upsampling steps fusing 1x1 projections of res3 and res2 with two 3x3 convs each.
- **Heads**: semantic (3x3 conv + 3x3 conv + 1x1 classifier), instance centre heatmap
  and centre offsets (same shape, 1 and 2 outputs), all at stride 4.
- **Grouping** (:func:`panoptic_from_outputs`): centre heatmap thresholded, non-maximum
  suppressed by max-pooling, top-k kept; every "thing" pixel goes to the centre nearest
  to where its offset points; each instance takes the majority semantic class of its
  pixels; stuff regions smaller than ``stuff_area`` are dropped (void).

Module names are our own; :func:`detectron2_to_ours` maps the key names of detectron2's
``projects/Panoptic-DeepLab`` checkpoints onto them, and
:func:`load_detectron2_checkpoint` loads a model-zoo ``.pkl`` (e.g. the Cityscapes
R52-DC5 ``model_final_bd324a.pkl``: PQ 60.3, SQ 81.5, RQ 72.9 there).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .resnet import ResNet

__all__ = [
    "ASPP",
    "CITYSCAPES_R52_DC5",
    "ConvNormAct",
    "DeepLabV3PlusDecoder",
    "PanopticDeepLab",
    "PanopticDeepLabConfig",
    "PostProcessConfig",
    "detectron2_to_ours",
    "find_instance_centers",
    "group_pixels",
    "load_detectron2_checkpoint",
    "merge_semantic_and_instance",
    "panoptic_from_outputs",
]


@dataclass(frozen=True)
class PanopticDeepLabConfig:
    """Architecture. Defaults: detectron2's Cityscapes R52-DC5 model (regular convs, not DSConv)."""

    num_classes: int = 19
    depth: int = 50
    stem: str = "deeplab"
    stem_channels: int = 128
    width: int = 64
    res5_dilation: int = 2
    res5_multi_grid: tuple[int, ...] = (1, 2, 4)
    aspp_dilations: tuple[int, int, int] = (6, 12, 18)
    aspp_dropout: float = 0.1
    #: ASPP image-pooling window in feature pixels; None = global average pooling. detectron2
    #: trains on 512x1024 crops and pools over 32x64 feature pixels (stride 1) at every size.
    aspp_pool_kernel: tuple[int, int] | None = (32, 64)
    project_channels: tuple[int, int] = (32, 64)  # res2, res3
    sem_aspp_channels: int = 256
    sem_decoder_channels: int = 256
    sem_head_channels: int = 256
    ins_aspp_channels: int = 256
    ins_decoder_channels: int = 128
    ins_head_channels: int = 32
    pixel_mean: tuple[float, float, float] = (123.675, 116.280, 103.530)  # RGB, 0..255
    pixel_std: tuple[float, float, float] = (58.395, 57.120, 57.375)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PanopticDeepLabConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Panoptic-DeepLab config keys {sorted(unknown)}; known: {sorted(names)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


#: the detectron2 model-zoo Cityscapes model (panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32_crop_512_1024)
CITYSCAPES_R52_DC5 = PanopticDeepLabConfig()


@dataclass(frozen=True)
class PostProcessConfig:
    """Grouping settings (detectron2's Cityscapes defaults)."""

    thing_classes: tuple[int, ...] = field(default_factory=lambda: tuple(range(11, 19)))
    center_threshold: float = 0.1
    nms_kernel: int = 7
    top_k: int = 200
    stuff_area: int = 2048
    label_divisor: int = 1000


class ConvNormAct(nn.Module):
    """Conv2d, optional BatchNorm, ReLU."""

    def __init__(
        self, cin: int, cout: int, k: int = 1, dilation: int = 1, norm: bool = True, act: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation, bias=not norm)
        self.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return torch.relu(x) if self.act else x


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al., arXiv:1706.05587)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        dilations: Sequence[int],
        pool_kernel: tuple[int, int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvNormAct(cin, cout, 1)] + [ConvNormAct(cin, cout, 3, d) for d in dilations])
        self.pooling = ConvNormAct(cin, cout, 1, norm=False)
        self.project = ConvNormAct(cout * (len(dilations) + 2), cout, 1)
        self.pool_kernel = tuple(pool_kernel) if pool_kernel else None
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [b(x) for b in self.branches]
        if self.pool_kernel is None:
            pooled = F.adaptive_avg_pool2d(x, 1)
        else:  # a window larger than the map would be an error: clip it (detectron2 requires divisibility)
            k = (min(self.pool_kernel[0], size[0]), min(self.pool_kernel[1], size[1]))
            pooled = F.avg_pool2d(x, k, stride=1)
        outs.append(F.interpolate(self.pooling(pooled), size=size, mode="bilinear", align_corners=False))
        y = self.project(torch.cat(outs, dim=1))
        return F.dropout(y, self.dropout, training=self.training) if self.dropout > 0 else y


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on res5, then fuse with projected res3, then with projected res2 (output at stride 4)."""

    def __init__(
        self,
        in_channels: Mapping[str, int],
        project_channels: tuple[int, int],
        aspp_channels: int,
        decoder_channels: int,
        aspp_dilations: Sequence[int],
        aspp_pool_kernel: tuple[int, int] | None,
        aspp_dropout: float,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels["res5"], aspp_channels, aspp_dilations, aspp_pool_kernel, aspp_dropout)
        p2, p3 = project_channels
        self.project = nn.ModuleDict(
            {"res3": ConvNormAct(in_channels["res3"], p3, 1), "res2": ConvNormAct(in_channels["res2"], p2, 1)}
        )
        self.fuse = nn.ModuleDict(
            {
                "res3": nn.Sequential(
                    ConvNormAct(p3 + aspp_channels, decoder_channels, 3),
                    ConvNormAct(decoder_channels, decoder_channels, 3),
                ),
                "res2": nn.Sequential(
                    ConvNormAct(p2 + decoder_channels, decoder_channels, 3),
                    ConvNormAct(decoder_channels, decoder_channels, 3),
                ),
            }
        )

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        y = self.aspp(features["res5"])
        for name in ("res3", "res2"):
            p = self.project[name](features[name])
            y = F.interpolate(y, size=p.shape[-2:], mode="bilinear", align_corners=False)
            y = self.fuse[name](torch.cat([p, y], dim=1))
        return y


def _head(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(ConvNormAct(cin, cin, 3), ConvNormAct(cin, cout, 3))


class PanopticDeepLab(nn.Module):
    """Backbone, semantic and instance decoders, semantic / centre / offset heads.

    ``forward`` takes normalised images (N, 3, H, W) with H, W multiples of 32 and
    returns stride-4 maps: ``semantic`` logits (N, C, H/4, W/4), ``center`` heatmap
    (N, 1, ...) and ``offset`` (N, 2, ...) as (dy, dx) in stride-4 pixels. Use
    :meth:`infer` for full-resolution outputs of raw RGB images.
    """

    def __init__(self, config: PanopticDeepLabConfig = CITYSCAPES_R52_DC5) -> None:
        super().__init__()
        c = config
        self.config = c
        self.backbone = ResNet(
            depth=c.depth, stem=c.stem, stem_channels=c.stem_channels, width=c.width,
            res5_dilation=c.res5_dilation, res5_multi_grid=c.res5_multi_grid,
        )  # fmt: skip
        ch = self.backbone.out_channels
        common = dict(aspp_dilations=c.aspp_dilations, aspp_pool_kernel=c.aspp_pool_kernel, aspp_dropout=c.aspp_dropout)
        self.semantic_decoder = DeepLabV3PlusDecoder(
            ch, c.project_channels, c.sem_aspp_channels, c.sem_decoder_channels, **common
        )
        self.instance_decoder = DeepLabV3PlusDecoder(
            ch, c.project_channels, c.ins_aspp_channels, c.ins_decoder_channels, **common
        )
        self.semantic_head = _head(c.sem_decoder_channels, c.sem_head_channels)
        self.semantic_predictor = nn.Conv2d(c.sem_head_channels, c.num_classes, 1)
        self.center_head = _head(c.ins_decoder_channels, c.ins_head_channels)
        self.center_predictor = nn.Conv2d(c.ins_head_channels, 1, 1)
        self.offset_head = _head(c.ins_decoder_channels, c.ins_head_channels)
        self.offset_predictor = nn.Conv2d(c.ins_head_channels, 2, 1)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1), persistent=False)
        for pred in (self.semantic_predictor, self.center_predictor, self.offset_predictor):
            nn.init.normal_(pred.weight, 0, 0.001)
            nn.init.zeros_(pred.bias)

    #: input sizes are padded up to a multiple of this
    size_divisibility = 32

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        sem = self.semantic_decoder(feats)
        ins = self.instance_decoder(feats)
        return {
            "semantic": self.semantic_predictor(self.semantic_head(sem)),
            "center": self.center_predictor(self.center_head(ins)),
            "offset": self.offset_predictor(self.offset_head(ins)),
        }

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB 0..255 -> normalised, zero-padded (bottom/right) to a multiple of 32."""
        x = (images.float() - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        d = self.size_divisibility
        ph, pw = (-h) % d, (-w) % d
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def infer(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full-resolution ``semantic`` logits, ``center`` heatmap and ``offset`` (pixels) for RGB 0..255 input.

        Stride-4 outputs are upsampled x4 (bilinear, half-pixel centres), offsets scaled by 4,
        then the padding is cropped (detectron2's ``sem_seg_postprocess``).
        """
        h, w = images.shape[-2:]
        out = self(self.normalize(images))
        res = {}
        for k, v in out.items():
            up = F.interpolate(v, scale_factor=4, mode="bilinear", align_corners=False)
            if k == "offset":
                up = up * 4
            res[k] = up[..., :h, :w]
        return res


# ---- grouping post-process --------------------------------------------------------------------
def find_instance_centers(heatmap: torch.Tensor, threshold: float, nms_kernel: int, top_k: int | None) -> torch.Tensor:
    """(K, 2) centre coordinates (y, x): scores above ``threshold``, local maxima in a
    ``nms_kernel`` window, the ``top_k`` highest (ties with the k-th score kept).

    detectron2 keeps the scores strictly above the k-th, i.e. k-1 centres once there
    are k or more; here it is the paper's top-k (the same whenever fewer than k centres)."""
    h = heatmap.reshape(1, 1, *heatmap.shape[-2:]).float()
    h = torch.where(h > threshold, h, torch.full_like(h, -1.0))
    pooled = F.max_pool2d(h, kernel_size=nms_kernel, stride=1, padding=(nms_kernel - 1) // 2)
    h = torch.where(h == pooled, h, torch.full_like(h, -1.0))[0, 0]
    if top_k is None or top_k >= h.numel():
        return torch.nonzero(h > 0)
    kth = torch.topk(h.flatten(), top_k).values[-1]
    return torch.nonzero((h >= kth) & (h > 0))


def group_pixels(centers: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, chunk: int = 1 << 16) -> torch.Tensor:
    """Instance id (1..K, 0 outside ``mask``) of every pixel: the centre nearest to pixel + offset."""
    hh, ww = offset.shape[-2:]
    out = torch.zeros((hh, ww), dtype=torch.long, device=offset.device)
    if centers.numel() == 0:
        return out
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return out
    ctr = centers.to(offset.dtype)
    ids = torch.empty_like(ys)
    for s in range(0, ys.numel(), chunk):
        y, x = ys[s : s + chunk], xs[s : s + chunk]
        loc = torch.stack([y.to(offset.dtype) + offset[0, y, x], x.to(offset.dtype) + offset[1, y, x]], dim=1)
        ids[s : s + chunk] = torch.cdist(loc, ctr, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1) + 1
    out[ys, xs] = ids
    return out


def merge_semantic_and_instance(
    semantic: torch.Tensor, instance: torch.Tensor, thing_mask: torch.Tensor, pp: PostProcessConfig
) -> torch.Tensor:
    """Panoptic map ``class * label_divisor + k`` (k = 1.. per class for things, 0 for stuff), -1 = void."""
    pan = torch.full_like(semantic, -1)
    counter: dict[int, int] = {}
    is_thing = (instance > 0) & thing_mask
    for ins_id in torch.unique(instance).tolist():
        if ins_id == 0:
            continue
        m = (instance == ins_id) & is_thing
        if not bool(m.any()):
            continue
        votes = torch.bincount(semantic[m].flatten())
        cls = int(votes.argmax())  # majority vote; ties to the smaller class index
        counter[cls] = counter.get(cls, 0) + 1
        pan[m] = cls * pp.label_divisor + counter[cls]
    things = set(pp.thing_classes)
    for cls in torch.unique(semantic).tolist():
        if cls in things:
            continue
        m = (semantic == cls) & (instance == 0)
        if int(m.sum()) >= pp.stuff_area:
            pan[m] = cls * pp.label_divisor
    return pan


def panoptic_from_outputs(
    semantic_logits: torch.Tensor, center: torch.Tensor, offset: torch.Tensor, pp: PostProcessConfig
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image's (C, H, W) logits, (1, H, W) heatmap, (2, H, W) offsets -> (segment id map, segments).

    Segment ids are 1..N (0 = void); each segment dict has ``id``, ``class`` (model class
    index), ``isthing``, ``area`` and, for things, ``score`` = mean semantic probability of
    its class over the segment x centre heatmap at its centroid (as detectron2 scores
    Panoptic-DeepLab instances).
    """
    semantic = semantic_logits.argmax(dim=0)
    thing_ids = torch.tensor(pp.thing_classes, dtype=semantic.dtype, device=semantic.device)
    thing_mask = torch.isin(semantic, thing_ids)
    centers = find_instance_centers(center, pp.center_threshold, pp.nms_kernel, pp.top_k)
    instance = group_pixels(centers, offset, thing_mask)
    pan = merge_semantic_and_instance(semantic, instance, thing_mask, pp)
    ids = np.zeros(pan.shape, dtype=np.int32)
    segments: list[dict[str, Any]] = []
    labels = [v for v in torch.unique(pan).tolist() if v >= 0]
    prob = None
    for seg_id, label in enumerate(labels, start=1):
        m = pan == label
        cls = label // pp.label_divisor
        isthing = cls in pp.thing_classes
        m_np = m.cpu().numpy()
        ids[m_np] = seg_id
        seg: dict[str, Any] = {"id": seg_id, "class": int(cls), "isthing": int(isthing), "area": int(m_np.sum())}
        if isthing:
            if prob is None:
                prob = torch.softmax(semantic_logits.float(), dim=0)
            ys, xs = torch.nonzero(m, as_tuple=True)
            cy, cx = int(ys.float().mean()), int(xs.float().mean())
            seg["score"] = round(float(prob[cls][m].mean() * center.reshape(center.shape[-2:])[cy, cx]), 6)
        segments.append(seg)
    return ids, segments


# ---- detectron2 checkpoints ---------------------------------------------------------------------
_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RULE_TEXT: list[tuple[str, str]] = [
    # backbone: detectron2 Conv2d carries its norm as `.norm`; torchvision blocks use bn1..3 / downsample
    (r"^backbone\.stem\.conv(\d)\.weight$", r"backbone.stem.conv\1.weight"),
    (rf"^backbone\.stem\.conv(\d)\.norm\.{_NORM}$", r"backbone.stem.bn\1.\2"),
    (r"^backbone\.res(\d)\.(\d+)\.conv(\d)\.weight$", r"backbone.layer<\1>.\2.conv\3.weight"),
    (rf"^backbone\.res(\d)\.(\d+)\.conv(\d)\.norm\.{_NORM}$", r"backbone.layer<\1>.\2.bn\3.\4"),
    (r"^backbone\.res(\d)\.(\d+)\.shortcut\.weight$", r"backbone.layer<\1>.\2.downsample.0.weight"),
    (rf"^backbone\.res(\d)\.(\d+)\.shortcut\.norm\.{_NORM}$", r"backbone.layer<\1>.\2.downsample.1.\3"),
    # decoders: res5 holds the ASPP (convs.0-3 branches, convs.4 = [pool, conv] image pooling)
    (r"^(HEAD)\.decoder\.res5\.project_conv\.convs\.([0-3])\.weight$", r"\1.aspp.branches.\2.conv.weight"),
    (rf"^(HEAD)\.decoder\.res5\.project_conv\.convs\.([0-3])\.norm\.{_NORM}$", r"\1.aspp.branches.\2.norm.\3"),
    (r"^(HEAD)\.decoder\.res5\.project_conv\.convs\.4\.1\.(weight|bias)$", r"\1.aspp.pooling.conv.\2"),
    (r"^(HEAD)\.decoder\.res5\.project_conv\.project\.weight$", r"\1.aspp.project.conv.weight"),
    (rf"^(HEAD)\.decoder\.res5\.project_conv\.project\.norm\.{_NORM}$", r"\1.aspp.project.norm.\2"),
    (r"^(HEAD)\.decoder\.(res[23])\.project_conv\.weight$", r"\1.project.\2.conv.weight"),
    (rf"^(HEAD)\.decoder\.(res[23])\.project_conv\.norm\.{_NORM}$", r"\1.project.\2.norm.\3"),
    (r"^(HEAD)\.decoder\.(res[23])\.fuse_conv\.([01])\.weight$", r"\1.fuse.\2.\3.conv.weight"),
    (rf"^(HEAD)\.decoder\.(res[23])\.fuse_conv\.([01])\.norm\.{_NORM}$", r"\1.fuse.\2.\3.norm.\4"),
    # heads
    (r"^sem_seg_head\.head\.([01])\.weight$", r"semantic_head.\1.conv.weight"),
    (rf"^sem_seg_head\.head\.([01])\.norm\.{_NORM}$", r"semantic_head.\1.norm.\2"),
    (r"^sem_seg_head\.predictor\.(weight|bias)$", r"semantic_predictor.\1"),
    (r"^ins_embed_head\.(center|offset)_head\.([01])\.weight$", r"\1_head.\2.conv.weight"),
    (rf"^ins_embed_head\.(center|offset)_head\.([01])\.norm\.{_NORM}$", r"\1_head.\2.norm.\3"),
    (r"^ins_embed_head\.(center|offset)_predictor\.(weight|bias)$", r"\1_predictor.\2"),
]
#: (compiled pattern, replacement); HEAD stands for either head of detectron2's model
_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p.replace("HEAD", head)), r)
    for p, r in _RULE_TEXT
    for head in (("sem_seg_head", "ins_embed_head") if "HEAD" in p else ("",))
]
_DECODER = {"sem_seg_head": "semantic_decoder", "ins_embed_head": "instance_decoder"}


def _rename(key: str) -> str | None:
    for pat, repl in _RULES:
        m = pat.match(key)
        if m:
            new = m.expand(repl)
            new = re.sub(r"layer<(\d)>", lambda g: f"layer{int(g.group(1)) - 1}", new)
            for d2, ours in _DECODER.items():
                if new.startswith(d2 + "."):
                    new = ours + new[len(d2):]
            return new
    return None


#: keys of detectron2 checkpoints that are not weights (non-persistent buffers in current detectron2)
_IGNORED = {"pixel_mean", "pixel_std"}


def detectron2_to_ours(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a detectron2 Panoptic-DeepLab state dict to our module names.

    Returns (renamed tensors, keys that match no rule). numpy arrays become tensors.
    """
    out: dict[str, torch.Tensor] = {}
    unmatched: list[str] = []
    for k, v in state.items():
        if k in _IGNORED:
            continue
        new = _rename(k)
        if new is None:
            unmatched.append(k)
            continue
        if new in out:
            raise ValueError(f"two detectron2 keys map to {new!r} (second: {k!r})")
        out[new] = torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
    return out, unmatched


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays only: a model-zoo .pkl holds nothing else, and any other
    global in a pickle could run code."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint of arrays")
        return super().find_class(module, name)


def load_detectron2_checkpoint(
    path: str | Path, config: PanopticDeepLabConfig = CITYSCAPES_R52_DC5
) -> PanopticDeepLab:
    """A :class:`PanopticDeepLab` with the weights of a detectron2 checkpoint.

    Reads detectron2's model-zoo ``.pkl`` (a pickle of ``{"model": {name: ndarray}, ...}``)
    or a ``.pth`` (``{"model": state_dict}`` or a bare state dict). Every key must map
    (else :class:`WeightsError` lists the strays) and every weight of ours must be
    filled with the right shape; ``num_batches_tracked`` may be absent.
    """
    path = Path(path)
    try:
        if path.suffix == ".pkl":
            with open(path, "rb") as f:
                raw = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read detectron2 checkpoint {path} ({type(exc).__name__}: {exc})") from None
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a dict with a 'model' state dict (detectron2 checkpoint)")
    mapped, unmatched = detectron2_to_ours(state)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation
        ours = PanopticDeepLab(config).state_dict()
    for k in ours:
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(ours) - set(mapped))
    unexpected = sorted(set(mapped) - set(ours)) + unmatched
    wrong = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(ours[k].shape)}"
             for k in ours if k in mapped and tuple(mapped[k].shape) != tuple(ours[k].shape)]  # fmt: skip
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:8]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:8]}")
        if wrong:
            parts.append(f"shape mismatch {len(wrong)}: {wrong[:4]}")
        raise WeightsError(
            f"{path} does not fit Panoptic-DeepLab {config}: " + "; ".join(parts)
            + ". Use the R52-DC5 (non-DSConv) Cityscapes checkpoint or set the matching architecture."
        )
    model = PanopticDeepLab(config)
    model.load_state_dict({k: mapped[k].to(ours[k].dtype) for k in ours}, strict=True)
    return model.eval()
