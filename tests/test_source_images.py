"""The encode workers' shared source images (:class:`vcmbench.executors.base.SourceImages`): an item is read
once for all its qualities, shared read-only, and a failed read is neither kept nor hidden."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.adapters import cached
from vcmbench.cards import CardSet
from vcmbench.datasets.base import Item
from vcmbench.executors.base import DecodeJob, EncodeJob, SourceImages, run_decode, run_encode
from vcmbench.media.clip import psnr


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, list[str]]:
    """The synth dataset card, its adapter, and the ids its ``load_image`` was called with (slowed a little,
    so that concurrent askers overlap the read)."""
    card = CardSet().get("dataset", "synth")
    ds = cached(card)
    calls: list[str] = []
    real = type(ds).load_image

    def load_image(item: Item) -> Any:
        calls.append(item.id)
        time.sleep(0.05)
        return real(ds, item)

    monkeypatch.setattr(ds, "load_image", load_image)
    return card, ds, calls


def test_an_items_qualities_share_one_read_even_when_asked_at_once(counted: tuple[Any, Any, list[str]]) -> None:
    card, ds, calls = counted
    item = ds.items(limit=1)[0]
    sources = SourceImages()
    got: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: got.append(sources.get(card, item))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [item.id]  # three workers, one read
    assert len(got) == 3 and all(g is got[0] for g in got)
    assert np.array_equal(got[0], type(ds).load_image(ds, item))
    with pytest.raises(ValueError, match="read-only"):
        got[0][0, 0, 0] = 1  # shared by the item's encodes: none may change it


def test_encodes_of_a_ladder_read_the_source_once_with_the_same_bitstreams(counted: tuple[Any, Any, list[str]]) -> None:
    card, ds, calls = counted
    item = ds.items(limit=1)[0]
    codec = CardSet().get("codec", "jpeg")
    from vcmbench.executors import base

    fresh = SourceImages()
    base.SOURCES, old = fresh, base.SOURCES
    try:
        shared = [run_encode(EncodeJob(f"k{q}", codec, q, card, item)).data for q in (10, 40, 80)]
    finally:
        base.SOURCES = old
    assert calls == [item.id]
    alone = [cached(codec).encode(type(ds).load_image(ds, item), q).data for q in (10, 40, 80)]
    assert shared == alone and len(set(shared)) == 3


def test_an_items_reference_and_its_decodes_psnrs_read_the_source_once(counted: tuple[Any, Any, list[str]]) -> None:
    """In the infer stage, an item's reference and the PSNRs of its decodes share one read of its source; the
    reference's image is the model's own copy."""
    card, ds, calls = counted
    item = ds.items(limit=1)[0]
    codec = CardSet().get("codec", "jpeg")
    source = type(ds).load_image(ds, item)
    streams = [cached(codec).encode(source, q) for q in (10, 40)]
    from vcmbench.executors import base

    fresh = SourceImages()
    base.SOURCES, old = fresh, base.SOURCES
    try:
        ref = run_decode(DecodeJob("r", card, item))
        decoded = [run_decode(DecodeJob(f"d{i}", card, item, codec, bs, f"e{i}", want_stats=True))
                   for i, bs in enumerate(streams)]  # fmt: skip
    finally:
        base.SOURCES = old
    assert calls == [item.id]
    assert isinstance(ref.image, np.ndarray) and np.array_equal(ref.image, source)
    ref.image[0, 0, 0] ^= 1  # writable, and a copy: the shared source is unchanged
    assert np.array_equal(fresh.get(card, item), source) and calls == [item.id]
    for bs, dec in zip(streams, decoded, strict=True):
        assert dec.decode_s is not None and dec.decode_s > 0
        assert dec.psnr == psnr(source, cached(codec).decode(bs)) and dec.psnr < 60


def test_a_failed_read_is_raised_to_every_asker_and_not_kept(tmp_path: Path) -> None:
    card = CardSet().get("dataset", "synth")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    item = Item("bad", bad)
    sources = SourceImages()
    for _ in range(2):  # the second ask reads again: nothing was kept
        with pytest.raises(Exception, match="bad"):
            sources.get(card, item)
    assert len(sources) == 0


def test_only_the_last_images_are_kept(counted: tuple[Any, Any, list[str]]) -> None:
    card, ds, calls = counted
    items = ds.items(limit=4)
    sources = SourceImages(size=2)
    for it in items:
        sources.get(card, it)
    sources.get(card, items[-1])  # still kept
    assert calls == [it.id for it in items]
    sources.get(card, items[0])  # forgotten: read again
    assert calls[-1] == items[0].id and len(calls) == 5
    one = items[0]
    tiny = SourceImages(size=8, max_bytes=1)  # a byte cap below one image keeps just the newest
    tiny.get(card, one)
    tiny.get(card, items[1])
    assert len(tiny) == 1
