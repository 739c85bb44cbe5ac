"""Shared fixtures. Real data comes from ``$VCMBENCH_SHARED`` (CI sets it); tests needing it skip visibly when unset."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
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


def project_settings() -> dict[str, str]:
    """The environment variables of this project ($VCMBENCH_*): what its code reads as settings."""
    return {k: v for k, v in os.environ.items() if k.startswith("VCMBENCH_")}


@pytest.fixture(autouse=True)
def _settings_restored() -> Iterator[None]:
    """Every test leaves $VCMBENCH_* as it found it: tests change them through ``monkeypatch`` (undone after
    each test), and code that sets one must restore it, or every later test would run with it (a run that
    left $VCMBENCH_COCO_EVAL set once kept the rest of the suite off the default COCO backend). A leak is
    undone and fails the test that left it."""
    before = project_settings()
    yield
    after = project_settings()
    if after != before:
        for name in after.keys() - before.keys():
            del os.environ[name]
        os.environ.update(before)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        pytest.fail(f"the test left {', '.join(changed)} changed: set them with monkeypatch.setenv/delenv, "
                    "and have the code under test restore what it sets")  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_env(
    _settings_restored: None, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep every test's caches out of the user's home, and YOLO code offline (after ``_settings_restored``,
    so that it checks the environment once monkeypatch has undone its changes)."""
    cache = tmp_path_factory.getbasetemp() / "vcmbench-cache"
    monkeypatch.setenv("VCMBENCH_CACHE", str(cache))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
