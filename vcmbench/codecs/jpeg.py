"""JPEG (ITU-T T.81 | ISO/IEC 10918-1) through Pillow's libjpeg, in process."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, features

from ..media.image import save_to_bytes
from ..registry import register
from .base import Bitstream, Codec

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


@register("codec", "jpeg")
class JpegCodec(Codec):
    quality_range = (1, 100)
    quality_name = "quality"

    def __init__(self, subsampling: str = "4:2:0", optimize: bool = False, progressive: bool = False) -> None:
        if subsampling not in SUBSAMPLING:
            raise ValueError(f"jpeg: subsampling must be one of {sorted(SUBSAMPLING)}, got {subsampling!r}")
        self.subsampling = subsampling
        self.optimize = optimize
        self.progressive = progressive

    def version(self) -> str:
        import PIL

        return f"pillow-{PIL.__version__}/libjpeg-{features.version('jpg')}"

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        q = self.validate_quality(quality)
        data = save_to_bytes(  # through a file descriptor: encode threads run in parallel
            Image.fromarray(image, "RGB"),
            format="JPEG",
            quality=q,
            subsampling=SUBSAMPLING[self.subsampling],
            optimize=self.optimize,
            progressive=self.progressive,
        )
        h, w = image.shape[:2]
        return Bitstream(data, width=w, height=h)

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        with Image.open(io.BytesIO(bitstream.data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
