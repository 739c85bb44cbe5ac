"""Named fakes for the Ray tests: a worker process dying in the middle of a job (OOM killer, lost node),
an encoder as slow as the real ones a cluster is for (VTM: tens of seconds per image), and a decoder
failing on some pictures.

None can be produced on demand here, so these are the real adapters, except that they SIGKILL
their own process at a chosen moment, take at least a set time per encode, or raise in ``decode``. Ray workers import them by card (``adapter:
tests.ray_fakes:SelfKillingJpeg``): Ray puts the driver's working directory on the workers'
``sys.path``, and the tests run from the repository root. This module stays light (no PyTorch):
every encode worker imports it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.errors import CodecError


def kill_self(marker: Path, once: bool) -> None:
    """SIGKILL this process, recording its pid in ``marker``; with ``once``, only if no pid is recorded yet."""
    if once:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
    else:
        with open(marker, "a") as f:
            f.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


class SelfKillingJpeg(JpegCodec):
    """Named fake: the real JPEG codec whose worker process dies (SIGKILL) in ``encode``.

    Every encode at ``kill_quality`` of an image ``kill_height`` pixels high (if set) dies, each
    time it is tried (``kill_always`` records the pids); of the other encodes, the first one of
    the run dies, once (``kill_once`` records its pid), and a retry of it succeeds.
    """

    def __init__(self, kill_once: str, kill_always: str = "", kill_quality: int | None = None,
                 kill_height: int | None = None, **kw: Any) -> None:  # fmt: skip
        super().__init__(**kw)
        self.kill_once = Path(kill_once)
        self.kill_always = Path(kill_always)
        self.kill_quality = kill_quality
        self.kill_height = kill_height

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        if int(quality) == self.kill_quality and image.shape[0] == self.kill_height:
            kill_self(self.kill_always, once=False)
        kill_self(self.kill_once, once=True)
        return super().encode(image, quality)


class SlowJpeg(JpegCodec):
    """Named fake: the real JPEG codec, taking at least ``min_seconds`` per encode (same bytes).

    JPEG encodes take milliseconds, so Ray rightly runs them all on one node, reusing its warm
    worker; an encoder taking real time (VTM, VVenC ``slow``) is what spreads over the nodes.
    """

    def __init__(self, min_seconds: float, **kw: Any) -> None:
        super().__init__(**kw)
        self.min_seconds = float(min_seconds)

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        t0 = time.perf_counter()
        bs = super().encode(image, quality)
        time.sleep(max(0.0, self.min_seconds - (time.perf_counter() - t0)))
        return bs


class FailsToDecodeOne(JpegCodec):
    """Named fake: the real JPEG codec whose decoder fails on pictures ``fail_height`` pixels high (a decoder
    that crashes on some content), with an error of its own, in whichever process decodes."""

    def __init__(self, fail_height: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.fail_height = int(fail_height)

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        if bitstream.height == self.fail_height:
            raise CodecError(f"fake decoder failure on a picture {self.fail_height} pixels high")
        return super().decode(bitstream)
