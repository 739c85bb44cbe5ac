"""Reproducing a paper from experiment files (``experiments/<suite>/*.yaml``, one per paper item).

:mod:`.experiment` reads the files, :mod:`.checklist` finds what this machine has and lacks (datasets,
binaries, weights), :mod:`.workplan` turns an experiment into a runnable grid with its estimated work, and
:mod:`.execute` runs it and writes the item's plot, BD table and the paper's numbers beside the measured ones.
``vcmbench reproduce SUITE [--only ITEM] [--dry-run]`` drives them (:mod:`.command`).
"""
