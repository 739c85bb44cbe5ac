"""Codec contract: ``encode(image, quality) -> Bitstream`` and ``decode(Bitstream) -> image``.

The layering follows CompressAI's ``utils/bench/codecs.py``: a tiny abstract
:class:`Codec`, one middle layer for in-process codecs and one for external
binaries (:class:`ExternalCodec`), whose subclasses only build command lines.

Rate is always ``8 * len(bitstream.data) / pixels`` of the bytes the encoder
actually wrote. The only side information kept outside ``data`` is the original
image size (needed to crop padding, exactly as the MPEG VCM anchor scripts do);
it is a few bytes and is not counted, which is the convention of those anchors.
"""

from __future__ import annotations

import os
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..cards import Card
from ..errors import CodecError, QualityError
from ..media.hashing import stable_hash
from ..registry import register


@dataclass(frozen=True)
class Bitstream:
    """Bytes written by an encoder plus the picture size needed to crop them back."""

    data: bytes
    width: int
    height: int
    frames: int = 1
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames

    @property
    def bpp(self) -> float:
        return 8.0 * len(self.data) / self.pixels


@dataclass(frozen=True)
class TrainingSet:
    """What the trained model a codec uses at one quality learned from, so that it is never scored on it."""

    #: where the record comes from, named in warnings (e.g. a checkpoint file)
    source: str
    #: sha256 of every training image file; None when the weights do not record them (foreign weights)
    images_sha256: frozenset[str] | None


@dataclass(frozen=True)
class Complexity:
    """What a codec's networks cost, counted (not timed): parameters and multiply-accumulates per pixel.

    ``encoder_macs`` / ``decoder_macs`` are the MACs of coding one ``width`` x ``height`` image (padding the
    codec adds included); per pixel they are divided by the unpadded ``width * height``. ``counted`` says
    which sub-networks each count holds, ``not_counted`` which of the model's are in neither (and the entropy
    coder never is); ``counter`` names the tool that counted."""

    params: int
    encoder_macs: int
    decoder_macs: int
    width: int
    height: int
    counted: str
    not_counted: tuple[str, ...] = ()
    counter: str = ""

    def kmac_per_pixel(self, macs: int) -> float:
        return macs / (self.width * self.height) / 1000.0

    def columns(self) -> dict[str, Any]:
        """The results-table columns: ``params``, ``enc_kMAC_px``, ``dec_kMAC_px`` and ``kMAC_at`` (the size)."""
        return {"params": self.params, "enc_kMAC_px": self.kmac_per_pixel(self.encoder_macs),
                "dec_kMAC_px": self.kmac_per_pixel(self.decoder_macs), "kMAC_at": f"{self.width}x{self.height}"}  # fmt: skip


class Codec(ABC):
    """Base of every codec adapter.

    Subclasses set ``quality_range`` (inclusive) and ``quality_name`` and keep a
    plain typed ``__init__``; :meth:`from_card` maps a card to those arguments.
    """

    #: inclusive range of valid quality values
    quality_range: ClassVar[tuple[float, float]] = (0, 100)
    #: what "quality" means for this codec, used in messages and plots
    quality_name: ClassVar[str] = "quality"
    #: quality values must be integers
    integer_quality: ClassVar[bool] = True
    #: settings that say *where* something is (binaries, folders), not *what* is computed;
    #: they stay out of the cache key
    location_settings: ClassVar[tuple[str, ...]] = ()
    #: what the codec codes: "image" (H x W x 3 arrays) and/or "video" (:class:`~vcmbench.media.clip.Clip`)
    media: ClassVar[tuple[str, ...]] = ("image",)

    name: str = "codec"
    card_settings: Mapping[str, Any] = {}

    @classmethod
    def card_kwargs(cls, card: Card) -> dict[str, Any]:
        """The ``__init__`` arguments a card gives (its settings; subclasses may add derived ones)."""
        return dict(card.settings)

    @classmethod
    def from_card(cls, card: Card) -> Codec:
        """The codec of a card. Its default ladder is checked by ``vcmbench validate`` and, as a run uses
        it (perhaps overridden with ``--quality``), by the runner. Build codecs through
        :func:`vcmbench.adapters.build`, which reports settings that do not fit ``__init__``."""
        try:
            codec = cls(**cls.card_kwargs(card))
        except CodecError as exc:
            raise CodecError(f"{card.path}: {str(exc).replace('codec codec', f'codec {card.name}')}") from None
        codec.name = card.name
        codec.card_settings = dict(card.settings)
        return codec

    def version(self) -> str:
        """Version of the implementation (library or binary); enters the cache key."""
        return "1"

    def identity(self) -> str:
        """Hash of everything that determines the bitstream except quality and input."""
        settings = {k: v for k, v in self.card_settings.items() if k not in self.location_settings}
        return stable_hash({"class": type(self).__qualname__, "settings": settings, "version": self.version()})

    def validate_quality(self, quality: Any) -> float | int:
        lo, hi = self.quality_range
        try:
            q = float(quality)
        except (TypeError, ValueError):
            raise QualityError(f"{self.name}: {self.quality_name} {quality!r} is not a number") from None
        if self.integer_quality:
            if q != int(q):
                raise QualityError(f"{self.name}: {self.quality_name} must be an integer, got {quality!r}")
            q = int(q)
        if not lo <= q <= hi:
            raise QualityError(
                f"{self.name}: {self.quality_name} {quality!r} is outside the allowed range "
                f"{lo:g}..{hi:g}; pick values in that range (card ladder: --quality or qualities:)"
            )
        return q

    def training_set(self, quality: Any) -> TrainingSet | None:
        """The training set of the model this codec codes ``quality`` with; None for a codec with no trained
        weights (hand-designed codecs; NeRV's fitting of each clip is its encoder, not training). A codec
        with trained weights overrides this, so that a run warns when it is scored on its training images."""
        return None

    def complexity(self, quality: Any, width: int, height: int) -> Complexity | None:
        """Parameter count and MACs of the networks that code a ``width`` x ``height`` image at ``quality``;
        None for a codec without networks to count (hand-designed codecs: their cost is their measured time).
        A learned codec overrides this; the run records it beside each rate point (``docs/codec-cost.md``)."""
        return None

    def prepare(self, quality: Any) -> None:  # noqa: B027 - optional hook: most codecs have nothing to load
        """Load what coding at ``quality`` needs, before a worker times an encode or a decode at it, so that
        ``encode_s`` and ``decode_s`` measure the coding alone, not a load that happens once per process (a
        learned codec's model of that rate point). An error here fails the job as the coding itself would.
        Hand-designed codecs have nothing to load."""

    @abstractmethod
    def encode(self, image: Any, quality: Any) -> Bitstream:
        """Encode an HxWx3 uint8 RGB image (or, for a codec whose ``media`` has "video", a Clip)."""

    @abstractmethod
    def decode(self, bitstream: Bitstream) -> Any:
        """Return the HxWx3 uint8 RGB reconstruction (or the Clip), cropped to the original size."""


@register("codec", "none")
class Uncompressed(Codec):
    """The reference point: the original pixels, no coding. Its rate is undefined (NaN)."""

    quality_range = (0, 0)

    def encode(self, image: np.ndarray, quality: Any = 0) -> Bitstream:
        raise CodecError("the uncompressed reference point is never encoded")

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        raise CodecError("the uncompressed reference point is never decoded")


@dataclass
class ProcessResult:
    returncode: int
    seconds: float
    stderr: str


def stderr_tail(text: str, lines: int = 15) -> str:
    tail = [ln for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return "\n    ".join(tail) if tail else "(no output on stderr)"


def run_process(cmd: Sequence[str], what: str, cwd: Path | None = None, timeout: float | None = None) -> ProcessResult:
    """Run a child process; a non-zero exit (or a signal) is a :class:`CodecError` with its stderr tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=cwd, capture_output=True, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise CodecError(f"{what}: cannot start {cmd[0]!r}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise CodecError(f"{what}: {Path(str(cmd[0])).name} timed out after {timeout} s") from exc
    seconds = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace") + "\n" + proc.stdout.decode(errors="replace")[-2000:]
    if proc.returncode != 0:
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with code {proc.returncode}"
        raise CodecError(f"{what}: {Path(str(cmd[0])).name} {how}. stderr tail:\n    {stderr_tail(err)}")
    return ProcessResult(proc.returncode, seconds, err)


def read_output(path: Path, what: str, stderr: str = "") -> bytes:
    """Read a file a child process should have written; missing or empty is an error, never a zero rate."""
    if not path.exists():
        raise CodecError(f"{what}: the child process exited 0 but wrote no file {path}. stderr tail:\n    {stderr_tail(stderr)}")
    data = path.read_bytes()
    if not data:
        raise CodecError(f"{what}: the child process wrote an empty file {path}. stderr tail:\n    {stderr_tail(stderr)}")
    return data


def find_executable(candidates: Sequence[str | os.PathLike[str]]) -> Path | None:
    for cand in candidates:
        p = Path(cand)
        if p.is_file() and os.access(p, os.X_OK):
            return p
    return None
