"""What keeps the harness's own cost linear and small at COCO-val size (``benchmarks/growth.py``): encode rows
committed in batches after one flush of their bitstreams, work-unit keys hashed once, items.csv read without
the predictions themselves, and the resume check of the encode stage reading two columns."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vcmbench import plan
from vcmbench import store as store_module
from vcmbench.executors.base import EncodeResult, Outcome
from vcmbench.plan import WorkUnit
from vcmbench.run.context import RunContext
from vcmbench.run.encode import ENCODE_BATCH, EncodeRows, encode_stage
from vcmbench.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "out")
    yield s
    s.close()


def statements(store: Store) -> list[str]:
    """Every SQL statement the store's connection runs from now on."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    return seen


def encode_row(store: Store, i: int, durable: bool = False) -> dict[str, Any]:
    data = f"bitstream {i}".encode()
    return {"key": f"e{i}", "codec": "jpeg", "codec_id": "cid", "quality": "30", "item_id": str(i), "item_sha": "s",
            "status": "done", "error": None, "blob": store.put_blob(data, durable=durable), "nbytes": len(data),
            "width": 4, "height": 4, "frames": 1, "encode_s": 0.001, "run_id": "r1"}  # fmt: skip


def committed(store: Store) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM encodes").fetchone()[0])


@pytest.mark.parametrize("n", [10, 200, 1000])
def test_fast_encode_rows_take_one_commit_per_batch(store: Store, n: int) -> None:
    seen = statements(store)
    rows = EncodeRows(store, seconds=3600.0)
    for i in range(n):
        rows.add(encode_row(store, i))
    assert committed(store) == n // ENCODE_BATCH * ENCODE_BATCH  # full batches only, so far
    rows.flush()
    assert committed(store) == n
    commits = sum(s == "COMMIT" for s in seen)
    assert commits == math.ceil(n / ENCODE_BATCH)  # not one per row: flat per item as the grid grows
    assert sum(s.startswith("INSERT OR REPLACE INTO encodes") for s in seen) == n


def test_slow_encode_rows_are_committed_as_they_come(store: Store) -> None:
    rows = EncodeRows(store, seconds=0.0)  # every row arrives after the interval: nothing waits
    for i in range(3):
        rows.add(encode_row(store, i))
        assert committed(store) == i + 1



def test_rows_waiting_behind_a_slow_encode_are_committed_while_it_runs(store: Store) -> None:
    """Fast encodes finish, then a slow one runs: the executor's idle calls commit the fast rows meanwhile, so
    an interrupt or a crash during the slow encode keeps them (and Ctrl-C tests can see them)."""
    import threading

    from vcmbench.executors.local import LocalExecutor

    rows = EncodeRows(store, seconds=0.2)
    release = threading.Event()
    seen_while_slow: list[int] = []

    def job(i: int) -> int:
        if i == 3:  # the slow one: done once the fast rows were seen committed (or after 20 s)
            release.wait(20)
        return i

    def idle() -> None:
        rows.idle()
        if committed(store) == 3 and not release.is_set():
            seen_while_slow.append(committed(store))
            release.set()

    with LocalExecutor(2) as ex:
        for out in ex.unordered(job, range(4), idle=idle):
            rows.add(encode_row(store, out.value))
    rows.flush()
    assert seen_while_slow == [3] and committed(store) == 4
    waiting = EncodeRows(store, seconds=3600.0)
    waiting.add(encode_row(store, 9))
    assert committed(store) == 4  # waiting for its batch
    waiting.idle()  # the executor saw no encode finish for IDLE_S: whatever waits is committed
    assert committed(store) == 5

def test_bitstreams_are_on_disk_before_their_rows_are_committed(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(store_module, "sync_filesystem", lambda path: False)  # no syncfs: an fsync per blob
    monkeypatch.setattr(store_module, "fsync_file", lambda path: events.append(f"fsync {path.name}"))
    store.conn.set_trace_callback(lambda s: events.append(s) if s == "COMMIT" else None)
    rows = [encode_row(store, i) for i in range(3)]
    assert events == []  # written, not yet flushed
    store.put_encodes(rows)
    assert events == [*(f"fsync {r['blob']}.bin" for r in rows), "COMMIT"]
    events.clear()
    store.put_encodes([encode_row(store, 9, durable=True)])  # flushed when written: nothing left to sync
    assert events == ["COMMIT"]


def test_syncfs_flushes_a_batch_in_one_call(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(store_module, "sync_filesystem", lambda path: calls.append(path) or True)
    monkeypatch.setattr(store_module, "fsync_file", lambda path: pytest.fail("fsync of one blob"))
    store.put_encodes([encode_row(store, i) for i in range(5)])
    assert calls == [store.blob_dir]
    store.sync_blobs()  # nothing written since
    assert calls == [store.blob_dir]


def test_sync_filesystem_works_here(store: Store) -> None:
    store.put_blob(b"x", durable=False)
    assert store_module.sync_filesystem(store.blob_dir) is True  # Linux: syncfs exists and succeeds


class InterruptedEncodes:
    """An executor whose encodes finish, then Ctrl-C arrives."""

    workers = 1

    def __init__(self, finish: int) -> None:
        self.finish = finish

    def encode(self, jobs: Any, idle: Any = None, keep: Any = None) -> Any:
        # like Ray's: the bitstreams come back and the driver stores them (``keep`` is not called here)
        for job in list(jobs)[: self.finish]:
            yield Outcome(job, EncodeResult(job.key.encode(), 4, 4, 1, {}, 0.001))
        raise KeyboardInterrupt

    def status(self) -> dict[str, Any]:
        return {}


def test_an_interrupted_encode_stage_commits_what_finished(store: Store, tmp_path: Path) -> None:
    items = [SimpleNamespace(id=str(i), path=tmp_path / f"{i}.png", meta={}) for i in range(10)]
    shas = [f"sha{i}" for i in range(10)]
    unit = WorkUnit("ds", "task", "jpeg", 30, "dsid", "tid", "cid", tuple(it.id for it in items), tuple(shas))
    res = SimpleNamespace(datasets={"ds": (None, items, shas)}, cards={"jpeg": "codec card", "ds": "dataset card"})
    ctx = RunContext(store, "r1", res, log=lambda m: None, progress=False)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        encode_stage(ctx, [unit], InterruptedEncodes(finish=7))  # type: ignore[arg-type]
    assert committed(store) == 7 and ctx.work["encodes"] == 7  # the batch was flushed on the way out
    have = store.encode_blobs(unit.encode_key(s) for s in shas)
    assert len(have) == 7 and all(store.get_blob(d) for d in have.values())


def test_encode_blobs_names_finished_encodes_only(store: Store) -> None:
    store.put_encodes([encode_row(store, 1), {**encode_row(store, 2), "status": "failed", "blob": None}])
    assert set(store.encode_blobs(["e1", "e2", "e3"])) == {"e1"}
    seen = statements(store)
    store.encode_blobs(f"e{i}" for i in range(1200))
    assert sum(s.startswith("SELECT") for s in seen) == 3  # 500 keys a query


def test_unit_keys_are_hashed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = plan.stable_hash
    monkeypatch.setattr(plan, "stable_hash", lambda obj, n=16: calls.append(obj) or real(obj, n))
    shas = tuple(f"s{i}" for i in range(50))
    u = WorkUnit("ds", "task", "jpeg", 30, "dsid", "tid", "cid", shas, shas)
    first = (u.key, u.prediction_keys(), [u.encode_key(s) for s in shas])
    hashed = len(calls)
    assert hashed == 1 + 2 * len(shas)  # the unit's key; an encode and a prediction key per item
    again = (u.key, u.prediction_keys(), [u.encode_key(s) for s in shas])
    assert again == first and len(calls) == hashed  # asked again (every stage does): nothing hashed
    assert u.prediction_key("other") != u.prediction_key("s0")  # an item outside the unit is still hashed


def test_items_csv_does_not_read_the_predictions(store: Store) -> None:
    store.start_run("r1", "cmd", {}, {})
    store.put_encodes([encode_row(store, 1)])
    store.put_predictions([{"key": "p1", "task": "t", "task_id": "tid", "codec": "jpeg", "quality": "30",
                            "item_id": "1", "item_sha": "s", "encode_key": "e1", "status": "done", "error": None,
                            "infer_s": 0.2, "preds": [[1, 2, 3, 4, 0.9, 0]] * 100, "run_id": "r1"}])  # fmt: skip
    store.put_evaluation({"key": "u1", "dataset": "ds", "metrics": {}, "pred_keys": ["p1"], "run_id": "r1"})
    store.link_units("r1", ["u1"])
    seen = statements(store)
    (row,) = store.per_item_rows("r1")
    assert row["item_id"] == "1" and row["infer_s"] == 0.2 and row["nbytes"] == len(b"bitstream 1")
    assert not any("preds" in s or "SELECT *" in s and "FROM predictions" in s for s in seen)
    with pytest.raises(ValueError, match="no column"):
        store.predictions(["p1"], ["nope"])
    table = {r["name"] for r in store.conn.execute("PRAGMA table_info(predictions)")}
    assert store_module.PREDICTION_COLUMNS == table and set(store_module.ITEM_COLUMNS) < table


def test_local_workers_store_the_bitstreams_the_driver_commits_the_rows(store: Store) -> None:
    """The local executor's workers write the bitstream files (``keep``), so the driver's thread only commits
    rows; each result names its bitstream by its sha256, on disk in the store's cache."""
    import hashlib
    import threading

    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.executors.base import EncodeJob
    from vcmbench.executors.local import LocalExecutor

    cards = CardSet()
    codec, ds = cards.get("codec", "jpeg"), cards.get("dataset", "synth")
    jobs = [EncodeJob(f"k{it.id}-{q}", codec, q, ds, it) for it in build(ds).items(limit=3) for q in (10, 80)]
    writers: list[str] = []

    def keep(data: bytes) -> str:
        writers.append(threading.current_thread().name)
        return store.put_blob(data, durable=False)

    with LocalExecutor(2) as ex:
        outs = list(ex.encode(jobs, keep=keep))
    assert len(outs) == 6 and all(o.error is None for o in outs)
    for o in outs:
        assert o.value.blob == hashlib.sha256(o.value.data).hexdigest() and store.has_blob(o.value.blob)
    assert len(writers) == 6 and threading.current_thread().name not in writers
    with LocalExecutor(1) as ex:  # without keep the caller stores them (as with Ray)
        assert all(o.value.blob is None for o in ex.encode(jobs[:1]))


def test_resolved_paths_are_what_pathlib_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """File hashes are remembered by resolved path; the folder-cached resolution must give pathlib's answer
    for plain files, linked folders, linked files, relative paths and ``..``."""
    from vcmbench.media.hashing import resolved

    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    target = real / "sub" / "a.png"
    target.write_bytes(b"x")
    (tmp_path / "dirlink").symlink_to(real)
    (real / "filelink.png").symlink_to(target)
    monkeypatch.chdir(real)
    cases = [target, tmp_path / "dirlink" / "sub" / "a.png", real / "filelink.png", Path("sub/a.png"),
             tmp_path / "dirlink" / "sub" / ".." / "sub" / "a.png", Path("filelink.png")]  # fmt: skip
    for p in cases:
        assert resolved(p) == str(p.resolve()), p
        assert resolved(str(p)) == str(p.resolve()), p
    assert resolved(tmp_path / "dirlink" / "sub" / "a.png") == str(target)


def test_empty_encode_meta_is_an_empty_dict_and_other_meta_round_trips(store: Store) -> None:
    from vcmbench.store import meta_dict

    assert meta_dict(None) == {} and meta_dict("") == {} and meta_dict("{}") == {}
    assert meta_dict('{"fps": 30.0, "yuv_source": "a.yuv"}') == {"fps": 30.0, "yuv_source": "a.yuv"}


def test_detection_rows_round_like_python_number_by_number() -> None:
    """The stored rows of the YOLO adapters, rounded vectorized: the same numbers (and types) as rounding each
    with Python's ``round`` (boxes to 1e-4, scores to 1e-6), ties and float32-born values included."""
    import numpy as np

    from vcmbench.tasks.base import detection_rows

    def one_by_one(det: Any) -> list[list[float]]:
        return [[round(x1, 4), round(y1, 4), round(x2, 4), round(y2, 4), round(s, 6), int(c)]
                for x1, y1, x2, y2, s, c in np.asarray(det, dtype=np.float64).tolist()]  # fmt: skip

    rng = np.random.default_rng(7)
    for n in (0, 1, 300):
        boxes = rng.uniform(0, 640, (n, 4)).astype(np.float32)
        det = np.column_stack([boxes, rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, 80, n)])
        got = detection_rows(det)
        assert got == one_by_one(det)
        assert all(isinstance(v, float) for r in got for v in r[:5]) and all(type(r[5]) is int for r in got)
    ties = [[0.00005, 1.23455, 2.5, 1e-9, 0.0000005, 3], [0.12345, 0.99995, 640.00005, 3.14159265, 0.1234565, 79],
            [1e12, -0.00015, 0.00025, 7.77775, 0.9999995, 0]]  # fmt: skip
    assert detection_rows(np.array(ties)) == one_by_one(ties)
