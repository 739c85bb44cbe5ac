"""What a results file needs to be reproducible: code version, packages, machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "vcmbench", "torch", "torchvision", "numpy", "pillow", "opencv-python-headless", "opencv-python",
    "pycocotools", "faster-coco-eval", "yolov5", "imageio-ffmpeg", "compressai", "ultralytics", "ray", "pandas", "scipy",
)  # fmt: skip


def git_commit(path: Path | None = None) -> dict[str, Any]:
    """Commit hash of the vcmbench checkout and whether it has uncommitted changes."""
    where = path or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def machine() -> dict[str, Any]:
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def provenance() -> dict[str, Any]:
    from .metrics.coco_map import resolve_backend

    return {
        "git": git_commit(), "packages": package_versions(), "machine": machine(), "argv": sys.argv,
        "coco_eval": resolve_backend(),
    }  # fmt: skip
