"""Running a grid: :class:`RunConfig` -> resolved run -> encode, infer, evaluate stages -> the store.

``from vcmbench.run import RunConfig, run`` is the programmatic equivalent of ``vcmbench run``.
"""

from .config import DEFAULT_CODECS, DEFAULT_DATASETS, DEFAULT_RUN_OVERRIDES, DEFAULT_TASKS, RunConfig
from .context import Failure
from .runner import Runner, RunReport, run

__all__ = [
    "DEFAULT_CODECS", "DEFAULT_DATASETS", "DEFAULT_RUN_OVERRIDES", "DEFAULT_TASKS", "Failure", "RunConfig",
    "RunReport", "Runner", "run",
]  # fmt: skip
