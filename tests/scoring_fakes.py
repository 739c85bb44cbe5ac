"""Named fake for the background-scoring tests: a scoring process that dies (OOM killer, a crash in a
metric library's C code). That cannot be produced on demand, so this is the real synth detector task,
except that its ``evaluate`` ends its own process at once when it runs anywhere but in the driver."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from vcmbench.datasets.base import Dataset
from vcmbench.tasks.ultralytics_yolo import UltralyticsDetectTask


class DiesOutsideTheDriver(UltralyticsDetectTask):
    def __init__(self, driver_pid: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.driver_pid = driver_pid

    def evaluate(self, predictions: Mapping[str, Any], dataset: Dataset) -> dict[str, float]:
        if os.getpid() != self.driver_pid:
            os._exit(3)
        return super().evaluate(predictions, dataset)
