"""Named fake for the common-items tests: an encoder that fails on one particular picture (a crash that only
some content triggers). It is the real JPEG encoder for every other picture."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.errors import CodecError


class FailsOnOnePicture(JpegCodec):
    def __init__(self, fail_pixels_sha256: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.fail_pixels_sha256 = fail_pixels_sha256

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        if hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() == self.fail_pixels_sha256:
            raise CodecError("fake encoder crash on this picture")
        return super().encode(image, quality)
