"""Pausing Python's cyclic garbage collector around work that builds many acyclic objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def no_cycle_collection() -> Iterator[None]:
    """The cyclic garbage collector paused (as it was before, after). Scoring builds hundreds of thousands of
    acyclic lists and dicts (detections parsed from the store, the evaluators' copies), which reference
    counting frees as always; with the collector on, they also set off collections that walk every live
    object again: 10-30 % of the scoring time of a 5,000-image unit (``benchmarks/growth.py``)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
