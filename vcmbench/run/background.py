"""Which units to score in the background, and when: the bookkeeping around
:class:`~vcmbench.scoring.BackgroundScorer`.

While the model infers, a unit whose predictions are all stored can be scored in a background process
(the driver still writes every result). This object knows, for each such unit, which predictions it still
waits for, and submits the unit as its last one is stored -- unless nothing is left to infer, in which
case the driver scores it itself (nothing would overlap).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from ..plan import WorkUnit
from ..scoring import BackgroundScorer

#: smallest unit (images, or frames of clips) that background_scoring="auto" scores in the background
BACKGROUND_MIN_ITEMS = 32


def wants_background(mode: str, task_allows: bool, unit_size: int) -> bool:
    """Whether a unit that still needs scoring goes to the background, by mode ("on", "off", "auto")."""
    if mode == "off" or not task_allows:
        return False
    return mode == "on" or unit_size >= BACKGROUND_MIN_ITEMS


class BackgroundScoring:
    """Units waiting for their last predictions, and the scorer they go to.

    ``submit(unit)`` hands a unit whose predictions are all stored to the scorer (the caller gathers them)."""

    def __init__(self, scorer: BackgroundScorer, submit: Callable[[WorkUnit], None]) -> None:
        self.scorer = scorer
        self._submit = submit
        #: unit key -> prediction keys it still waits for
        self._waiting: dict[str, set[str]] = {}
        #: prediction key -> units waiting for it
        self._owners: dict[str, list[WorkUnit]] = defaultdict(list)
        self._ready: list[WorkUnit] = []
        #: predictions still to be stored in this run
        self._left = 0

    def watch(self, unit: WorkUnit, missing: set[str]) -> None:
        """Score ``unit`` in the background once the predictions ``missing`` are stored (now, if none are)."""
        if not missing:
            self._ready.append(unit)
            return
        self._waiting[unit.key] = set(missing)
        for key in missing:
            self._owners[key].append(unit)

    @property
    def waiting(self) -> bool:
        """Whether any unit waits for predictions still to be stored (the order they come in matters)."""
        return bool(self._waiting)

    def start(self, to_infer: int) -> None:
        """Inference of ``to_infer`` predictions begins: submit the units that are complete already (scoring
        them overlaps inference only if there is some)."""
        self._left = to_infer
        if to_infer:
            for unit in self._ready:
                self._submit(unit)
        self._ready = []

    def stored(self, keys: Iterable[str]) -> None:
        """Predictions ``keys`` are stored (done or failed): submit the units they complete while the model
        still has work (the last unit is scored by the driver, where nothing waits for it)."""
        keys = list(keys)
        self._left -= len(keys)
        for key in keys:
            for unit in self._owners.pop(key, ()):
                left = self._waiting.get(unit.key)
                if left is None:
                    continue
                left.discard(key)
                if not left:
                    del self._waiting[unit.key]
                    if self._left > 0:
                        self._submit(unit)
