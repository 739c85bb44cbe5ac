"""Per-clip NeRV training and the NeRV compression pipeline: train, prune, fine-tune, quantize, entropy-code.

NeRV (H. Chen, B. He, H. Wang, Y. Ren, S.-N. Lim, A. Shrivastava, "NeRV: Neural
Representations for Videos", NeurIPS 2021) codes a clip as the weights of a network
trained on that clip alone (:mod:`vcmbench.models.nerv`). The recipe follows the paper
and its reference code (``haochen-rye/NeRV``):

1. **Training**: loss ``0.7·L1 + 0.3·(1 − SSIM)`` (``ssim`` of pytorch_msssim, data range 1:
   upstream's ``Fusion6``), Adam with β = (0.5, 0.999), lr 5e-4, one frame per step in a
   shuffled order, cosine schedule with a linear warm-up over the first 20 % of the epochs
   (upstream's ``adjust_lr``: the multiplier rises from 0.1 to 1, then ``0.5·(1 + cos)``;
   the warm-up here is ``0.2·epochs`` exactly where upstream truncates it to whole epochs).
2. **Pruning**: global magnitude pruning of a fraction ``p`` of all conv and linear weights
   (exactly ``round(p·N)`` of them, ties broken by position; upstream leaves the 3-channel
   head out, here it is ranked with the rest), then fine-tuning with the pruning mask fixed
   (upstream's README: 100 epochs, no warm-up). ``p = 0`` skips both.
3. **Quantization** to ``k`` bits (8 by default): per output channel for weights, per tensor
   for biases, over the surviving values, ``w ≈ min + scale·q`` with
   ``q ∈ {0 .. 2^k − 1}``. ``min`` and ``scale`` are stored as float16, rounded so that the
   grid still covers the channel's range (min down, scale up). A pruned weight is the
   reserved symbol ``2^k`` and decodes to exactly 0.0.
4. **Entropy coding** of all symbols (weights and biases, in the network's parameter order)
   with one static model built from their histogram, using CompressAI's range-ANS coder
   (``compressai.ans``; Duda, "Asymmetric numeral systems", arXiv:1311.2540). The paper uses
   Huffman coding; rANS is chosen here because it codes within a fraction of a percent of the
   empirical entropy where Huffman loses up to one bit per symbol (the "pruned" symbol alone
   holds 40 % of the weights at ``p = 0.4``, where Huffman spends 1 bit on a 1.32-bit symbol
   and more on the rare ones), and because its C++ decoder takes ~0.1 s per million symbols,
   so decoding a 12.5M-parameter NeRV-L is fast without any Python loop. The 16-bit
   frequencies are stored in the stream (one of the 65536 slots is reserved for CompressAI's
   escape symbol, which is never used).

SA-NeRV adds a masked term: ``loss = L(x, x̂) + w·L(x⊙m, x̂⊙m)``, m the edge mask of each frame
(the SAM-edge objective of SA-ICM, Shindo et al., ICIP 2024, applied to NeRV).

**Bitstream** (rate = all of its bytes; varints are unsigned LEB128, numbers little-endian)::

    4 bytes  magic "NeRV"            u8 format version (1)       u8 variant (0 NeRV, 1 SA-NeRV; informational)
    varint frames, height, width, pad_bottom, pad_right           f64 fps
    f64 embed_base | varint embed_levels | varint stem_dim | varint stem_layers
    varint fc_h | varint fc_w | varint fc_dim | varint lower_width | f64 expansion | varint reduction
    u8 activation (0 gelu, 1 swish, 2 relu) | u8 stages | stages x u8 stride
    u8 bits
    per parameter tensor, in the network's order: C x f16 min, C x f16 scale (C = output channels, 1 for biases)
    varint alphabet size (2^bits + 1) | alphabet x varint frequency (they sum to 65535)
    varint payload length | payload (rANS)
    u32 CRC-32 of every byte before it

A clip coded in segments (the codec's ``segment: N``: one network per N frames) is a container of
those streams, the rate being all of its bytes::

    4 bytes  magic "NeRS"            u8 container version (1)    varint segments
    per segment: varint length | a NeRV bitstream as above (its own header, frames and CRC-32)
    u32 CRC-32 of every byte before it

The decoder rebuilds the network from the header alone, decodes the weights, runs every
frame (one at a time), rounds to uint8 and crops the padding. The encoder's own
reconstruction goes through the same functions on its in-memory symbols, so it equals the
decoder's output bit for bit on the same kind of device (and thread count).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import sys
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError
from ..media.clip import psnr_frames
from ..media.devices import resolve_device
from ..models.nerv import (
    ACTIVATIONS,
    Layout,
    NeRV,
    NeRVConfig,
    NeRVError,
    count_parameters,
    derive_layout,
    frame_times,
    model_config,
    prunable_weights,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "SEGMENTS_MAGIC",
    "DecodedClip",
    "EpochLog",
    "Header",
    "NeRVEncoding",
    "QuantizedTensor",
    "TrainSettings",
    "build_quantized_model",
    "decode_clip",
    "dequantize",
    "encode_clip",
    "fit",
    "lr_at",
    "nerv_loss",
    "pack_bitstream",
    "pack_segments",
    "parse_bitstream",
    "parse_header",
    "prune_global",
    "quantize_model",
    "quantize_tensor",
    "quantized_frequencies",
    "rans_decode",
    "rans_encode",
    "render",
    "sanerv_loss",
    "torch_threads",
    "unpack_segments",
]

MAGIC = b"NeRV"
FORMAT_VERSION = 1
#: the container of a clip coded in segments (module docstring)
SEGMENTS_MAGIC = b"NeRS"
SEGMENTS_VERSION = 1
VARIANTS = {"nerv": 0, "sanerv": 1}
#: CompressAI's rANS works with 16-bit frequencies; the last slot is its (unused) escape symbol
RANS_TOTAL = 1 << 16
MAX_BITS = 12
ACT_NAMES = {0: "gelu", 1: "swish", 2: "relu"}


# ---- training -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainSettings:
    """The per-clip training recipe (NeRV paper / upstream defaults, epochs aside)."""

    epochs: int = 300
    #: fine-tuning epochs after pruning (upstream's README: 100); unused when nothing is pruned
    finetune_epochs: int = 100
    lr: float = 5e-4
    betas: tuple[float, float] = (0.5, 0.999)
    #: fraction of the epochs spent in the linear warm-up
    warmup: float = 0.2
    finetune_warmup: float = 0.0
    batch_size: int = 1
    #: loss = l1_weight·L1 + (1 − l1_weight)·(1 − SSIM)
    l1_weight: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name, lo in (("epochs", 1), ("finetune_epochs", 0), ("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise NeRVError(f"NeRV training: {name} must be an integer >= {lo}, got {value!r}")
        if not self.lr > 0:
            raise NeRVError(f"NeRV training: lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise NeRVError(f"NeRV training: betas must be two numbers in [0, 1), got {self.betas}")
        for name in ("warmup", "finetune_warmup", "l1_weight"):
            if not 0 <= getattr(self, name) <= 1:
                raise NeRVError(f"NeRV training: {name} must lie in [0, 1], got {getattr(self, name)}")


def nerv_loss(pred: Tensor, target: Tensor, l1_weight: float = 0.7) -> Tensor:
    """``l1_weight·L1 + (1 − l1_weight)·(1 − SSIM)`` (NeRV's loss at the default 0.7)."""
    from pytorch_msssim import ssim

    l1 = (pred - target).abs().mean()
    return l1_weight * l1 + (1.0 - l1_weight) * (1.0 - ssim(pred, target, data_range=1.0, size_average=True))


def sanerv_loss(pred: Tensor, target: Tensor, mask: Tensor, mask_weight: float = 1.0,
                l1_weight: float = 0.7) -> Tensor:  # fmt: skip
    """SA-NeRV: ``L(x, x̂) + w·L(x⊙m, x̂⊙m)`` with L the NeRV loss and m a {0, 1} mask (N, 1, H, W)."""
    return nerv_loss(pred, target, l1_weight) + mask_weight * nerv_loss(pred * mask, target * mask, l1_weight)


def lr_at(epoch: float, epochs: int, warmup_epochs: float, base_lr: float) -> float:
    """Upstream's ``adjust_lr`` (cosine): linear warm-up from 0.1·lr, then a half cosine down to 0."""
    if epoch < warmup_epochs:
        return base_lr * (0.1 + 0.9 * epoch / warmup_epochs)
    span = max(epochs - warmup_epochs, 1e-12)
    return base_lr * 0.5 * (math.cos(math.pi * (epoch - warmup_epochs) / span) + 1.0)


@dataclass
class EpochLog:
    stage: str
    epoch: int
    loss: float
    psnr: float
    lr: float
    seconds: float


def fit(
    model: nn.Module,
    frames: Tensor,
    *,
    epochs: int,
    settings: TrainSettings,
    warmup: float,
    seed: int,
    masks: Tensor | None = None,
    mask_weight: float = 1.0,
    keep: Mapping[str, Tensor] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    stage: str = "train",
) -> list[EpochLog]:
    """Train ``model`` on ``frames`` (T x 3 x H x W uint8, on the model's device) for ``epochs`` epochs.

    ``masks`` (T x 1 x H x W uint8 {0, 1}) switch on the SA-NeRV term; ``keep`` (parameter
    name -> bool mask) holds pruned weights at zero after every step. The frame order of
    every epoch comes from a generator seeded with ``seed``.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4:
        raise NeRVError(f"fit: frames must be a T x 3 x H x W uint8 tensor, got {tuple(frames.shape)} {frames.dtype}")
    device = frames.device
    params = dict(model.named_parameters())
    held = {name: params[name] for name in keep} if keep else {}
    keep_dev = {name: keep[name].to(device) for name in held} if keep else {}
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas)
    gen = torch.Generator().manual_seed(seed)
    n = frames.shape[0]
    bs = min(settings.batch_size, n)
    steps = math.ceil(n / bs)
    times = frame_times(n).to(device)
    warm = warmup * epochs
    history: list[EpochLog] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps, desc=f"nerv {stage}", leave=False, dynamic_ncols=True, file=sys.stderr)
    model.train()
    try:
        for epoch in range(epochs):
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=gen).to(device)
            loss_sum = torch.zeros((), device=device)
            se_sum = torch.zeros((), device=device, dtype=torch.float64)
            rate = settings.lr
            for i in range(steps):
                idx = order[i * bs : (i + 1) * bs]
                rate = lr_at(epoch + i / steps, epochs, warm, settings.lr)
                for group in opt.param_groups:
                    group["lr"] = rate
                x = frames[idx].float().div_(255.0)
                pred = model(times[idx])
                if masks is None:
                    loss = nerv_loss(pred, x, settings.l1_weight)
                else:
                    loss = sanerv_loss(pred, x, masks[idx].float(), mask_weight, settings.l1_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if held:
                    with torch.no_grad():
                        for name, p in held.items():
                            p.mul_(keep_dev[name])
                with torch.no_grad():
                    loss_sum += loss.detach() * idx.numel()
                    se_sum += F.mse_loss(pred.detach(), x, reduction="sum").double()
                if bar is not None:
                    bar.update(1)
            mse = float(se_sum) / float(frames[0].numel() * n)
            entry = EpochLog(stage, epoch + 1, float(loss_sum) / n, _psnr(mse), rate, time.perf_counter() - t0)
            history.append(entry)
            if bar is not None:
                bar.set_postfix(loss=f"{entry.loss:.4f}", psnr=f"{entry.psnr:.2f}")
            if log is not None:
                log(f"nerv {stage} epoch {entry.epoch}/{epochs}: loss {entry.loss:.5f}, PSNR {entry.psnr:.2f} dB, "
                    f"lr {entry.lr:.2e}, {entry.seconds:.2f} s")  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


# ---- pruning --------------------------------------------------------------------------------------
def prune_global(model: nn.Module, ratio: float) -> dict[str, Tensor]:
    """Zero the ``round(ratio·N)`` smallest-magnitude conv / linear weights; returns name -> keep mask (bool, CPU)."""
    if not 0 <= ratio < 1:
        raise NeRVError(f"prune ratio must lie in [0, 1), got {ratio}")
    weights = prunable_weights(model)
    flat = torch.cat([w.detach().abs().flatten().cpu() for w in weights.values()])
    k = int(round(ratio * flat.numel()))
    keep_flat = torch.ones(flat.numel(), dtype=torch.bool)
    if k:
        keep_flat[torch.argsort(flat, stable=True)[:k]] = False
    out, pos = {}, 0
    with torch.no_grad():
        for name, w in weights.items():
            m = keep_flat[pos : pos + w.numel()].reshape(w.shape)
            pos += w.numel()
            w.mul_(m.to(w.device))
            out[name] = m
    return out


# ---- quantization ---------------------------------------------------------------------------------
@dataclass
class QuantizedTensor:
    """One parameter tensor as symbols: ``q`` in 0 .. 2^bits − 1, or ``2^bits`` for a pruned weight."""

    name: str
    shape: tuple[int, ...]
    symbols: np.ndarray
    mins: np.ndarray
    scales: np.ndarray

    @property
    def channels(self) -> int:
        return int(self.mins.shape[0])


def _f16_down(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float16)
    f = np.where(f.astype(np.float64) > x, np.nextafter(f, np.float16(-np.inf)), f)
    return f.astype(np.float16)


def _f16_up(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float16)
    f = np.where(f.astype(np.float64) < x, np.nextafter(f, np.float16(np.inf)), f)
    return f.astype(np.float16)


def tensor_channels(name: str, shape: Sequence[int]) -> int:
    """Quantization groups of a parameter: output channels of a weight, one group for a bias."""
    return int(shape[0]) if len(shape) >= 2 else 1


def quantize_tensor(name: str, w: Tensor, keep: Tensor | None, bits: int) -> QuantizedTensor:
    """Min-max quantization of the kept values of ``w`` to ``bits`` bits, per output channel (weights) or tensor."""
    shape = tuple(w.shape)
    c = tensor_channels(name, shape)
    levels = (1 << bits) - 1
    wv = w.detach().cpu().double().numpy().reshape(c, -1)
    kv = np.ones_like(wv, dtype=bool) if keep is None else keep.cpu().numpy().reshape(c, -1)
    lo = np.where(kv, wv, np.inf).min(axis=1)
    hi = np.where(kv, wv, -np.inf).max(axis=1)
    empty = ~kv.any(axis=1)
    lo[empty] = 0.0
    hi[empty] = 0.0
    lo16 = _f16_down(lo)
    sc16 = _f16_up((hi - lo16.astype(np.float64)) / levels)
    if not (np.isfinite(lo16).all() and np.isfinite(sc16).all()):
        raise NeRVError(f"quantization of {name}: weights beyond the float16 range ({lo.min()} .. {hi.max()})")
    step = sc16.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(step > 0, np.rint((wv - lo16.astype(np.float64)[:, None]) / np.where(step > 0, step, 1.0)), 0)
    q = np.clip(q, 0, levels).astype(np.int64)
    symbols = np.where(kv, q, levels + 1).reshape(-1)
    return QuantizedTensor(name, shape, symbols, lo16, sc16)


def dequantize(qt: QuantizedTensor, bits: int) -> Tensor:
    """float32 values of a quantized tensor (pruned symbols -> exactly 0); shared by encoder and decoder."""
    c = qt.channels
    q = torch.from_numpy(np.ascontiguousarray(qt.symbols, dtype=np.int64)).reshape(c, -1)
    lo = torch.from_numpy(qt.mins.astype(np.float32)).reshape(c, 1)
    sc = torch.from_numpy(qt.scales.astype(np.float32)).reshape(c, 1)
    vals = lo + sc * q.to(torch.float32)
    vals = torch.where(q == (1 << bits), torch.zeros((), dtype=torch.float32), vals)
    return vals.reshape(qt.shape).contiguous()


def quantize_model(model: nn.Module, bits: int, keep: Mapping[str, Tensor] | None = None) -> list[QuantizedTensor]:
    """Every parameter of ``model`` in state-dict order (weights per channel, biases per tensor)."""
    if not 1 <= bits <= MAX_BITS:
        raise NeRVError(f"quantization bits must lie in 1..{MAX_BITS}, got {bits}")
    keep = keep or {}
    return [quantize_tensor(name, p, keep.get(name), bits) for name, p in model.named_parameters()]


def build_quantized_model(cfg: NeRVConfig, tensors: Sequence[QuantizedTensor], bits: int,
                          device: torch.device | str = "cpu") -> NeRV:  # fmt: skip
    """A NeRV with the dequantized weights, on ``device``, in eval mode (decoder and encoder alike)."""
    with torch.device("meta"):
        model = NeRV(cfg)
    state = {qt.name: dequantize(qt, bits) for qt in tensors}
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()


# ---- entropy coding -------------------------------------------------------------------------------
def quantized_frequencies(counts: np.ndarray, total: int = RANS_TOTAL - 1) -> np.ndarray:
    """Integer frequencies summing to ``total``, >= 1 for every symbol that occurs, 0 for the others."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    present = counts > 0
    if n == 0:
        raise NeRVError("entropy coding: no symbols")
    if int(present.sum()) > total:
        raise NeRVError("entropy coding: more distinct symbols than frequency slots")
    freq = (counts * total) // n
    freq[present & (freq == 0)] = 1
    diff = total - int(freq.sum())
    if diff > 0:
        freq[int(np.argmax(counts))] += diff
    while diff < 0:
        j = int(np.argmax(freq))
        take = min(-diff, int(freq[j]) - 1)
        freq[j] -= take
        diff += take
    return freq


def _cdf(freq: np.ndarray) -> list[int]:
    return [0, *np.cumsum(freq).tolist(), RANS_TOTAL]


def _rans() -> Any:
    """CompressAI's rANS extension module (``compressai.ans``).

    Importing the ``compressai`` package takes seconds (it pulls in its datasets, zoo, ...), so
    when it has not been imported yet the compiled ``ans`` module is loaded from its file under
    its own name, where a later ``import compressai.ans`` finds it.
    """
    mod = sys.modules.get("compressai.ans")
    if mod is not None:
        return mod
    with _RANS_LOCK:
        return _load_rans()


_RANS_LOCK = threading.Lock()


def _load_rans() -> Any:
    mod = sys.modules.get("compressai.ans")
    if mod is not None:
        return mod
    if "compressai" not in sys.modules:
        import importlib.machinery
        import importlib.util

        spec = importlib.util.find_spec("compressai")
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "ans" + suffix)
                if os.path.isfile(path):
                    ext = importlib.util.spec_from_file_location("compressai.ans", path)
                    if ext is not None and ext.loader is not None:
                        mod = importlib.util.module_from_spec(ext)
                        ext.loader.exec_module(mod)
                        sys.modules["compressai.ans"] = mod
                        return mod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from compressai import ans
        except ImportError as exc:
            raise NeRVError(f"NeRV's entropy coder needs compressai (pip install compressai==1.2.8): {exc}") from None
    return ans


def rans_encode(symbols: np.ndarray, freq: np.ndarray) -> bytes:
    cdf = _cdf(freq)
    sym = symbols.tolist()
    return bytes(_rans().RansEncoder().encode_with_indexes(sym, [0] * len(sym), [cdf], [len(cdf)], [0]))


def rans_decode(payload: bytes, freq: np.ndarray, count: int) -> np.ndarray:
    cdf = _cdf(freq)
    out = _rans().RansDecoder().decode_with_indexes(payload, [0] * count, [cdf], [len(cdf)], [0])
    return np.asarray(out, dtype=np.int64)


# ---- bitstream ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """What a NeRV bitstream says about itself (everything the decoder needs besides the weights)."""

    variant: int
    frames: int
    layout: Layout
    fps: float
    config: NeRVConfig
    bits: int


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    def __init__(self, data: bytes, start: int = 0) -> None:
        self.data, self.pos = data, start

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError(f"nerv: truncated bitstream (reading {what} at byte {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def f64(self, what: str) -> float:
        return struct.unpack("<d", self.take(8, what))[0]

    def varint(self, what: str) -> int:
        value = shift = 0
        while True:
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CodecError(f"nerv: corrupt bitstream ({what}: varint too long)")


def pack_bitstream(header: Header, tensors: Sequence[QuantizedTensor], freq: np.ndarray, payload: bytes) -> bytes:
    """Header + quantization parameters + frequency table + rANS payload + CRC-32 (module docstring)."""
    cfg, lay = header.config, header.layout
    out = bytearray(MAGIC)
    out += bytes([FORMAT_VERSION, header.variant])
    for v in (header.frames, lay.height, lay.width, lay.pad_bottom, lay.pad_right):
        out += _varint(v)
    out += struct.pack("<d", float(header.fps))
    out += struct.pack("<d", float(cfg.embed_base)) + _varint(cfg.embed_levels)
    out += _varint(cfg.stem_dim) + _varint(cfg.stem_layers)
    out += _varint(cfg.fc_h) + _varint(cfg.fc_w) + _varint(cfg.fc_dim) + _varint(cfg.lower_width)
    out += struct.pack("<d", float(cfg.expansion)) + _varint(cfg.reduction)
    if len(cfg.strides) > 255 or any(s > 255 for s in cfg.strides):
        raise NeRVError(f"strides {cfg.strides} do not fit the bitstream (at most 255 stages of stride <= 255)")
    out += bytes([ACTIVATIONS[cfg.act][0], len(cfg.strides), *cfg.strides, header.bits])
    for qt in tensors:
        out += qt.mins.astype("<f2").tobytes() + qt.scales.astype("<f2").tobytes()
    out += _varint(len(freq))
    for f in freq.tolist():
        out += _varint(int(f))
    out += _varint(len(payload)) + payload
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def _parse_header(r: _Reader) -> Header:
    version = r.u8("format version")
    if version != FORMAT_VERSION:
        raise CodecError(f"nerv: bitstream format version {version}, this vcmbench reads {FORMAT_VERSION}")
    variant = r.u8("variant")
    frames, height, width, pad_b, pad_r = (r.varint(w) for w in ("frames", "height", "width", "pad_bottom",
                                                                 "pad_right"))  # fmt: skip
    fps = r.f64("fps")
    embed_base = r.f64("embed_base")
    levels, stem_dim, stem_layers = r.varint("embed_levels"), r.varint("stem_dim"), r.varint("stem_layers")
    fc_h, fc_w, fc_dim, lower = r.varint("fc_h"), r.varint("fc_w"), r.varint("fc_dim"), r.varint("lower_width")
    expansion = r.f64("expansion")
    reduction = r.varint("reduction")
    act_code = r.u8("activation")
    stages = r.u8("stages")
    strides = tuple(r.take(stages, "strides"))
    bits = r.u8("bits")
    if act_code not in ACT_NAMES:
        raise CodecError(f"nerv: corrupt bitstream (activation code {act_code})")
    if not 1 <= bits <= MAX_BITS:
        raise CodecError(f"nerv: corrupt bitstream (quantization bits {bits})")
    if frames < 1 or height < 1 or width < 1 or not (fps > 0 and math.isfinite(fps)):
        raise CodecError(f"nerv: corrupt bitstream ({frames} frames of {width}x{height} at {fps} fps)")
    try:
        cfg = NeRVConfig(fc_h=fc_h, fc_w=fc_w, fc_dim=fc_dim, strides=strides, stem_dim=stem_dim,
                         stem_layers=stem_layers, lower_width=lower, expansion=expansion, reduction=reduction,
                         embed_base=embed_base, embed_levels=levels, act=ACT_NAMES[act_code])  # fmt: skip
    except NeRVError as exc:
        raise CodecError(f"nerv: corrupt bitstream header ({exc})") from None
    layout = Layout(height, width, pad_b, pad_r, fc_h, fc_w, strides)
    if (cfg.out_height, cfg.out_width) != (layout.padded_height, layout.padded_width):
        raise CodecError(f"nerv: corrupt bitstream header (network output {cfg.out_width}x{cfg.out_height}, "
                         f"padded frame {layout.padded_width}x{layout.padded_height})")  # fmt: skip
    return Header(variant, frames, layout, fps, cfg, bits)


def pack_segments(streams: Sequence[bytes]) -> bytes:
    """The container of a clip coded in segments: each segment's NeRV bitstream, in frame order (module docstring)."""
    out = bytearray(SEGMENTS_MAGIC)
    out += bytes([SEGMENTS_VERSION]) + _varint(len(streams))
    for data in streams:
        out += _varint(len(data)) + data
    out += struct.pack("<I", zlib.crc32(out) & 0xFFFFFFFF)
    return bytes(out)


def unpack_segments(data: bytes) -> list[bytes] | None:
    """The segments' NeRV bitstreams of a container, in frame order; None when ``data`` is one NeRV bitstream."""
    if data[: len(SEGMENTS_MAGIC)] != SEGMENTS_MAGIC:
        return None
    if len(data) < len(SEGMENTS_MAGIC) + 6:
        raise CodecError(f"nerv: segment container of {len(data)} bytes is truncated")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise CodecError("nerv: segment container is corrupt or truncated (CRC-32 mismatch)")
    r = _Reader(data[:-4], len(SEGMENTS_MAGIC))
    version = r.u8("container version")
    if version != SEGMENTS_VERSION:
        raise CodecError(f"nerv: segment container version {version}, this vcmbench reads {SEGMENTS_VERSION}")
    streams = [r.take(r.varint("segment length"), f"segment {i}") for i in range(r.varint("segments"))]
    if r.pos != len(r.data) or not streams:
        raise CodecError(f"nerv: corrupt segment container ({len(streams)} segments, {len(r.data) - r.pos} bytes "
                         "left over)")  # fmt: skip
    return streams


def parse_header(data: bytes) -> Header:
    """The header of a NeRV bitstream (checks magic, version, CRC-32)."""
    return _parse(data)[0]


def _parse(data: bytes) -> tuple[Header, _Reader]:
    if len(data) < len(MAGIC) + 6:
        raise CodecError(f"nerv: bitstream of {len(data)} bytes is shorter than any NeRV header")
    if data[: len(MAGIC)] != MAGIC:
        raise CodecError(f"nerv: not a NeRV bitstream (magic {data[:4]!r}, expected {MAGIC!r})")
    (crc,) = struct.unpack("<I", data[-4:])
    if zlib.crc32(data[:-4]) & 0xFFFFFFFF != crc:
        raise CodecError("nerv: bitstream is corrupt or truncated (CRC-32 mismatch)")
    r = _Reader(data[:-4], len(MAGIC))
    return _parse_header(r), r


def parse_bitstream(data: bytes) -> tuple[Header, list[QuantizedTensor]]:
    """Header and quantized tensors of a NeRV bitstream; any malformation is a :class:`CodecError`."""
    header, r = _parse(data)
    with torch.device("meta"):
        shapes = [(name, tuple(p.shape)) for name, p in NeRV(header.config).named_parameters()]
    params: list[tuple[str, tuple[int, ...], np.ndarray, np.ndarray]] = []
    for name, shape in shapes:
        c = tensor_channels(name, shape)
        mins = np.frombuffer(r.take(2 * c, f"{name} minima"), dtype="<f2").astype(np.float16)
        scales = np.frombuffer(r.take(2 * c, f"{name} scales"), dtype="<f2").astype(np.float16)
        params.append((name, shape, mins, scales))
    alphabet = r.varint("alphabet size")
    if alphabet != (1 << header.bits) + 1:
        raise CodecError(f"nerv: corrupt bitstream (alphabet of {alphabet} symbols for {header.bits}-bit weights)")
    freq = np.array([r.varint("frequency table") for _ in range(alphabet)], dtype=np.int64)
    if int(freq.sum()) != RANS_TOTAL - 1:
        raise CodecError(f"nerv: corrupt bitstream (frequencies sum to {int(freq.sum())}, not {RANS_TOTAL - 1})")
    n = r.varint("payload length")
    payload = r.take(n, "payload")
    if r.pos != len(r.data):
        raise CodecError(f"nerv: corrupt bitstream ({len(r.data) - r.pos} unexpected bytes after the payload)")
    total = sum(math.prod(shape) for _, shape, _, _ in params)
    symbols = rans_decode(payload, freq, total)
    if symbols.size != total or symbols.min(initial=0) < 0 or symbols.max(initial=0) >= alphabet:
        raise CodecError("nerv: corrupt bitstream (entropy-coded weights out of range)")
    out, pos = [], 0
    for name, shape, mins, scales in params:
        size = math.prod(shape)
        out.append(QuantizedTensor(name, shape, symbols[pos : pos + size], mins, scales))
        pos += size
    return header, out


# ---- rendering ------------------------------------------------------------------------------------
@torch.no_grad()
def render(model: nn.Module, num_frames: int, layout: Layout, device: torch.device | str) -> np.ndarray:
    """Every frame of the network, one at a time, rounded to uint8 and cropped: T x H x W x 3."""
    model.eval()
    times = frame_times(num_frames)
    out = np.empty((num_frames, layout.height, layout.width, 3), dtype=np.uint8)
    for i in range(num_frames):
        y = model(times[i : i + 1].to(device))[0, :, : layout.height, : layout.width]
        out[i] = y.mul(255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return out


# ---- threads ---------------------------------------------------------------------------------
_THREADS_LOCK = threading.Lock()
_THREADS_USERS = 0
_THREADS_SAVED = 0


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (process-wide), restored when the last user leaves; None: unchanged."""
    global _THREADS_USERS, _THREADS_SAVED
    if not n:
        yield
        return
    with _THREADS_LOCK:
        if _THREADS_USERS == 0:
            _THREADS_SAVED = torch.get_num_threads()
        _THREADS_USERS += 1
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS_USERS -= 1
            if _THREADS_USERS == 0:
                torch.set_num_threads(_THREADS_SAVED)


@contextlib.contextmanager
def _deterministic_cuda(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


# ---- the pipeline ---------------------------------------------------------------------------------
@dataclass
class NeRVEncoding:
    """A coded clip: the bytes, the encoder's own reconstruction (of the quantized network) and the logs."""

    data: bytes
    frames: np.ndarray
    header: Header
    history: list[EpochLog] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecodedClip:
    frames: np.ndarray
    fps: float
    header: Header


def _frames_tensor(frames: np.ndarray, layout: Layout, device: torch.device) -> Tensor:
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if layout.pad_bottom or layout.pad_right:
        x = F.pad(x.float(), (0, layout.pad_right, 0, layout.pad_bottom), mode="replicate").round().to(torch.uint8)
    return x.contiguous().to(device)


def _masks_tensor(masks: np.ndarray, frames: np.ndarray, layout: Layout, device: torch.device) -> Tensor:
    m = np.asarray(masks)
    if m.shape != frames.shape[:3]:
        raise NeRVError(f"SA-NeRV masks have shape {m.shape}, the clip's frames {frames.shape[:3]}")
    t = torch.from_numpy((m > 0).astype(np.uint8))[:, None]
    t = F.pad(t, (0, layout.pad_right, 0, layout.pad_bottom))
    return t.contiguous().to(device)


def encode_clip(
    frames: np.ndarray,
    fps: float,
    arch: Mapping[str, Any],
    *,
    prune: float = 0.0,
    bits: int = 8,
    train: TrainSettings | None = None,
    masks: np.ndarray | None = None,
    mask_weight: float = 1.0,
    device: str | torch.device = "auto",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> NeRVEncoding:
    """Train a NeRV on ``frames`` (T x H x W x 3 uint8), prune, fine-tune, quantize and entropy-code it.

    ``arch``: :func:`~vcmbench.models.nerv.model_config` arguments (``size``, ``width``,
    ``fc_dim``, ``lower_width``, ``stem_dim``, ``act``, ...) plus the layout limits
    ``max_stages`` / ``max_fc_cells``. ``masks`` (T x H x W, non-zero = edge) make it SA-NeRV.
    """
    train = train or TrainSettings()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise NeRVError(f"expected T x H x W x 3 uint8 frames, got {frames.shape} {frames.dtype}")
    if not 0 <= prune < 1:
        raise NeRVError(f"prune ratio must lie in [0, 1), got {prune}")
    if not 1 <= bits <= MAX_BITS:
        raise NeRVError(f"quantization bits must lie in 1..{MAX_BITS}, got {bits}")
    arch = dict(arch)
    limits = {k: int(arch.pop(k)) for k in ("max_stages", "max_fc_cells") if k in arch}
    t_count, height, width = frames.shape[:3]
    layout = derive_layout(height, width, **limits)
    cfg = model_config(layout, **arch)
    dev = resolve_device(str(device), "NeRV", NeRVError) if not isinstance(device, torch.device) else device
    t_start = time.perf_counter()
    with _deterministic_cuda(dev):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(train.seed)
            model = NeRV(cfg)
        model = model.to(dev)
        x = _frames_tensor(frames, layout, dev)
        m = _masks_tensor(masks, frames, layout, dev) if masks is not None else None
        common = {"settings": train, "masks": m, "mask_weight": mask_weight, "progress": progress, "log": log}
        history = fit(model, x, epochs=train.epochs, warmup=train.warmup, seed=train.seed + 1, stage="train",
                      **common)  # fmt: skip
        t_train = time.perf_counter()
        keep = None
        if prune > 0:
            keep = prune_global(model, prune)
            if train.finetune_epochs:
                history += fit(model, x, epochs=train.finetune_epochs, warmup=train.finetune_warmup,
                               seed=train.seed + 2, keep=keep, stage="finetune", **common)  # fmt: skip
        t_tune = time.perf_counter()
        tensors = quantize_model(model, bits, keep)
        symbols = np.concatenate([qt.symbols for qt in tensors])
        freq = quantized_frequencies(np.bincount(symbols, minlength=(1 << bits) + 1))
        payload = rans_encode(symbols, freq)
        variant = VARIANTS["sanerv" if masks is not None else "nerv"]
        header = Header(variant, int(t_count), layout, float(fps), cfg, int(bits))
        data = pack_bitstream(header, tensors, freq, payload)
        recon = render(build_quantized_model(cfg, tensors, bits, dev), int(t_count), layout, dev)
    t_end = time.perf_counter()
    pruned = int((symbols == (1 << bits)).sum())
    stats = {
        "parameters": count_parameters(model),
        "pruned": pruned,
        "payload_bytes": len(payload),
        "header_bytes": len(data) - len(payload),
        "train_psnr": history[-1].psnr if history else None,
        "psnr": psnr_frames(frames, recon),
        "train_s": round(t_train - t_start, 3),
        "finetune_s": round(t_tune - t_train, 3),
        "code_s": round(t_end - t_tune, 3),
        "device": dev.type,
    }
    if log is not None:
        log(f"nerv: {stats['parameters']} parameters ({pruned} pruned), {len(data)} bytes, "
            f"PSNR {stats['psnr']:.2f} dB after {bits}-bit quantization")  # fmt: skip
    return NeRVEncoding(data, recon, header, history, stats)


def decode_clip(data: bytes, device: str | torch.device = "cpu") -> DecodedClip:
    """Rebuild the network from the bitstream alone and render its frames (T x H x W x 3 uint8)."""
    header, tensors = parse_bitstream(data)
    dev = resolve_device(str(device), "NeRV", NeRVError) if not isinstance(device, torch.device) else device
    with _deterministic_cuda(dev):
        model = build_quantized_model(header.config, tensors, header.bits, dev)
        frames = render(model, header.frames, header.layout, dev)
    return DecodedClip(frames, header.fps, header)
