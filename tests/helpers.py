"""Helpers shared by the end-to-end tests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vcmbench.run import RunConfig


def small_coco(src: Path, dst: Path, n: int, corrupt: str | None = None) -> list[str]:
    """A COCO-layout folder with the first ``n`` images of ``src`` (symlinked) and their annotations.

    If ``corrupt`` names one of the image ids, that file is written truncated instead.
    Returns the image ids (as strings).
    """
    data = json.loads((src / "annotations" / "instances_val2017.json").read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:n]
    keep = {im["id"] for im in images}
    (dst / "val2017").mkdir(parents=True, exist_ok=True)
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    for im in images:
        target = dst / "val2017" / im["file_name"]
        if corrupt is not None and str(im["id"]) == corrupt:
            target.write_bytes((src / "val2017" / im["file_name"]).read_bytes()[:3000])
        else:
            os.symlink(src / "val2017" / im["file_name"], target)
    subset = dict(data, images=images, annotations=[a for a in data["annotations"] if a["image_id"] in keep])
    (dst / "annotations" / "instances_val2017.json").write_text(json.dumps(subset))
    return [str(im["id"]) for im in images]


def config(out: Path, coco: Path, weights: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        codecs=["jpeg"], tasks=["yolov5"], datasets=["coco"], data_roots={"*": str(coco)},
        overrides={"yolov5": {"weights": str(weights)}}, out=str(out), progress=False,
        qualities={"jpeg": [10, 40]},
    )  # fmt: skip
    base.update(kw)
    return RunConfig(**base)


def cli_args(out: Path, coco: Path, weights: Path, *extra: str) -> list[str]:
    return [
        "run", "--dataset", "coco", "--task", "yolov5", "--data-root", str(coco), "--set",
        f"yolov5.weights={weights}", "--out", str(out), "--no-progress", *extra,
    ]  # fmt: skip
