"""The built-in offline benchmark: a seeded generator of images, panoptic ground truth and clips.

See :mod:`vcmbench.synth.generate` for the files written, :mod:`vcmbench.synth.scene` for
what is drawn, :mod:`vcmbench.synth.checks` for the format checks and
:mod:`vcmbench.train.synth_yolo` for the recipe that trains the task models on it.
"""

from __future__ import annotations

from .generate import (
    GENERATOR_VERSION,
    SPLITS,
    SynthConfig,
    config_from_settings,
    default_cache_root,
    ensure_split,
    tree_digest,
)

__all__ = [
    "GENERATOR_VERSION",
    "SPLITS",
    "SynthConfig",
    "config_from_settings",
    "default_cache_root",
    "ensure_split",
    "tree_digest",
]
