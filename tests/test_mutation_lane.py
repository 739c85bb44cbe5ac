"""The mutation lane's configuration and its sampling (benchmarks/mutation.py; the lane itself runs on demand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lane():
    spec = importlib.util.spec_from_file_location("mutation_lane", REPO / "benchmarks" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_module_names_files_that_exist() -> None:
    config = lane().read_config()
    assert config["modules"], "benchmarks/mutation.toml lists no module"
    for name, module in config["modules"].items():
        for path in [*module["mutate"], *module["tests"]]:
            assert (REPO / path).is_file(), f"{name}: {path} does not exist"
        assert 0 < module["target"] <= 100


def test_a_sample_is_a_reproducible_subset() -> None:
    m = lane()
    names = [f"m{i}" for i in range(50)]
    a = m.draw_sample(names, 10, seed=1)
    assert len(a) == len(set(a)) == 10 and set(a) <= set(names)
    assert a == m.draw_sample(list(reversed(names)), 10, seed=1)  # the draw ignores the order names come in
    assert a != m.draw_sample(names, 10, seed=2)
    assert m.draw_sample(names[:5], 10, seed=1) == sorted(names[:5])


def test_wilson_interval_matches_the_textbook_values() -> None:
    """8 of 10: 49.0 % to 94.3 % (Wilson 1927; e.g. Newcombe 1998, Table I method 3); 0 of n starts at 0."""
    m = lane()
    assert m.wilson_interval(8, 10) == pytest.approx((49.0, 94.3), abs=0.05)
    low, high = m.wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(16.1, abs=0.05)
    assert m.wilson_interval(0, 0) == (0.0, 100.0)
