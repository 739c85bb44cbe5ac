"""Named fakes of encoders that fail: on one particular picture (a crash that only some content triggers; the
common-items tests), or while a marker file exists (the rerun tests). They are the real JPEG encoder otherwise."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
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


class FailsWhileFileExists(JpegCodec):
    """Named fake: the real JPEG encoder, except that every encode fails while the file ``marker`` exists (a
    broken encoder build, fixed between two runs without changing the card)."""

    def __init__(self, marker: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.marker = marker

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        if os.path.exists(self.marker):
            raise CodecError(f"fake encoder failure while {self.marker} exists")
        return super().encode(image, quality)


class WarnsAndFailsOnOnePicture(FailsOnOnePicture):
    """Named fake: :class:`FailsOnOnePicture` that also raises a Python warning and logs a logging warning on
    every encode (what a library does when it warns during a run; the run-log tests)."""

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        warnings.warn(f"fake encoder: quality {quality} is clipped", UserWarning, stacklevel=2)
        logging.getLogger("tests.codec_fakes").warning("fake encoder: slow path taken")
        return super().encode(image, quality)
