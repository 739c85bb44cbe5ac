"""What a learned-codec checkpoint records of its training, read without building its model.

``vcmbench train`` writes into a checkpoint's ``meta`` the objective (``loss``), λ, the steps, the
training folder and ``train_images_sha256``: the sorted sha256 of every training image file, those a
fine-tune inherited from its ``--init`` checkpoint included (:mod:`vcmbench.models.lic` describes the
file). Foreign checkpoints (the public TCM and SA-ICM releases, CompressAI's zoo) record none of it: their
training set is unknown.

The record is what ``vcmbench inspect`` prints and what a run compares with the images it scores a learned
codec on (:mod:`vcmbench.run.training_overlap`). Images are matched by the sha256 of their files: the same
picture re-encoded (another JPEG quality, PNG) is not recognised.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CodecError

__all__ = ["CheckpointRecord", "read_record"]


@dataclass(frozen=True)
class CheckpointRecord:
    """The header of a checkpoint file: ``format`` is ``vcmbench-lic`` for ours, ``foreign`` otherwise."""

    format: str
    arch: str | None = None
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    param_dtype: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def training_images(self) -> frozenset[str] | None:
        """sha256 of every training image file; None when the checkpoint does not record them."""
        hashes = self.meta.get("train_images_sha256")
        return None if hashes is None else frozenset(str(h) for h in hashes)


_RECORDS: dict[tuple[str, int, int], CheckpointRecord] = {}
_LOCK = threading.Lock()


def read_record(path: str | os.PathLike[str]) -> CheckpointRecord:
    """The record of a checkpoint file (plain or xz), remembered in-process by (path, size, mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _LOCK:
        record = _RECORDS.get(key)
    if record is None:
        record = _read(p)
        with _LOCK:
            _RECORDS[key] = record
    return record


def _read(path: Path) -> CheckpointRecord:
    from ..models.lic import CHECKPOINT_FORMAT, read_checkpoint_file

    try:
        blob = read_checkpoint_file(path)
    except Exception as exc:
        raise CodecError(f"cannot read learned-codec checkpoint {path} ({type(exc).__name__}: {exc}); it is not a "
                         "PyTorch checkpoint of tensors, or it is corrupt") from None  # fmt: skip
    if not isinstance(blob, dict):
        raise CodecError(f"{path}: expected a dictionary checkpoint, got {type(blob).__name__}")
    if blob.get("format") != CHECKPOINT_FORMAT:
        return CheckpointRecord("foreign")
    return CheckpointRecord(CHECKPOINT_FORMAT, str(blob.get("arch")), dict(blob.get("arch_kwargs") or {}),
                            blob.get("param_dtype"), dict(blob.get("meta") or {}))  # fmt: skip
