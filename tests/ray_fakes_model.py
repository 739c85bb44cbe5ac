"""Named fake for the Ray tests: the real YOLOv5 task whose process (the model actor) dies once.

See ``tests/ray_fakes.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcmbench.tasks.yolov5 import YOLOv5Task

from .ray_fakes import kill_self


class SelfKillingYOLOv5(YOLOv5Task):
    """Named fake: the real YOLOv5 task whose process (the model actor) dies in its first ``predict``."""

    def __init__(self, kill_once: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.kill_once = Path(kill_once)

    def predict(self, images: Sequence[np.ndarray]) -> list[list[list[float]]]:
        kill_self(self.kill_once, once=True)
        return super().predict(images)
