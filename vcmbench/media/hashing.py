"""The two hashes every cache key is made of: of a JSON-able object and of a file's bytes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "stable_hash"]

_FILE_SHA: dict[tuple[str, int, int], str] = {}


def stable_hash(obj: Any, n: int = 16) -> str:
    """Hex sha256 prefix of a canonical JSON encoding."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes; remembered in-process by (resolved path, size, mtime_ns)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    digest = _FILE_SHA.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
        digest = h.hexdigest()
        _FILE_SHA[key] = digest
    return digest
