"""NeRV: a video as a neural network of the frame index.

H. Chen, B. He, H. Wang, Y. Ren, S.-N. Lim, A. Shrivastava, "NeRV: Neural Representations
for Videos", NeurIPS 2021 (arXiv:2110.13903; reference code ``haochen-rye/NeRV``). A frame is
``f(t)`` with ``t = frame_index / num_frames``:

- positional encoding ``Γ(t) = [sin(b^0·π·t), cos(b^0·π·t), ..., sin(b^(l-1)·π·t), cos(b^(l-1)·π·t)]``
  with ``b = 1.25``, ``l = 40`` (80 values; the reference code's ``--embed 1.25_40``);
- an MLP stem ``80 -> stem_dim -> fc_h·fc_w·fc_dim`` (an activation after every layer),
  reshaped to a ``fc_dim x fc_h x fc_w`` map;
- NeRV blocks: ``conv3x3 (C_in -> C_out·s²) -> PixelShuffle(s) -> activation``, one per
  stride ``s``; channels: the first stage ``C_out = int(C_in·expansion)``, later stages
  ``C_out = max(C_in // reduction, lower_width)``;
- a head ``conv1x1 -> 3`` with output ``(tanh + 1) / 2`` in [0, 1].

The paper writes GELU for the activation; the official command lines train with swish
(SiLU). It is a setting (``act``: ``gelu`` by default, ``swish``/``silu``, ``relu``).

Sizes. The paper's NeRV-S / M / L for 1280x720 (Big Buck Bunny) use a 9x16 fc map,
strides 5,2,2,2,2, stem 512, lower width 96, expansion 1, reduction 2 and
``fc_dim`` 26 / 58 / 112: 3.20M / 6.28M / 12.52M parameters (published: 3.2M / 6.3M /
12.5M). A ``width`` multiplier scales ``stem_dim``, ``fc_dim`` and ``lower_width`` together
(CPU-sized models), and each of them can also be given explicitly.

Layout for other resolutions (:func:`derive_layout`): the strides are the prime factors 5, 3
and 2 of ``gcd(H, W)``, largest first, at most ``max_stages`` (5) of them, and ``fc_h = H / ∏s``,
``fc_w = W / ∏s``: 720x1280 -> 9x16 with 5,2,2,2,2 (upstream's layout), 1080x1920 -> 9x16 with
5,3,2,2,2 (upstream's default), 240x320 -> 3x4 with 5,2,2,2,2, 144x176 -> 9x11 with 2,2,2,2.
When that leaves no stride or an fc map of more than ``max_fc_cells`` (256) cells, the frame is
padded (bottom and right, edge replication) to the smallest area ``H' x W'`` that has a layout
within those limits (ties: more upsampling), and decoded frames are cropped back: 272x640 ->
280x640 with 5,2,2,2 (fc 7x16). The padding is part of the bitstream's header.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import VcmbenchError

__all__ = [
    "ACTIVATIONS",
    "SIZES",
    "Layout",
    "NeRV",
    "NeRVConfig",
    "NeRVError",
    "config_from_dict",
    "count_parameters",
    "derive_layout",
    "frame_times",
    "model_config",
    "positional_encoding",
    "prunable_weights",
]


class NeRVError(VcmbenchError, ValueError):
    """An impossible NeRV configuration or layout; the message says which value and why."""


#: the paper's sizes (Big Buck Bunny, 1280x720): fc_dim; every size shares the other settings of SIZE_BASE
SIZES: dict[str, int] = {"S": 26, "M": 58, "L": 112}
SIZE_BASE: dict[str, Any] = {"stem_dim": 512, "stem_layers": 1, "lower_width": 96, "expansion": 1.0, "reduction": 2}
#: activation name -> (code stored in bitstreams, module factory)
ACTIVATIONS: dict[str, tuple[int, Any]] = {
    "gelu": (0, nn.GELU),
    "swish": (1, nn.SiLU),
    "silu": (1, nn.SiLU),
    "relu": (2, nn.ReLU),
}
STRIDE_PRIMES = (5, 3, 2)


# ---- layout ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How a ``height x width`` frame maps onto NeRV: padding (bottom / right), fc map and strides."""

    height: int
    width: int
    pad_bottom: int
    pad_right: int
    fc_h: int
    fc_w: int
    strides: tuple[int, ...]

    @property
    def padded_height(self) -> int:
        return self.height + self.pad_bottom

    @property
    def padded_width(self) -> int:
        return self.width + self.pad_right

    @property
    def upsampling(self) -> int:
        return math.prod(self.strides)


def _prime_strides(n: int) -> list[int]:
    out = []
    for p in STRIDE_PRIMES:
        while n % p == 0:
            out.append(p)
            n //= p
    return out


def derive_layout(height: int, width: int, max_stages: int = 5, max_fc_cells: int = 256) -> Layout:
    """The fc map, strides and padding for ``height x width`` frames (see the module docstring)."""
    if height < 1 or width < 1:
        raise NeRVError(f"frame size {width}x{height} is empty")
    if max_stages < 1 or max_fc_cells < 1:
        raise NeRVError("max_stages and max_fc_cells must be >= 1")
    strides = _prime_strides(math.gcd(height, width))[:max_stages]
    if strides:
        up = math.prod(strides)
        if (height // up) * (width // up) <= max_fc_cells:
            return Layout(height, width, 0, 0, height // up, width // up, tuple(strides))
    best: tuple[tuple[int, int, int], Layout] | None = None
    for n in range(1, max_stages + 1):
        for combo in itertools.combinations_with_replacement(STRIDE_PRIMES, n):
            up = math.prod(combo)
            ph, pw = math.ceil(height / up) * up, math.ceil(width / up) * up
            if (ph // up) * (pw // up) > max_fc_cells:
                continue
            key = (ph * pw, -up, n)
            if best is None or key < best[0]:
                best = (key, Layout(height, width, ph - height, pw - width, ph // up, pw // up, tuple(combo)))
    if best is None:
        raise NeRVError(f"no NeRV layout for {width}x{height} frames with at most {max_stages} stages and "
                        f"{max_fc_cells} fc cells; raise max_fc_cells or max_stages")  # fmt: skip
    return best[1]


# ---- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NeRVConfig:
    """Every hyper-parameter of one NeRV network (what a bitstream header stores)."""

    fc_h: int
    fc_w: int
    fc_dim: int
    strides: tuple[int, ...]
    stem_dim: int = 512
    stem_layers: int = 1
    lower_width: int = 96
    expansion: float = 1.0
    reduction: int = 2
    embed_base: float = 1.25
    embed_levels: int = 40
    act: str = "gelu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        for name in ("fc_h", "fc_w", "fc_dim", "stem_dim", "stem_layers", "lower_width", "reduction",
                     "embed_levels"):  # fmt: skip
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise NeRVError(f"NeRV {name} must be an integer >= 1, got {value!r}")
        if not self.strides or any(s < 1 for s in self.strides):
            raise NeRVError(f"NeRV strides must be a non-empty list of integers >= 1, got {self.strides}")
        if not self.expansion > 0:
            raise NeRVError(f"NeRV expansion must be > 0, got {self.expansion}")
        if not self.embed_base > 0:
            raise NeRVError(f"NeRV embed_base must be > 0, got {self.embed_base}")
        if self.act not in ACTIVATIONS:
            raise NeRVError(f"unknown NeRV activation {self.act!r}; choose one of {', '.join(ACTIVATIONS)}")
        if int(self.fc_dim * self.expansion) < 1:
            raise NeRVError(f"NeRV fc_dim {self.fc_dim} x expansion {self.expansion} leaves no channel")

    @property
    def embed_dim(self) -> int:
        return 2 * self.embed_levels

    @property
    def out_height(self) -> int:
        return self.fc_h * math.prod(self.strides)

    @property
    def out_width(self) -> int:
        return self.fc_w * math.prod(self.strides)

    def channels(self) -> list[int]:
        """Output channels of every NeRV block (the upstream schedule)."""
        out, c = [], self.fc_dim
        for i, s in enumerate(self.strides):
            if i == 0:
                c = int(c * self.expansion)
            else:
                c = max(c // (1 if s == 1 else self.reduction), self.lower_width)
            out.append(c)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d


def _scaled(value: int, width: float) -> int:
    return max(1, int(round(value * width)))


def model_config(
    layout: Layout,
    size: str = "S",
    width: float = 1.0,
    *,
    fc_dim: int | None = None,
    lower_width: int | None = None,
    stem_dim: int | None = None,
    **overrides: Any,
) -> NeRVConfig:
    """The configuration of a named size (S / M / L, scaled by ``width``) on a layout; explicit values win."""
    key = str(size).upper()
    if key not in SIZES:
        raise NeRVError(f"unknown NeRV size {size!r}; choose one of {', '.join(SIZES)} (or give fc_dim)")
    if not width > 0:
        raise NeRVError(f"NeRV width multiplier must be > 0, got {width}")
    unknown = set(overrides) - {"stem_layers", "expansion", "reduction", "embed_base", "embed_levels", "act"}
    if unknown:
        raise NeRVError(f"unknown NeRV setting(s) {sorted(unknown)}")
    rest = {k: v for k, v in {**SIZE_BASE, **overrides}.items() if k not in ("lower_width", "stem_dim")}
    return NeRVConfig(
        fc_h=layout.fc_h,
        fc_w=layout.fc_w,
        strides=layout.strides,
        fc_dim=int(fc_dim) if fc_dim is not None else _scaled(SIZES[key], width),
        lower_width=int(lower_width) if lower_width is not None else _scaled(SIZE_BASE["lower_width"], width),
        stem_dim=int(stem_dim) if stem_dim is not None else _scaled(SIZE_BASE["stem_dim"], width),
        **rest,
    )


# ---- the network --------------------------------------------------------------------------------
def frame_times(num_frames: int) -> Tensor:
    """``t = i / num_frames`` for every frame index (float32, on the CPU): the network's inputs."""
    return torch.arange(num_frames, dtype=torch.float32) / float(num_frames)


def positional_encoding(t: Tensor, base: float = 1.25, levels: int = 40) -> Tensor:
    """``(N,) -> (N, 2·levels)``: sin and cos of ``base^i·π·t`` for ``i < levels``, interleaved."""
    t = t.reshape(-1, 1).to(torch.float32)
    freqs = torch.tensor([base**i * math.pi for i in range(levels)], dtype=torch.float32, device=t.device)
    arg = t * freqs
    return torch.stack([torch.sin(arg), torch.cos(arg)], dim=2).reshape(t.shape[0], 2 * levels)


class NeRVBlock(nn.Module):
    """conv3x3 (C_in -> C_out·s²) -> PixelShuffle(s) -> activation."""

    def __init__(self, c_in: int, c_out: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out * stride * stride, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(stride)
        self.act = ACTIVATIONS[act][1]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.shuffle(self.conv(x)))


class NeRV(nn.Module):
    """The NeRV generator: ``forward(t)`` maps frame times ``(N,)`` to frames ``(N, 3, H, W)`` in [0, 1]."""

    def __init__(self, cfg: NeRVConfig) -> None:
        super().__init__()
        self.cfg = cfg
        act = ACTIVATIONS[cfg.act][1]
        dims = [cfg.embed_dim] + [cfg.stem_dim] * cfg.stem_layers + [cfg.fc_h * cfg.fc_w * cfg.fc_dim]
        stem: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            stem += [nn.Linear(a, b), act()]
        self.stem = nn.Sequential(*stem)
        blocks, c = [], cfg.fc_dim
        for s, c_out in zip(cfg.strides, cfg.channels(), strict=True):
            blocks.append(NeRVBlock(c, c_out, s, cfg.act))
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, 3, 1, 1)

    def forward(self, t: Tensor) -> Tensor:
        cfg = self.cfg
        x = self.stem(positional_encoding(t, cfg.embed_base, cfg.embed_levels))
        x = x.view(x.shape[0], cfg.fc_dim, cfg.fc_h, cfg.fc_w)
        x = self.blocks(x)
        return (torch.tanh(self.head(x)) + 1.0) * 0.5


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight tensors of every conv and linear layer (what global magnitude pruning ranks), by name."""
    out = {}
    for mname, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            out[f"{mname}.weight" if mname else "weight"] = module.weight
    return out


def config_from_dict(d: Mapping[str, Any]) -> NeRVConfig:
    """Inverse of :meth:`NeRVConfig.to_dict`."""
    return NeRVConfig(**{**d, "strides": tuple(d["strides"])})
