"""Image files to pixels, and images to encoded bytes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ItemError

__all__ = ["read_rgb", "save_to_bytes"]


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


#: images of at least this many pixels are encoded through a file descriptor (:func:`save_to_bytes`)
FD_MIN_PIXELS = 1 << 16


def save_to_bytes(image: Image.Image, **params: Any) -> bytes:
    """The bytes ``image.save(file, **params)`` writes: for an image of :data:`FD_MIN_PIXELS` or more, into an
    anonymous in-memory file (Linux's ``memfd_create``), else into a ``BytesIO``; the bytes are the same.

    Given a file descriptor, Pillow encodes without holding the interpreter's lock; given a ``BytesIO`` it
    holds it for the whole encode, so two encode threads ran no faster than one (640x480 JPEG: 1.72 ms per
    image on 1 thread and on 2; 0.81 ms on 2 through a descriptor). A thread that lets the lock go must then
    wait to take it back, behind the other threads' Python, and for a small image that wait is counted as
    codec time: the encode stage of 5,000 160x120 images gained 1-16 % through a descriptor while each timed
    encode grew by 40 % (0.36 -> 0.51 ms); with 320x240 images (76,800 pixels) the stage gained 11-19 % and
    the timed encodes stayed the same, with 640x480 images 4-13 % and they shrank (``benchmarks/encode_stage.py``,
    ``benchmarks/README.md`` fifth round). The threshold lies between 160x120 and 320x240."""
    if not hasattr(os, "memfd_create") or image.width * image.height < FD_MIN_PIXELS:
        buf = io.BytesIO()
        image.save(buf, **params)
        return buf.getvalue()
    with os.fdopen(os.memfd_create("vcmbench-encode", os.MFD_CLOEXEC), "w+b") as f:
        image.save(f, **params)
        f.seek(0)
        return f.read()
