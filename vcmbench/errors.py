"""Exceptions with messages that name the item, the file and the fix."""

from __future__ import annotations


class VcmbenchError(Exception):
    """Base class of every error vcmbench reports to the user without a traceback."""


class QualityError(VcmbenchError, ValueError):
    """A quality value outside the codec's range."""


class CodecError(VcmbenchError):
    """An encode or decode failed (child process exit code, empty bitstream, ...)."""


class ItemError(VcmbenchError):
    """One dataset item cannot be used (corrupt image, missing file)."""


class DatasetLayoutError(VcmbenchError):
    """A dataset root does not have the expected layout; the message lists what is missing."""


class WeightsError(VcmbenchError):
    """Model weights missing, unreadable, or failing their checksum."""


class BinaryNotFoundError(VcmbenchError):
    """An external program (VTM, ffmpeg) is not where the card or environment says."""
