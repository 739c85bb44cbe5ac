"""Experiment files: one paper item each (its grid, anchor, metrics, plot and the paper's published numbers).

Layout: ``experiments/<suite>/<item>.yaml`` plus ``experiments/<suite>/resources.yaml`` (where each dataset,
binary or weights file comes from). The folder is the repository's ``experiments/``, or
``$VCMBENCH_EXPERIMENTS``. An item file::

    title: "Fig. 6, COCO val2017: Mask R-CNN box and mask mAP vs bpp"
    paper_item: Fig. 6
    grid:                       # the vcmbench run: card names, as for `vcmbench run`
      datasets: [coco]
      tasks: [mask_rcnn]
      codecs: [vtm, saicm_paper]
      qualities: {vtm: [22, 27, 32, 37, 42, 47]}    # optional, per codec
      overrides: {vtm: {preset: ...}}                # optional card settings
      task_weights: {saicm_official: {yolov5: {1: yolov5_saicm93}}}   # optional codec-paired scoring
      classes: [C, D]                                # optional sequence classes (video datasets)
    anchor: vtm                 # BD-rate reference
    metrics: [map, segm_map]    # metrics of the tables
    plot: segm_map              # metric of the figure
    expected_items: {coco: 5000}          # the full dataset's size, for estimates when it is absent
    stand_ins: {vtm: vvenc}               # what --stand-ins runs in place of a missing card
    published:                  # the paper's numbers, for a side-by-side column
      - {label: "...", codec: saicm_paper, bpp: 0.227, values: {map: 0.356}, source: "..."}
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import yaml12
from ..cards import builtin_cards_root, parse_task_weights
from ..errors import VcmbenchError
from ..registry import did_you_mean

TOP_KEYS = {"title", "paper_item", "grid", "anchor", "metrics", "plot", "expected_items", "stand_ins", "published"}
GRID_KEYS = {"datasets", "tasks", "codecs", "qualities", "overrides", "task_weights", "classes"}
PUBLISHED_KEYS = {"label", "codec", "bpp", "quality", "values", "source"}
RESOURCES = "resources.yaml"


class ExperimentError(VcmbenchError):
    """An experiment file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Published:
    """One published result: a codec's metric values at a rate (``bpp``), at a rate point (``quality``), or,
    when neither is given, the paper's single figure for that codec (compared with each measured point)."""

    label: str
    codec: str
    values: dict[str, float]
    bpp: float | None = None
    quality: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Experiment:
    suite: str
    name: str
    path: Path
    title: str
    paper_item: str
    datasets: tuple[str, ...]
    tasks: tuple[str, ...]
    codecs: tuple[str, ...]
    qualities: dict[str, list[Any]]
    overrides: dict[str, dict[str, Any]]
    task_weights: dict[str, dict[str, dict[str, str]]]
    classes: tuple[str, ...] | None
    anchor: str
    metrics: tuple[str, ...]
    plot: str
    expected_items: dict[str, int]
    stand_ins: dict[str, str]
    published: tuple[Published, ...]


def experiments_root() -> Path:
    """The folder of experiment suites: ``$VCMBENCH_EXPERIMENTS``, else the repository's ``experiments/``."""
    env = os.environ.get("VCMBENCH_EXPERIMENTS")
    return Path(env) if env else builtin_cards_root() / "experiments"


def suite_names() -> list[str]:
    root = experiments_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def suite_dir(suite: str) -> Path:
    path = experiments_root() / suite
    if not path.is_dir():
        known = suite_names()
        raise ExperimentError(f"no experiment suite {suite!r} in {experiments_root()}{did_you_mean(suite, known)}; "
                              f"suites: {', '.join(known) or 'none'}")  # fmt: skip
    return path


def load_suite(suite: str, only: list[str] | None = None) -> list[Experiment]:
    """The suite's experiments (sorted by name), or those named in ``only`` (an item's name or its prefix
    before the first ``-``: ``fig6`` picks ``fig6-coco-maskrcnn``)."""
    files = sorted(p for p in suite_dir(suite).glob("*.yaml") if p.name != RESOURCES)
    names = [p.stem for p in files]
    if only:
        picked = []
        for want in only:
            hits = [n for n in names if n == want or n.split("-", 1)[0] == want]
            if not hits:
                raise ExperimentError(f"suite {suite} has no item {want!r}{did_you_mean(want, names)}; "
                                      f"items: {', '.join(names)}")  # fmt: skip
            picked += [h for h in hits if h not in picked]
        files = [p for p in files if p.stem in picked]
    return [load_experiment(p, suite) for p in files]


def load_resources(suite: str) -> dict[str, dict[str, str]]:
    """``resources.yaml`` of a suite: kind (datasets, codecs, tasks) -> card name -> how to get it."""
    path = suite_dir(suite) / RESOURCES
    if not path.is_file():
        return {}
    raw = _read(path)
    return {kind: {str(k): " ".join(str(v).split()) for k, v in (raw.get(kind) or {}).items()}
            for kind in ("datasets", "codecs", "tasks")}  # fmt: skip


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml12.load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ExperimentError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, dict):
        raise ExperimentError(f"{path}: an experiment file must be a YAML mapping")
    return raw


def _names(raw: Any, where: str, required: bool = True) -> tuple[str, ...]:
    if raw is None and not required:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise ExperimentError(f"{where}: must be a non-empty list of names")
    return tuple(raw)


def load_experiment(path: Path, suite: str) -> Experiment:
    """Read and check one experiment file; every problem names the file and the key."""
    raw = _read(path)
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    grid = raw.get("grid")
    if not isinstance(grid, dict):
        raise ExperimentError(f"{path}: grid: must be a mapping (datasets, tasks, codecs, ...)")
    unknown = set(grid) - GRID_KEYS
    if unknown:
        raise ExperimentError(f"{path}: unknown grid key(s) {sorted(unknown)}; allowed: {sorted(GRID_KEYS)}")
    codecs = _names(grid.get("codecs"), f"{path}: grid.codecs")
    anchor = str(raw.get("anchor") or codecs[0])
    if anchor not in codecs:
        raise ExperimentError(f"{path}: anchor {anchor!r} is not one of grid.codecs {list(codecs)}")
    metrics = _names(raw.get("metrics"), f"{path}: metrics")
    plot = str(raw.get("plot") or metrics[0])
    task_weights = {str(c): parse_task_weights(tw, f"{path}: grid.task_weights.{c}")
                    for c, tw in (grid.get("task_weights") or {}).items()}  # fmt: skip
    classes = grid.get("classes")
    return Experiment(
        suite=suite, name=path.stem, path=path, title=str(raw.get("title") or path.stem),
        paper_item=str(raw.get("paper_item") or ""), datasets=_names(grid.get("datasets"), f"{path}: grid.datasets"),
        tasks=_names(grid.get("tasks"), f"{path}: grid.tasks"), codecs=codecs,
        qualities={str(k): list(v) for k, v in (grid.get("qualities") or {}).items()},
        overrides={str(k): dict(v) for k, v in (grid.get("overrides") or {}).items()}, task_weights=task_weights,
        classes=_names(classes, f"{path}: grid.classes") if classes is not None else None, anchor=anchor,
        metrics=metrics, plot=plot, expected_items={str(k): int(v) for k, v in (raw.get("expected_items") or {}).items()},
        stand_ins={str(k): str(v) for k, v in (raw.get("stand_ins") or {}).items()},
        published=tuple(_published(p, f"{path}: published[{i}]") for i, p in enumerate(raw.get("published") or [])),
    )  # fmt: skip


def _published(raw: Any, where: str) -> Published:
    if not isinstance(raw, dict) or "codec" not in raw or not isinstance(raw.get("values"), dict) or not raw["values"]:
        raise ExperimentError(f"{where}: needs codec: and values: {{metric: number}}")
    unknown = set(raw) - PUBLISHED_KEYS
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PUBLISHED_KEYS)}")
    try:
        values = {str(k): float(v) for k, v in raw["values"].items()}
        bpp = None if raw.get("bpp") is None else float(raw["bpp"])
    except (TypeError, ValueError):
        raise ExperimentError(f"{where}: values and bpp must be numbers") from None
    quality = None if raw.get("quality") is None else str(raw["quality"])
    return Published(str(raw.get("label") or raw["codec"]), str(raw["codec"]), values, bpp, quality,
                     str(raw.get("source") or ""))  # fmt: skip
