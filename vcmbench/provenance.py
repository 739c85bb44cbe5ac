"""What a results file needs to be reproducible: code version, packages, machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
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
    """The machine a run works on: host, CPU model and count, the CUDA GPUs PyTorch sees (coding and inference
    times in the results are of this machine)."""
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": cuda_devices(),
        "python": sys.version.split()[0],
    }


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), None where the system does not say."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cuda_devices() -> list[str]:
    """Names of the CUDA devices PyTorch sees (empty without PyTorch or a GPU)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def machine_label(m: Mapping[str, Any]) -> str:
    """One line naming a machine from its :func:`machine` record (older records lack the CPU model and GPUs)."""
    cpu = m.get("cpu_model") or m.get("processor") or "unknown CPU"
    label = f"{m.get('hostname') or 'unnamed host'}: {cpu}, {m.get('cpu_count') or '?'} CPUs"
    gpus = m.get("gpus") or []
    return label + (f", GPU {', '.join(gpus)}" if gpus else "")


def provenance() -> dict[str, Any]:
    from .metrics.coco_map import resolve_backend

    return {
        "git": git_commit(), "packages": package_versions(), "machine": machine(), "argv": sys.argv,
        "coco_eval": resolve_backend(),
    }  # fmt: skip
