"""Support for the Ray tests: the network-namespace guard, the shared grid and its local reference run.

Ray listens on every network interface, so the Ray tests only run inside a private
network namespace holding nothing but loopback (``unshare -n``); see
``tests/test_ray.py::test_ray_suite_in_private_network_namespace``.

The named fakes that kill their own worker process live in ``tests/ray_fakes.py``
(the codec; light, since every encode worker imports it) and ``tests/ray_fakes_model.py``
(the task).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from vcmbench.cards import CardSet
from vcmbench.run import RunReport, run

from .helpers import config, small_coco

#: the grid every executor must agree on: JPEG at two qualities (+ uncompressed) x YOLOv5n x 4 images
N_IMAGES = 4
QUALITIES = [10, 40]


def in_private_netns() -> bool:
    """True when this process's network namespace has no interface but loopback.

    Asks the kernel (``if_nameindex``, per network namespace); ``/sys/class/net`` is not
    enough, as it shows the namespace of whoever mounted ``/sys`` (``unshare -n`` alone
    does not remount it).
    """
    return [name for _, name in socket.if_nameindex()] == ["lo"]


NETNS_REASON = (
    "Ray listens on every interface: this test runs only inside a private network namespace with only "
    "loopback; the default suite runs it there (test_ray_suite_in_private_network_namespace), or run "
    "`unshare -n sh -c 'ip link set lo up; exec python -m pytest -m ray'` as root"
)
isolated = pytest.mark.skipif(not in_private_netns(), reason=NETNS_REASON)


def in_ci() -> bool:
    """``$CI`` set to anything but empty, "0" or "false" (GitHub Actions, GitLab CI and others set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def cannot_isolate(reason: str) -> None:
    """No private network namespace can be made here, so the Ray tests cannot run: in CI a failure (a skip
    would leave the lane green with Ray untested), elsewhere a skip that says why."""
    if in_ci():
        pytest.fail(f"{reason} (in CI, where the Ray tests must run)")
    pytest.skip(reason)


def tidy(report: RunReport, renamed: dict[str, str] | None = None) -> pd.DataFrame:
    """The run's tidy table without run id and wall-clock timings (which differ between any two runs).

    ``renamed`` maps card names to the names to compare under (fake cards computing the same
    numbers as real ones); their content ids then differ by construction and are left out.
    """
    df = pd.DataFrame(report.rows).drop(columns=["run_id", "encode_s", "decode_s", "infer_s"])
    if renamed:
        df = df.drop(columns=["codec_id", "task_id"]).replace({"codec": renamed, "task": renamed})
        for card, name in renamed.items():  # "card (weights file)": the scoring card under its compared name
            df["scored_by"] = df.scored_by.str.replace(f"{card} (", f"{name} (", regex=False).replace({card: name})
    return df.sort_values(["codec", "quality", "metric"]).reset_index(drop=True)


@pytest.fixture(scope="session", name="ray_grid")
def ray_grid_fixture(tmp_path_factory: pytest.TempPathFactory, coco_mini: Path, yolov5n_weights: Path) -> tuple[Path, Path]:
    """(coco folder, weights) of the shared test grid."""
    coco = tmp_path_factory.mktemp("ray-coco")
    small_coco(coco_mini, coco, N_IMAGES)
    return coco, yolov5n_weights


@pytest.fixture(scope="session", name="local_reference")
def local_reference_fixture(tmp_path_factory: pytest.TempPathFactory, ray_grid: tuple[Path, Path]) -> RunReport:
    """The grid run by the local executor: what every Ray run must reproduce."""
    coco, weights = ray_grid
    report = run(config(tmp_path_factory.mktemp("ray-local-ref"), coco, weights, qualities={"jpeg": QUALITIES}))
    assert report.ok and report.work["inferences"] == (len(QUALITIES) + 1) * N_IMAGES
    return report


def write_fake_cards(root: Path, codec_settings: dict[str, Any], task_settings: dict[str, Any] | None = None,
                     codec: tuple[str, str] = ("jpeg-killer", "SelfKillingJpeg")) -> Path:  # fmt: skip
    """A card folder with ``codec`` (name, fake in ``tests.ray_fakes``; by default ``jpeg-killer``) and,
    with ``task_settings``, ``yolov5-killer``: the real cards, fake adapters below."""
    cards = CardSet()
    jpeg = cards.get("codec", "jpeg")
    name, fake = codec
    (root / "codecs").mkdir(parents=True, exist_ok=True)
    (root / "codecs" / f"{name}.yaml").write_text(yaml.safe_dump({
        "name": name, "adapter": f"tests.ray_fakes:{fake}", "version": 1,
        "qualities": list(jpeg.qualities), "settings": {**dict(jpeg.settings), **codec_settings},
    }))  # fmt: skip
    if task_settings is not None:
        yolo = cards.get("task", "yolov5")
        (root / "tasks").mkdir(parents=True, exist_ok=True)
        (root / "tasks" / "yolov5-killer.yaml").write_text(yaml.safe_dump({
            "name": "yolov5-killer", "adapter": "tests.ray_fakes_model:SelfKillingYOLOv5", "version": 1,
            "settings": {**dict(yolo.settings), **task_settings},
        }))  # fmt: skip
    return root


def pids(marker: Path) -> list[int]:
    return [int(line) for line in marker.read_text().split()] if marker.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
