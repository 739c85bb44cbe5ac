"""Image files to pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ItemError

__all__ = ["read_rgb"]


def read_rgb(path: Path, item_id: str) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB; a corrupt file is an :class:`ItemError` naming it."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise ItemError(f"item {item_id}: image file {path} is missing; restore it or leave it out with --exclude {item_id}") from None
    except Exception as exc:  # PIL raises several types for corrupt data
        raise ItemError(
            f"item {item_id}: cannot decode image {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
            f"truncated: replace it from the official archive or leave it out with --exclude {item_id}"
        ) from None
    return np.asarray(rgb, dtype=np.uint8)
