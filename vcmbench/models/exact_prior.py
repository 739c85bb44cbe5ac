"""Entropy parameters that every machine computes bit for bit alike: the hyperprior in exact integer arithmetic.

A learned codec's decoder recomputes the entropy model's parameters (the Gaussian scales, which choose
each symbol's CDF, and the means, which are added to the decoded symbols) from what it has already
decoded. In float32 those parameters depend on the order of the sums inside the convolutions, which
changes with the number of threads, the CPU's vector width, the library and the device; a scale that
lands on the other side of a table entry picks another CDF, and the rANS decoder loses sync (the image
decodes to noise). Ballé et al. ("Integer Networks for Data Compression with Latent-Variable Models",
ICLR 2019) make the prior's network integer for this reason; this module does the same for an already
trained model, without retraining:

- every weight of the hyper-synthesis ``h_s`` is rounded once to an integer times a power of two
  (:data:`WEIGHT_BITS` significant bits per layer), every bias and LeakyReLU slope too;
- activations are integers times ``2**-ACT_BITS``; each convolution is an exact integer sum, computed in
  float64 with every product and partial sum an integer below ``2**53`` (checked on the data, before the
  layer, from the layer's largest L1 weight norm; where the bound could be passed, the activations are
  first rounded to fewer bits, a decision taken from exact values as well). Integer sums do not depend on
  their order, so the result is the same for any number of threads, any BLAS, any CPU, and on CUDA;
- rounding is only ever of exact values, by ``torch.round`` (half to even), after exact power-of-two
  scaling.

The scales and means come out as exact float64 values; the scale indexes are found by exact comparisons
with the CDF table's scales, and the decoder's latents are ``symbols + means`` (exact), cast once to
float32 for the synthesis transform. The approximation against the float model is about 1e-5 on each
parameter, far below the 2-3 % spacing of the scale table: rates and reconstructions are those of the
trained model (checked by the tests against its forward pass).

Supported: CompressAI's ``ScaleHyperprior`` (``bmshj2018-hyperprior``) and ``MeanScaleHyperprior``
(``mbt2018-mean``), whose ``h_s`` holds only convolutions, transposed convolutions and (Leaky)ReLUs.
Models with autoregressive context (``mbt2018``, ``cheng2020-*``) or channel-wise attention
(``tcm``) keep their float entropy models; :func:`fixed_arithmetic` is what makes those reproducible
(same build, same CPU instruction set, same device type).

What this does *not* make identical everywhere is the synthesis transform ``g_s`` (pixels): it stays
float32, so across CPU instruction sets or between CPU and CUDA a few reconstructed pixels may differ by
one level, with the symbols (and the rate) unchanged; :func:`fixed_arithmetic` makes it identical across
processes and thread counts on one build and instruction set.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACT_BITS",
    "WEIGHT_BITS",
    "FixedPointSequential",
    "exact_compress",
    "exact_decompress",
    "exact_forward",
    "exact_prior",
    "fixed_arithmetic",
]

#: significant bits of each layer's weights (the largest magnitude of a layer is below 2**WEIGHT_BITS)
WEIGHT_BITS = 16
#: fractional bits of the activations between layers (resolution 2**-16, about 1.5e-5)
ACT_BITS = 16
#: fractional bits of a LeakyReLU slope
SLOPE_BITS = 24
#: every integer handled in float64 stays below this (2**53 is where float64 stops being exact)
_LIMIT = float(2**52)


def _frexp_exponent(value: float) -> int:
    return math.frexp(value)[1] if value > 0 else 0


@dataclass(frozen=True)
class _Conv:
    weight: Tensor  # integers, float64, CPU
    bias: Tensor | None  # the float bias (float64, CPU); scaled to the accumulator exactly at run time
    shift: int  # weight = weight_int * 2**-shift
    l1: float  # largest sum of |weight_int| over the inputs of one output
    transposed: bool
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int


@dataclass(frozen=True)
class _Leaky:
    slope: int  # slope = slope_int * 2**-SLOPE_BITS


class _ReLU:
    pass


def _conv_layer(m: nn.Conv2d | nn.ConvTranspose2d) -> _Conv | None:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    w = m.weight.detach().to("cpu", torch.float64)
    shift = WEIGHT_BITS - _frexp_exponent(float(w.abs().max()))
    wi = torch.round(w * 2.0**shift)
    transposed = isinstance(m, nn.ConvTranspose2d)
    # L1 norm of the weights reaching one output: (out, in, kh, kw) for a convolution, (in, out/groups,
    # kh, kw) for a transposed one (a transposed convolution's output sees a subset of these)
    l1 = float(wi.abs().sum(dim=(0, 2, 3) if transposed else (1, 2, 3)).max())
    bias = None if m.bias is None else m.bias.detach().to("cpu", torch.float64)
    if not (math.isfinite(l1) and 2 * l1 < _LIMIT) or (bias is not None and not bool(torch.isfinite(bias).all())):
        return None
    return _Conv(wi, bias, shift, l1, transposed, tuple(m.stride), tuple(m.padding),
                 tuple(getattr(m, "output_padding", (0, 0))), tuple(m.dilation), int(m.groups))  # fmt: skip


class FixedPointSequential:
    """An ``nn.Sequential`` of 2-D (transposed) convolutions and (Leaky)ReLUs, evaluated exactly in integers."""

    def __init__(self, layers: list[Any]) -> None:
        self.layers = layers

    @classmethod
    def from_module(cls, seq: nn.Module) -> FixedPointSequential | None:
        """The fixed-point version of ``seq``, or None when it holds a layer this module cannot evaluate."""
        if not isinstance(seq, nn.Sequential):
            return None
        layers: list[Any] = []
        for m in seq:
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                conv = _conv_layer(m)
                if conv is None:
                    return None
                layers.append(conv)
            elif isinstance(m, nn.LeakyReLU):
                layers.append(_Leaky(int(round(float(m.negative_slope) * 2**SLOPE_BITS))))
            elif isinstance(m, nn.ReLU):
                layers.append(_ReLU())
            else:
                return None
        return cls(layers)

    def __call__(self, x: Tensor, int64: bool = False) -> Tensor:
        """``seq(x)`` in exact arithmetic: a float64 CPU tensor of multiples of ``2**-ACT_BITS``.

        ``int64=True`` computes every convolution in int64 instead of float64 (several times slower):
        the same numbers, a check that the float64 sums are exact.
        """
        a = torch.round(x.detach().to("cpu", torch.float64) * 2.0**ACT_BITS)
        if a.numel() and not bool(torch.isfinite(a).all()):
            raise ValueError("exact prior: the hyper-latents are not finite")
        frac = ACT_BITS
        for layer in self.layers:
            if isinstance(layer, _Conv):
                a, frac = self._conv(layer, a, frac, int64)
            elif isinstance(layer, _Leaky):
                big = float(a.abs().max()) if a.numel() else 0.0
                if big * abs(layer.slope) >= _LIMIT:  # never with real models; keep the product exact anyway
                    k = _frexp_exponent(big * abs(layer.slope) / _LIMIT) + 1
                    a, frac = torch.round(a * 2.0**-k), frac - k
                neg = torch.round(a * float(layer.slope) * 2.0**-SLOPE_BITS)
                a = torch.where(a < 0, neg, a)
            else:
                a = a.clamp_min(0)
        return a * 2.0**-frac

    def _conv(self, c: _Conv, a: Tensor, frac: int, int64: bool = False) -> tuple[Tensor, int]:
        # |sum| <= l1 * max|a| + |bias|, the bias scaled to the accumulator's resolution 2**-(shift + frac);
        # drop k bits of the activations where that could pass the exact limit (+1: the roundings)
        bias_big = float(c.bias.abs().max()) if c.bias is not None and c.bias.numel() else 0.0
        big = float(a.abs().max()) if a.numel() else 0.0
        k = 0
        while c.l1 * (big * 2.0**-k + 1.0) + bias_big * 2.0 ** (c.shift + frac - k) + 1.0 >= _LIMIT:
            k += 1
        if k:
            a, frac = torch.round(a * 2.0**-k), frac - k
        acc_frac = c.shift + frac
        bias = None if c.bias is None else torch.round(c.bias * 2.0**acc_frac)
        w = c.weight
        if int64:
            a, w, bias = a.long(), w.long(), None if bias is None else bias.long()
        if c.transposed:
            acc = F.conv_transpose2d(a, w, bias, c.stride, c.padding, c.output_padding, c.groups, c.dilation)
        else:
            acc = F.conv2d(a, w, bias, c.stride, c.padding, c.dilation, c.groups)
        acc = acc.to(torch.float64)
        return torch.round(acc * 2.0 ** (ACT_BITS - acc_frac)), ACT_BITS


# ---- the hyperprior models -----------------------------------------------------------------------------
def _hyperprior_kind(model: nn.Module) -> str | None:
    from compressai.models.google import MeanScaleHyperprior, ScaleHyperprior

    if type(model) is MeanScaleHyperprior:  # exactly: mbt2018 (a subclass) adds a context model
        return "mean-scale"
    if type(model) is ScaleHyperprior:
        return "scale"
    return None


def exact_prior(model: nn.Module) -> FixedPointSequential | None:
    """The exact hyper-synthesis of ``model`` (built once, kept on the model), or None if it has none.

    Built from the weights the model has when first asked; a model whose weights change afterwards
    (training) must not be coded with it.
    """
    cached = model.__dict__.get("_vcmbench_exact_prior", False)
    if cached is not False:
        return cached
    prior = FixedPointSequential.from_module(model.h_s) if _hyperprior_kind(model) else None
    model.__dict__["_vcmbench_exact_prior"] = prior
    return prior


def _parameters(model: nn.Module, z_hat: Tensor) -> tuple[Tensor, Tensor | None]:
    """Exact (scales, means) on the CPU, float64; means is None for a scale-only hyperprior."""
    prior = exact_prior(model)
    assert prior is not None
    params = prior(z_hat)
    if _hyperprior_kind(model) == "mean-scale":
        scales, means = params.chunk(2, 1)
        return scales, means
    return params, None


def _indexes(gc: Any, scales: Tensor) -> Tensor:
    """CompressAI's ``build_indexes`` on exact values: the first table scale >= the (bounded) scale."""
    table = gc.scale_table.detach().to("cpu", torch.float64)
    bound = gc.lower_bound_scale.bound.detach().to("cpu", torch.float64)
    s = torch.maximum(scales, bound)
    # index = len - 1 - #{t in table[:-1] : s <= t} (compressai.entropy_models.GaussianConditional)
    below = torch.searchsorted(table[:-1].contiguous(), s.contiguous(), right=False)
    return below.to(torch.int32)


def _analysis(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    y = model.g_a(x)
    z = model.h_a(torch.abs(y) if _hyperprior_kind(model) == "scale" else y)
    return y, z


def _symbols(y: Tensor, means: Tensor | None) -> Tensor:
    y64 = y.detach().to("cpu", torch.float64)
    return torch.round(y64 - means if means is not None else y64)


def exact_compress(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """``model.compress(x)`` with the exact prior: ``{"strings": [y_strings, z_strings], "shape": ...}``."""
    y, z = _analysis(model, x)
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    z_strings = eb.compress(z)
    z_hat = eb.decompress(z_strings, z.size()[-2:])
    scales, means = _parameters(model, z_hat)
    symbols = _symbols(y, means)
    indexes = _indexes(gc, scales)
    # symbols as the "inputs" with no means: compressai rounds them again (a no-op) and codes them
    y_strings = gc.compress(symbols, indexes)
    return {"strings": [y_strings, z_strings], "shape": z.size()[-2:]}


def exact_decompress(model: nn.Module, strings: list[list[bytes]], shape: Any) -> dict[str, Tensor]:
    """``model.decompress(strings, shape)`` with the exact prior."""
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    z_hat = eb.decompress(strings[1], shape)
    scales, means = _parameters(model, z_hat)
    indexes = _indexes(gc, scales)
    cdf_device = gc.quantized_cdf.device
    symbols = gc.decompress(strings[0], indexes.to(cdf_device), dtype=torch.float64).to("cpu", torch.float64)
    y_hat = _latents(symbols, means, z_hat.device)
    return {"x_hat": model.g_s(y_hat).clamp_(0, 1)}


def _latents(symbols: Tensor, means: Tensor | None, device: torch.device) -> Tensor:
    """``symbols + means`` (exact in float64), then float32 on the model's device: the decoder's latents."""
    y_hat = symbols + means if means is not None else symbols
    return y_hat.to(torch.float32).to(device)


def exact_forward(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """The eval forward pass the codec's bitstreams decode to: ``x_hat`` (unclamped) and the likelihoods."""
    y, z = _analysis(model, x)
    eb, gc = model.entropy_bottleneck, model.gaussian_conditional
    z_hat, z_likelihoods = eb(z, training=False)
    scales, means = _parameters(model, z_hat)
    y_hat = _latents(_symbols(y, means), means, y.device)
    y_likelihoods = gc._likelihood(y_hat, scales.to(y.device, torch.float32),
                                   None if means is None else means.to(y.device, torch.float32))  # fmt: skip
    if gc.use_likelihood_bound:
        y_likelihoods = gc.likelihood_lower_bound(y_likelihoods)
    return {"x_hat": model.g_s(y_hat), "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}


# ---- one arithmetic for the float parts --------------------------------------------------------------
@contextlib.contextmanager
def fixed_arithmetic(device: torch.device | str | None = None) -> Iterator[None]:
    """Run the enclosed float computations the same way in every process: one intra-op CPU thread in the
    calling thread (restored afterwards), and on CUDA cuDNN's deterministic algorithms without autotuning.

    The number of threads decides how the sums inside a convolution are split (and, in PyTorch, even
    which convolution backend runs), so float32 results differ in their last bits between thread
    counts. With one thread they depend only on the PyTorch build, the CPU instruction set it dispatches
    to (e.g. AVX-512 vs AVX2) and the device. PyTorch's OpenMP thread count is per calling thread, so
    concurrent users in other threads keep theirs (checked: four pool threads coding at once give the
    bitstreams and pixels of one thread alone); a thread that makes its first PyTorch call while this is
    active starts with one thread too (PyTorch copies the last value set).
    """
    saved = torch.get_num_threads()
    if saved != 1:
        torch.set_num_threads(1)
    cuda = torch.device(device).type == "cuda" if device is not None else False
    flags = torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                       deterministic=True) if cuda else contextlib.nullcontext()  # fmt: skip
    try:
        with flags:
            yield
    finally:
        if saved != 1:
            torch.set_num_threads(saved)
