"""A unit's rate and distortion from its encodes: bits per pixel, PSNR, kbps, coding times.

Rate is always bits actually written: ``8 * bytes / pixels`` over the items that were scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..datasets.base import Item
from ..store import EncodeRecord

#: the rate columns of an evaluation row, all None for the uncompressed reference
RATE_FIELDS = ("nbytes", "pixels", "bpp", "bpp_mean", "psnr", "encode_s", "decode_s", "kbps")


def no_rate() -> dict[str, Any]:
    return dict.fromkeys(RATE_FIELDS)


def unit_rate(coded: Sequence[tuple[Item, EncodeRecord]]) -> dict[str, Any]:
    """Rate columns of the coded items of a unit (item, its encode record): ``bpp`` over all pixels,
    ``bpp_mean`` the mean of per-item bpp, ``psnr`` the mean of finite per-item PSNRs."""
    if not coded:
        return no_rate()
    recs = [r for _, r in coded]
    pix = [r.width * r.height * (r.frames or 1) for r in recs]  # type: ignore[operator]
    nbytes = sum(r.nbytes or 0 for r in recs)
    psnrs = [r.psnr for r in recs if r.psnr is not None and math.isfinite(r.psnr)]
    return {
        "nbytes": nbytes, "pixels": sum(pix), "bpp": 8.0 * nbytes / sum(pix),
        "bpp_mean": float(np.mean([8.0 * (r.nbytes or 0) / p for r, p in zip(recs, pix, strict=True)])),
        "psnr": float(np.mean(psnrs)) if psnrs else None,
        "encode_s": sum(r.encode_s or 0.0 for r in recs), "decode_s": sum(r.decode_s or 0.0 for r in recs),
        "kbps": kbps(coded),
    }  # fmt: skip


def group_rates(groups: Mapping[str, Sequence[str]], coded: Sequence[tuple[Item, EncodeRecord]]) -> dict[str, Any]:
    """Each group's own rate columns (and its ``n_items``): the rate of the coded items whose ids it lists.

    A per-sequence or per-class figure is only meaningful against its own bits: the bits of that group's
    bitstreams over that group's pixels (bpp) and duration (kbps)."""
    out = {}
    for group, ids in groups.items():
        members = set(ids)
        mine = [(it, r) for it, r in coded if it.id in members]
        if mine:
            out[group] = {**unit_rate(mine), "n_items": len(mine)}
    return out


def kbps(coded: Sequence[tuple[Item, Any]]) -> float | None:
    """Bit rate of coded clips at their frame rates (the dataset's, else the bitstream's): all bits over the
    clips' total duration. None for images."""
    fps = [it.meta.get("fps") or r.meta.get("fps") for it, r in coded]
    if not coded or any(not f for f in fps):
        return None
    seconds = sum((r.frames or 1) / float(f) for (_, r), f in zip(coded, fps, strict=True))
    return 8.0 * sum(r.nbytes or 0 for _, r in coded) / seconds / 1000.0
