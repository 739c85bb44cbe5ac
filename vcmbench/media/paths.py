"""Where vcmbench keeps what it generates or downloads."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """``$VCMBENCH_CACHE``, by default ``~/.cache/vcmbench`` (``~`` expanded); read on every call."""
    root = os.environ.get("VCMBENCH_CACHE") or os.path.join("~", ".cache", "vcmbench")
    return Path(os.path.expanduser(root))
