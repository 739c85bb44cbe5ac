"""The one reading of a ``device`` setting (cards, codecs, training commands)."""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_device"]


def resolve_device(device: Any, who: str = "vcmbench", error: type[Exception] = ValueError) -> Any:
    """The ``torch.device`` a setting names: ``auto`` (or empty, None) is cuda when available, else cpu.

    A named device is checked: one torch cannot parse, or a cuda device without CUDA, raises ``error``
    (the caller's exception class) with a message that starts with ``who`` (what asked for it).
    """
    import torch

    if device in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise error(f"{who}: invalid device {device!r} ({exc}); use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{who}: device {device!r} requested but CUDA is not available; use device auto or cpu")
    return dev
