"""Multiply-accumulate counts of learned-codec networks, with PyTorch's own operator-level counter.

:func:`count_macs` runs a function under :class:`torch.utils.flop_counter.FlopCounterMode`, which sees every
ATen operator the call executes (modules and functional calls alike) and counts 2 FLOPs per
multiply-accumulate for convolutions (transposed ones included), ``mm``/``bmm``/``addmm``/``baddbmm`` and
attention; a MAC is half of that. Operators without a rule (element-wise arithmetic, non-linearities,
rounding) count zero. Why this counter and not thop, ptflops or fvcore: ``docs/codec-cost.md``.

:func:`codec_macs` splits a CompressAI-style model into the encoder's analysis transforms (``g_a`` then
``h_a``) and the decoder's synthesis transforms (the hyper-synthesis ``h_s``, or TCM's ``h_mean_s`` and
``h_scale_s``, then ``g_s``), and names the sub-networks it leaves out (context models, entropy-parameter
networks, the entropy models): those, and the entropy coder itself, are not in either count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: the analysis transforms, run by the encoder only
ENCODER_PARTS = ("g_a", "h_a")
#: the synthesis transforms, run by the decoder (hyper-synthesis first, then the image synthesis)
DECODER_PARTS = ("h_s", "h_mean_s", "h_scale_s", "g_s")
#: what the MAC counter is, for reports
COUNTER = "torch.utils.flop_counter.FlopCounterMode"


def count_macs(fn: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """(multiply-accumulates, result) of ``fn(*args)`` run once without gradients."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return counter.get_total_flops() // 2, out


@dataclass(frozen=True)
class NetworkMacs:
    """MACs of a codec network on one (padded) input: encoder, decoder, and what each count holds."""

    encoder: int
    decoder: int
    encoder_parts: tuple[str, ...]
    decoder_parts: tuple[str, ...]
    #: sub-networks of the model in neither count (context model, entropy parameters, entropy models)
    not_counted: tuple[str, ...]


def codec_macs(model: nn.Module, x: torch.Tensor) -> NetworkMacs:
    """MACs of ``model``'s analysis (encoder) and synthesis (decoder) transforms on the padded input ``x``.

    The latents come from running the transforms themselves (unquantized: the counts do not depend on the
    values); a model without ``g_a`` and ``g_s`` is a :class:`ValueError`."""
    children = dict(model.named_children())
    if "g_a" not in children or "g_s" not in children:
        raise ValueError(f"{type(model).__name__} has no g_a / g_s transforms: cannot count its encoder and decoder")
    enc_parts = tuple(p for p in ENCODER_PARTS if p in children)
    dec_parts = tuple(p for p in DECODER_PARTS if p in children)
    enc, y = count_macs(children["g_a"], x)
    z = None
    if "h_a" in children:
        macs, z = count_macs(children["h_a"], y)
        enc += macs
    dec = 0
    for part in dec_parts[:-1]:  # the hyper-synthesis, on the hyper-latent
        dec += count_macs(children[part], z)[0]
    dec += count_macs(children["g_s"], y)[0]
    others = tuple(n for n, m in children.items() if n not in enc_parts + dec_parts and any(True for _ in m.parameters()))
    return NetworkMacs(enc, dec, enc_parts, dec_parts, others)

