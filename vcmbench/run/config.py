"""What a run is asked to do: :class:`RunConfig`, and the defaults of ``vcmbench run``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: the default run is the built-in offline benchmark: generated synth val, the detector trained on it
DEFAULT_CODECS = ("jpeg", "vvenc")
DEFAULT_TASKS = ("synth_det",)
DEFAULT_DATASETS = ("synth",)
#: card settings of the default run (`vcmbench run` without --codec/--task/--dataset): VVenC `faster` costs
#: ~0.7 s of CPU per 320x240 synth image for its 6 QPs, `medium` ~6.7 s, which alone would take the default
#: run past 5 minutes on 2 cores; --set vvenc.preset=medium restores it
DEFAULT_RUN_OVERRIDES: dict[str, dict[str, Any]] = {"vvenc": {"preset": "faster"}}


@dataclass
class RunConfig:
    codecs: list[str] = field(default_factory=lambda: list(DEFAULT_CODECS))
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    #: codec name -> quality ladder; the key "*" applies to every codec without its own entry
    qualities: dict[str, list[Any]] = field(default_factory=dict)
    #: dataset name -> root folder; "*" applies to every dataset
    data_roots: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    ids: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    #: card name -> {setting: value}
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    cards_dirs: list[str] = field(default_factory=list)
    out: str = "results"
    workers: int | None = None
    batch_size: int | None = None
    reference: bool = True
    progress: bool = True
    #: sequence classes of video datasets that have them (SFU-HW: A..E), e.g. ["C", "D"]
    classes: list[str] | None = None
    #: "local" (threads in this process) or "ray" (tasks and actors on a Ray cluster)
    executor: str = "local"
    #: Ray cluster to join: None starts one on this machine, "auto", or "HOST:PORT"
    address: str | None = None
    #: keyword arguments of RayExecutor (cpus_per_encode, gpus_per_model, model_resources, max_retries, ...)
    ray_options: dict[str, Any] = field(default_factory=dict)
    #: score finished units in a background process while the model infers the next ones: "on", "off", or
    #: "auto": on where the model leaves the driver's CPU free (a GPU here, or models on a Ray cluster) for units
    #: of at least BACKGROUND_MIN_ITEMS images (frames) -- on a CPU-only machine the two would only compete
    background_scoring: str = "auto"
    #: COCO mAP evaluation backend, "faster_coco_eval" or "pycocotools" (same numbers; see metrics/coco_map.py).
    #: None: $VCMBENCH_COCO_EVAL, else faster_coco_eval. A chosen one is put in $VCMBENCH_COCO_EVAL for the
    #: processes this run starts (when the run starts, not when it is resolved), and taken out when it ends.
    coco_eval: str | None = None
    #: score every unit of a (dataset, task) on the items all of them finished (the points of one RD table and
    #: BD-rate on the same images); False scores each unit on all the items it finished
    common_items: bool = True
    #: codec-paired scoring added to (and overriding) the codec cards' ``task_weights:``: codec name -> task
    #: name -> {quality label or "*": task card} (see :func:`vcmbench.cards.parse_task_weights`)
    task_weights: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
