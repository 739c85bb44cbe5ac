"""vcmbench.weights: explicit path, weights dir, cache, download (file:// only: no network), checksums."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vcmbench.cards import CardSet
from vcmbench.errors import WeightsError
from vcmbench.media.hashing import file_sha256
from vcmbench.weights import cache_dir, resolve_weights

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = b"not really a checkpoint, but bytes with a known sha256\n" * 100
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


@pytest.fixture
def source(tmp_path: Path) -> Path:
    p = tmp_path / "src" / "yolov5n.pt"
    p.parent.mkdir()
    p.write_bytes(PAYLOAD)
    return p


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("VCMBENCH_CACHE", str(root))
    monkeypatch.delenv("VCMBENCH_WEIGHTS_DIR", raising=False)
    return root / "weights"


def test_cache_dir_follows_env(cache: Path) -> None:
    assert cache_dir() == cache


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCMBENCH_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "vcmbench" / "weights"


def test_file_sha256_and_its_cache(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(PAYLOAD)
    assert file_sha256(p) == PAYLOAD_SHA
    assert file_sha256(str(p)) == PAYLOAD_SHA
    p.write_bytes(b"other content")  # size (and mtime) change: the cached digest must not be reused
    assert file_sha256(p) == hashlib.sha256(b"other content").hexdigest()


def test_explicit_path(source: Path, cache: Path) -> None:
    assert resolve_weights(str(source), None, PAYLOAD_SHA, "yolov5n.pt", "task yolov5") == source
    assert resolve_weights(source, None, None, "yolov5n.pt", "task yolov5") == source  # None: no check
    assert not cache.exists()


def test_missing_explicit_path_names_path_and_fix(tmp_path: Path, cache: Path) -> None:
    missing = tmp_path / "nowhere" / "yolov5n.pt"
    url = "https://example.org/yolov5n.pt"
    with pytest.raises(WeightsError) as err:
        resolve_weights(str(missing), url, PAYLOAD_SHA, "yolov5n.pt", "task yolov5")
    msg = str(err.value)
    assert str(missing) in msg
    assert "tasks/yolov5.yaml" in msg and "--set yolov5.weights=PATH" in msg and url in msg


def test_checksum_mismatch_names_expected_and_actual(source: Path, cache: Path) -> None:
    with pytest.raises(WeightsError) as err:
        resolve_weights(str(source), None, WRONG_SHA, "yolov5n.pt", "task yolov5")
    msg = str(err.value)
    assert WRONG_SHA in msg and PAYLOAD_SHA in msg and str(source) in msg


def test_checksum_is_case_insensitive(source: Path, cache: Path) -> None:
    assert resolve_weights(str(source), None, PAYLOAD_SHA.upper(), "yolov5n.pt", "task yolov5") == source


def test_weights_dir_comes_before_cache(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    (wdir / "yolov5n.pt").write_bytes(PAYLOAD)
    cache.mkdir(parents=True)
    (cache / "yolov5n.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(wdir))
    assert resolve_weights(None, None, PAYLOAD_SHA, "yolov5n.pt", "task yolov5") == wdir / "yolov5n.pt"
    monkeypatch.delenv("VCMBENCH_WEIGHTS_DIR")
    assert resolve_weights(None, None, PAYLOAD_SHA, "yolov5n.pt", "task yolov5") == cache / "yolov5n.pt"


def test_corrupt_cached_file_is_reported(cache: Path) -> None:
    cache.mkdir(parents=True)
    bad = cache / "yolov5n.pt"
    bad.write_bytes(b"truncated")
    with pytest.raises(WeightsError) as err:
        resolve_weights(None, "https://example.org/yolov5n.pt", PAYLOAD_SHA, "yolov5n.pt", "task yolov5")
    msg = str(err.value)
    assert str(bad) in msg and PAYLOAD_SHA in msg and hashlib.sha256(b"truncated").hexdigest() in msg


def test_download_from_file_url(source: Path, cache: Path) -> None:
    got = resolve_weights(None, source.as_uri(), PAYLOAD_SHA, "yolov5n.pt", "task yolov5")
    assert got == cache / "yolov5n.pt"
    assert got.read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == ["yolov5n.pt"]  # no temporary file left behind
    # second call: served from the cache, even with the source gone
    source.unlink()
    assert resolve_weights(None, source.as_uri(), PAYLOAD_SHA, "yolov5n.pt", "task yolov5") == got


def test_download_with_wrong_checksum_is_discarded(source: Path, cache: Path) -> None:
    with pytest.raises(WeightsError) as err:
        resolve_weights(None, source.as_uri(), WRONG_SHA, "yolov5n.pt", "task yolov5")
    msg = str(err.value)
    assert WRONG_SHA in msg and PAYLOAD_SHA in msg and source.as_uri() in msg
    assert not any(cache.iterdir())  # nothing (not even a partial file) lands in the cache


def test_unreachable_url_names_url_cache_path_and_env(cache: Path) -> None:
    url = "http://127.0.0.1:9/yolov5n.pt"
    with pytest.raises(WeightsError) as err:
        resolve_weights(None, url, PAYLOAD_SHA, "yolov5n.pt", "task yolov5")
    msg = str(err.value)
    assert url in msg
    assert str(cache / "yolov5n.pt") in msg
    assert "VCMBENCH_WEIGHTS_DIR" in msg
    assert not any(cache.iterdir())


def test_missing_file_url(tmp_path: Path, cache: Path) -> None:
    url = (tmp_path / "absent.pt").as_uri()
    with pytest.raises(WeightsError, match="cannot download"):
        resolve_weights(None, url, None, "yolov5n.pt", "task yolov5")


def test_no_url_and_nothing_found(cache: Path) -> None:
    with pytest.raises(WeightsError) as err:
        resolve_weights(None, None, None, "yolov5n.pt", "task yolov5")
    assert str(cache / "yolov5n.pt") in str(err.value)


def test_unwritable_cache_is_a_weights_error(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")  # fails even for root
    monkeypatch.setenv("VCMBENCH_CACHE", str(blocker))
    monkeypatch.delenv("VCMBENCH_WEIGHTS_DIR", raising=False)
    with pytest.raises(WeightsError, match="VCMBENCH_CACHE"):
        resolve_weights(None, source.as_uri(), PAYLOAD_SHA, "yolov5n.pt", "task yolov5")


def test_shipped_weights_are_present() -> None:
    """The weights this repository ships (committed under weights/): the synth task models and the learned
    codecs' checkpoints, at the paths their cards name. The tests using them fail on a missing file, never
    skip it."""
    cards = CardSet()
    paths = [cards.get("task", t).settings["weights"] for t in ("synth_det", "synth_seg", "synth_maskrcnn",
                                                                 "synth_panoptic")]  # fmt: skip
    for codec in ("lic", "objicm", "saicm", "tlicm"):
        paths += [point["checkpoint"] for point in cards.get("codec", codec).settings["rate_points"].values()]
    assert len(paths) == 4 + 4 * 4 and all(str(p).startswith("weights/") for p in paths)
    missing = [p for p in paths if not (REPO / p).is_file()]
    assert not missing, f"shipped weights missing: {missing}; restore them (git checkout -- weights/)"
