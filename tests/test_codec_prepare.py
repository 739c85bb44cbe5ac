"""A learned codec's model load stays out of the timed encode and decode (``Codec.prepare``): ``encode_s`` and
``decode_s`` of the first job of a rate point in a process measure its coding, as for every later job.

The workers' clock is replaced by one that moves only while the model loads, so an encode or decode time
is either 0 (the load happened before the timer) or the load's 100 s (it happened inside)."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.adapters import cached
from vcmbench.cards import CardSet, load_card
from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.learned import LearnedCodec
from vcmbench.errors import QualityError
from vcmbench.executors import base
from vcmbench.executors.base import DecodeJob, EncodeJob, run_decode, run_encode

#: seconds the fake clock moves while a model loads
LOAD_S = 100.0


def learned_card(folder: Path, seed: int, name: str = "tiny_lic") -> Any:
    """A small learned codec with untrained weights (seeds ``seed`` and ``seed + 1``) for rate points 1 and 2
    (no checkpoint to read). Each test takes its own seed: the workers' adapter of a card is built once per
    process, and a test needs one whose models are not loaded yet. Cards of other names build adapters of
    their own with the same weights and bitstreams."""
    path = folder / "codecs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"adapter: lic\nversion: 1\nqualities: [1, 2]\nsettings:\n  arch: mbt2018-mean\n"
                    f"  arch_kwargs: {{N: 16, M: 24}}\n  rate_points:\n    1: {{random_seed: {seed}}}\n"
                    f"    2: {{random_seed: {seed + 1}}}\n")  # fmt: skip
    return load_card(path, "codec")


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The workers' ``perf_counter`` moves :data:`LOAD_S` per model load, and not otherwise; the rate points
    whose models were loaded, in order."""
    now = [0.0]
    loads: list[int] = []
    real = LearnedCodec._load

    def load(self: LearnedCodec, key: int | float) -> Any:
        loads.append(int(key))
        now[0] += LOAD_S
        return real(self, key)

    monkeypatch.setattr(LearnedCodec, "_load", load)
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return loads


def synth_item() -> tuple[Any, Any]:
    """(synth dataset card, its first item)."""
    ds_card = CardSet().get("dataset", "synth")
    return ds_card, cached(ds_card).items(limit=1)[0]


def test_prepare_loads_the_model_of_the_rate_point_only(tmp_path: Path, clock: list[int]) -> None:
    codec = cached(learned_card(tmp_path, seed=3))
    codec.prepare(2)
    assert clock == [2]
    codec.prepare(2)  # loaded once per process
    assert clock == [2]
    with pytest.raises(QualityError):
        codec.prepare(7)  # not a rate point of the card: the same error the encode gives
    assert clock == [2]


def test_the_first_encode_of_a_rate_point_is_timed_without_its_models_load(tmp_path: Path, clock: list[int]) -> None:
    codec_card = learned_card(tmp_path, seed=5)
    ds_card, item = synth_item()
    first = run_encode(EncodeJob("k1", codec_card, 1, ds_card, item))
    again = run_encode(EncodeJob("k1b", codec_card, 1, ds_card, item))
    assert clock == [1]  # the model loaded, once
    assert first.encode_s == 0.0 and again.encode_s == 0.0
    assert first.data == again.data


def test_the_first_decode_of_a_rate_point_is_timed_without_its_models_load(tmp_path: Path, clock: list[int]) -> None:
    ds_card, item = synth_item()
    encoder = learned_card(tmp_path, seed=7)
    enc = run_encode(EncodeJob("k2", encoder, 2, ds_card, item))
    bs = Bitstream(enc.data, enc.width, enc.height, enc.frames, enc.meta)
    expected = cached(encoder).decode(bs)
    assert clock == [2]
    # the same codec from a card of another name, which builds an adapter of its own: like a process that did
    # not encode, the decode is its first use of the model
    decoder = learned_card(tmp_path, seed=7, name="tiny_lic_decoder")
    decoded = run_decode(DecodeJob("p2", ds_card, item, decoder, bs, "k2", want_stats=True, quality=2))
    assert clock == [2, 2] and decoded.decode_s == 0.0
    assert isinstance(decoded.image, np.ndarray) and np.array_equal(decoded.image, expected)
    # without the unit's quality the decode cannot prepare: the load is timed (what the job's quality fixes)
    unprepared = learned_card(tmp_path, seed=7, name="tiny_lic_unprepared")
    late = run_decode(DecodeJob("p2", ds_card, item, unprepared, bs, "k2", want_stats=True))
    assert clock == [2, 2, 2] and late.decode_s == LOAD_S


def test_decode_jobs_carry_their_units_quality(tmp_path: Path) -> None:
    """The infer stage's decode jobs name their unit's quality, which the worker prepares."""
    from vcmbench.run import RunConfig, run

    out = tmp_path / "run"
    cfg = RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [30]}, limit=2,
                    out=str(out), progress=False, workers=1)  # fmt: skip
    seen: list[DecodeJob] = []
    real = base.run_decode

    def record(job: DecodeJob) -> Any:
        seen.append(job)
        return real(job)

    import vcmbench.executors.local as local

    mp = pytest.MonkeyPatch()
    mp.setattr(local, "run_decode", record)
    try:
        run(cfg, log=lambda m: None)
    finally:
        mp.undo()
    coded = [j for j in seen if j.codec is not None]
    assert len(coded) == 2 and all(j.quality == 30 for j in coded)
    assert all(j.quality is None for j in seen if j.codec is None)
