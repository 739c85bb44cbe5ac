"""Shared fixtures. Real data comes from ``$VCMBENCH_SHARED`` (CI sets it); tests needing it skip visibly when unset."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keep YOLO code offline: a private YOLO_CONFIG_DIR holding matplotlib's DejaVu font as Arial.ttf,
    so a plotting call never tries to download Arial.ttf."""
    os.environ["YOLO_OFFLINE"] = "1"
    if "YOLO_CONFIG_DIR" not in os.environ:
        cfg = Path(tempfile.mkdtemp(prefix="vcmbench-yolo-"))
        import matplotlib

        font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        shutil.copy(font, cfg / "Arial.ttf")
        os.environ["YOLO_CONFIG_DIR"] = str(cfg)


def shared_root() -> Path | None:
    env = os.environ.get("VCMBENCH_SHARED")
    if not env:
        return None
    return Path(env).resolve()


SHARED_REASON = "VCMBENCH_SHARED is not set: point it at the shared data folder (e.g. VCMBENCH_SHARED=../shared)"


@pytest.fixture(scope="session")
def shared() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip(SHARED_REASON)
    if not root.exists():
        pytest.fail(f"VCMBENCH_SHARED={root} does not exist")
    return root


@pytest.fixture(scope="session")
def coco_mini(shared: Path) -> Path:
    return shared / "data" / "coco-mini"


@pytest.fixture(scope="session")
def yolov5n_weights(shared: Path) -> Path:
    return shared / "weights" / "yolov5n.pt"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's caches out of the user's home, and YOLO code offline."""
    cache = tmp_path_factory.getbasetemp() / "vcmbench-cache"
    monkeypatch.setenv("VCMBENCH_CACHE", str(cache))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
