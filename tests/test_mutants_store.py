"""vcmbench.store, method by method on a fresh output folder (the mutation lane's tests for store.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import pytest

from vcmbench.store import GROUP_RATE_COLUMNS, TIDY_COLUMNS, EncodeRecord, Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "out")
    yield s
    s.close()


def test_layout_and_pragmas(store: Store, tmp_path: Path) -> None:
    assert store.root == tmp_path / "out" and store.root.is_dir()
    assert store.db_path == tmp_path / "out" / "vcmbench.db" and store.db_path.exists()
    assert store.blob_dir == tmp_path / "out" / "bitstreams"
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "encodes", "predictions", "evaluations", "run_units", "file_hashes"} <= tables


def test_an_old_store_gains_the_later_columns(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    conn = sqlite3.connect(root / "vcmbench.db")
    conn.execute("CREATE TABLE evaluations (key TEXT PRIMARY KEY, metrics TEXT)")
    conn.commit()
    conn.close()
    s = Store(root)
    cols = {r["name"] for r in s.conn.execute("PRAGMA table_info(evaluations)")}
    assert {"kbps", "group_rates", "lower_is_better", "left_out"} <= cols
    s.close()
    Store(root).close()  # opening it again adds nothing twice


def test_transaction_commits_or_rolls_back(store: Store) -> None:
    with store.transaction() as conn:
        conn.execute("INSERT INTO run_units VALUES ('r', 0, 'k0')")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute("INSERT INTO run_units VALUES ('r', 1, 'k1')")
        raise RuntimeError("boom")
    rows = store.conn.execute("SELECT eval_key FROM run_units").fetchall()
    assert [r[0] for r in rows] == ["k0"]
    assert not store.conn.in_transaction


def test_blobs_are_content_addressed(store: Store) -> None:
    data = b"\x00bitstream\xff" * 10
    digest = store.put_blob(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = store.blob_path(digest)
    assert path == store.blob_dir / digest[:2] / f"{digest}.bin"
    assert path.read_bytes() == data and store.get_blob(digest) == data
    assert store.has_blob(digest) and not store.has_blob(None) and not store.has_blob("")
    assert not store.has_blob(hashlib.sha256(b"other").hexdigest())
    assert store.put_blob(data) == digest  # the same bytes again: one file, unchanged
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    import shutil

    shutil.rmtree(store.blob_dir)  # the cache deleted while the store is open: its folders are made again
    assert store.put_blob(data, durable=False) == digest and store.get_blob(digest) == data
    assert store._unsynced == [path]


def test_a_corrupt_blob_is_refused_by_name(store: Store) -> None:
    digest = store.put_blob(b"abc")
    store.blob_path(digest).write_bytes(b"abd")
    with pytest.raises(OSError, match=f"{digest}.bin is corrupt"):
        store.get_blob(digest)


def test_file_sha256_is_remembered_by_path_size_and_mtime(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "img.bin"
    f.write_bytes(b"one")
    assert store.file_sha256(f) == hashlib.sha256(b"one").hexdigest()
    row = store.conn.execute("SELECT * FROM file_hashes").fetchone()
    st = f.stat()
    assert (row["path"], row["size"], row["mtime_ns"], row["sha256"]) == (
        str(f.resolve()), st.st_size, st.st_mtime_ns, hashlib.sha256(b"one").hexdigest()
    )
    # a remembered row is used while size and mtime match (here a planted digest proves it is read back)
    store.conn.execute("UPDATE file_hashes SET sha256='planted'")
    assert store.file_sha256(f) == "planted"
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, new mtime: hashed again
    assert store.file_sha256(f) == hashlib.sha256(b"one").hexdigest()
    store.conn.execute("UPDATE file_hashes SET sha256='planted', size=size+1")  # other size, same mtime
    assert store.file_sha256(f) == hashlib.sha256(b"one").hexdigest()


def _encode_row(key: str, **kw: object) -> dict:
    row = {"key": key, "codec": "jpeg", "codec_id": "cid", "quality": "30", "item_id": "a", "item_sha": "s",
           "status": "ok", "error": None, "blob": "b" * 64, "nbytes": 123, "width": 16, "height": 8, "frames": 2,
           "encode_s": 0.5, "decode_s": None, "psnr": None, "run_id": "r1"}  # fmt: skip
    row.update(kw)
    return row


def test_encode_records_round_trip(store: Store) -> None:
    store.put_encode(_encode_row("e1", meta={"qp": 32}))
    store.put_encode(_encode_row("e2", status="failed", error="bad", blob=None, nbytes=None))  # no meta given
    recs = store.encode_records(["e1", "e2", "missing"])
    assert set(recs) == {"e1", "e2"}
    assert recs["e1"] == EncodeRecord("e1", "ok", None, "b" * 64, 123, 16, 8, 2, {"qp": 32}, 0.5, None, None)
    assert recs["e2"].status == "failed" and recs["e2"].error == "bad" and recs["e2"].meta == {}
    updated = store.conn.execute("SELECT updated FROM encodes WHERE key='e1'").fetchone()[0]
    assert updated is not None and updated > 0


def test_encode_records_in_chunks_of_more_than_500(store: Store) -> None:
    for i in range(1003):
        store.put_encode(_encode_row(f"k{i}"))
    assert len(store.encode_records(f"k{i}" for i in range(1003))) == 1003


def test_decode_stats_are_set_once(store: Store) -> None:
    store.put_encode(_encode_row("e1"))
    store.set_decode_stats("e1", 0.25, 38.5)
    store.set_decode_stats("e1", 9.0, 1.0)  # a second decode does not overwrite the first's figures
    rec = store.encode_records(["e1"])["e1"]
    assert (rec.decode_s, rec.psnr) == (0.25, 38.5)


def _pred_row(key: str, **kw: object) -> dict:
    row = {"key": key, "task": "yolov5", "task_id": "tid", "codec": "jpeg", "quality": "30", "item_id": "a",
           "item_sha": "s", "encode_key": "e1", "status": "ok", "error": None, "infer_s": 0.1,
           "preds": [{"bbox": [1, 2, 3, 4]}], "run_id": "r1"}  # fmt: skip
    row.update(kw)
    return row


def test_predictions_round_trip(store: Store) -> None:
    store.put_predictions([_pred_row("p1"), _pred_row("p2", status="failed", error="x", preds=None)])
    assert store.prediction_status(["p1", "p2", "p3"]) == {"p1": "ok", "p2": "failed"}
    rows = store.predictions(["p1", "p2", "p3"])
    assert set(rows) == {"p1", "p2"}
    assert json.loads(rows["p1"]["preds"]) == [{"bbox": [1, 2, 3, 4]}]
    assert rows["p1"]["preds"] == '[{"bbox":[1,2,3,4]}]'  # compact JSON
    assert json.loads(rows["p2"]["preds"]) is None
    assert rows["p1"]["updated"] == rows["p2"]["updated"] > 0


def test_predictions_in_chunks_of_more_than_500(store: Store) -> None:
    store.put_predictions(_pred_row(f"p{i}") for i in range(1001))
    keys = [f"p{i}" for i in range(1001)]
    assert len(store.prediction_status(keys)) == 1001 and len(store.predictions(keys)) == 1001


def test_put_predictions_is_all_or_nothing(store: Store) -> None:
    with pytest.raises(sqlite3.Error):
        store.put_predictions([_pred_row("p1"), {"key": "p2", "no_such_column": 1}])
    assert store.prediction_status(["p1", "p2"]) == {}


def _eval_row(key: str, **kw: object) -> dict:
    row = {"key": key, "dataset": "coco", "dataset_id": "did", "task": "yolov5", "task_id": "tid", "codec": "jpeg",
           "codec_id": "cid", "quality": "30", "n_items": 2, "n_failed": 0, "nbytes": 100, "pixels": 400,
           "bpp": 2.0, "bpp_mean": 2.1, "psnr": 33.0, "encode_s": 1.0, "decode_s": 0.5, "infer_s": 0.2,
           "kbps": None, "metrics": {"map": 0.5, "map50": 0.7}, "headline": ["map"], "run_id": "r1",
           "group_rates": None}  # fmt: skip
    row.update(kw)
    return row


def test_evaluation_round_trip(store: Store) -> None:
    store.put_evaluation(_eval_row("u1", failed_items=["x"], left_out=["y"], pred_keys=["p1"], lower_is_better={"b", "a"}))
    r = store.evaluation("u1")
    assert json.loads(r["metrics"]) == {"map": 0.5, "map50": 0.7}
    assert json.loads(r["headline"]) == ["map"]
    assert json.loads(r["failed_items"]) == ["x"] and json.loads(r["left_out"]) == ["y"]
    assert json.loads(r["pred_keys"]) == ["p1"]
    assert json.loads(r["lower_is_better"]) == ["a", "b"]
    assert r["group_rates"] is None and r["updated"] > 0
    store.put_evaluation(_eval_row("u2", group_rates={"A": {"bpp": 1.0}}))
    r2 = store.evaluation("u2")
    assert json.loads(r2["group_rates"]) == {"A": {"bpp": 1.0}}
    assert json.loads(r2["failed_items"]) == [] and json.loads(r2["left_out"]) == []
    assert json.loads(r2["pred_keys"]) == [] and json.loads(r2["lower_is_better"]) == []
    assert store.evaluation("missing") is None


def test_runs(store: Store) -> None:
    assert store.latest_run() is None
    store.start_run("r1", "vcmbench run", {"limit": 2}, {"git": "abc"})
    info = store.run_info("r1")
    assert info["status"] == "running" and info["finished"] is None and info["command"] == "vcmbench run"
    assert json.loads(info["config"]) == {"limit": 2} and json.loads(info["provenance"]) == {"git": "abc"}
    assert info["started"] > 0
    store.finish_run("r1", "ok")
    info = store.run_info("r1")
    assert info["status"] == "ok" and info["finished"] >= info["started"]
    store.start_run("r2", "c", {}, {})
    store.conn.execute("UPDATE runs SET started = started + 100 WHERE run_id='r2'")
    assert store.latest_run() == "r2"
    assert store.run_info("nope") is None


def test_tidy_rows(store: Store) -> None:
    groups = {"A": {c: float(i + 1) for i, c in enumerate(GROUP_RATE_COLUMNS)}}
    store.put_evaluation(_eval_row("u1", metrics={"map": 0.5, "map/A": 0.6, "recall": 0.1}, headline=["map"],
                                   lower_is_better=["recall"], group_rates=groups))  # fmt: skip
    store.put_evaluation(_eval_row("u2", codec="x265", metrics={"map": 0.4}, n_failed=1))
    store.conn.execute("UPDATE evaluations SET lower_is_better=NULL WHERE key='u2'")  # a unit stored before directions
    store.put_evaluation(_eval_row("u3", codec="other"))  # not in the run
    store.link_units("r1", ["u2", "u1"])
    rows = store.tidy_rows("r1")
    assert [(r["codec"], r["metric"]) for r in rows] == [("x265", "map"), ("jpeg", "map"), ("jpeg", "map/A"), ("jpeg", "recall")]  # fmt: skip
    x265, jmap, jgroup, jrecall = rows
    assert set(jmap) == set(TIDY_COLUMNS)
    assert x265["lower_is_better"] is None and x265["n_failed"] == 1 and x265["value"] == 0.4
    assert jmap["headline"] is True and jgroup["headline"] is False and jrecall["headline"] is False
    assert jmap["lower_is_better"] is False and jrecall["lower_is_better"] is True and jgroup["lower_is_better"] is False
    unit = {"bpp": 2.0, "bpp_mean": 2.1, "psnr": 33.0, "nbytes": 100, "pixels": 400, "kbps": None, "encode_s": 1.0,
            "decode_s": 0.5, "n_items": 2}  # fmt: skip
    assert {k: jmap[k] for k in unit} == unit and {k: jrecall[k] for k in unit} == unit
    assert {k: jgroup[k] for k in GROUP_RATE_COLUMNS} == groups["A"]  # the group's own rate
    assert jmap["infer_s"] == 0.2 and (jmap["codec_id"], jmap["task_id"], jmap["dataset_id"]) == ("cid", "tid", "did")
    assert (jmap["run_id"], jmap["dataset"], jmap["task"], jmap["quality"]) == ("r1", "coco", "yolov5", "30")
    assert store.tidy_rows("other") == []


def test_link_units_keeps_the_order(store: Store) -> None:
    store.link_units("r", ["c", "a", "b"])
    rows = store.conn.execute("SELECT position, eval_key FROM run_units WHERE run_id='r' ORDER BY position")
    assert [tuple(r) for r in rows] == [(0, "c"), (1, "a"), (2, "b")]


def test_per_item_rows(store: Store) -> None:
    store.put_encode(_encode_row("e1", nbytes=64, width=4, height=4, frames=2, psnr=31.0, decode_s=0.3))
    store.put_encode(_encode_row("e2", nbytes=None, width=None, height=None, frames=None, status="failed"))
    store.put_predictions([
        _pred_row("p1", encode_key="e1", item_id="a", infer_s=0.1),
        _pred_row("p2", encode_key="e2", item_id="b", status="failed", error="decode"),
        _pred_row("p3", encode_key=None, codec="uncompressed", item_id="c"),
    ])  # fmt: skip
    store.put_evaluation(_eval_row("u1", pred_keys=["p1", "gone", "p2", "p3"]))  # a key with no row is passed over
    store.put_evaluation(_eval_row("u2", dataset="visdrone"))
    store.conn.execute("UPDATE evaluations SET pred_keys=NULL WHERE key='u2'")  # a unit with no keys stored
    store.link_units("r1", ["u1", "u2"])
    rows = store.per_item_rows("r1")
    assert [r["item_id"] for r in rows] == ["a", "b", "c"]
    a, b, c = rows
    assert a == {"run_id": "r1", "dataset": "coco", "task": "yolov5", "codec": "jpeg", "quality": "30", "item_id": "a",
                 "status": "ok", "error": None, "nbytes": 64, "pixels": 32, "bpp": 16.0, "psnr": 31.0,
                 "encode_s": 0.5, "decode_s": 0.3, "infer_s": 0.1}  # fmt: skip
    assert b["status"] == "failed" and b["error"] == "decode"
    assert b["nbytes"] is None and b["pixels"] is None and b["bpp"] is None
    assert c["codec"] == "uncompressed" and c["nbytes"] is None and c["psnr"] is None and c["encode_s"] is None
    assert c["decode_s"] is None and c["pixels"] is None


def test_a_nested_output_root_is_created(tmp_path: Path) -> None:
    s = Store(tmp_path / "a" / "b" / "out")
    assert s.db_path.exists()
    s.close()


def test_the_store_can_be_written_from_another_thread(store: Store) -> None:
    import threading

    errors: list[BaseException] = []

    def work() -> None:
        try:
            store.put_encode(_encode_row("t1"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert errors == [] and set(store.encode_records(["t1"])) == {"t1"}


def test_blobs_sharing_a_folder(store: Store) -> None:
    by_prefix: dict[str, bytes] = {}
    i = 0
    while True:  # two blobs whose digests start alike share a folder; the second must still be written
        data = str(i).encode()
        prefix = hashlib.sha256(data).hexdigest()[:2]
        if prefix in by_prefix:
            break
        by_prefix[prefix] = data
        i += 1
    first, second = by_prefix[prefix], data
    assert store.get_blob(store.put_blob(first)) == first
    assert store.get_blob(store.put_blob(second)) == second


def test_null_columns_of_older_rows_read_as_empty(store: Store) -> None:
    store.put_encode(_encode_row("e1", meta={"a": 1}))
    store.conn.execute("UPDATE encodes SET meta=NULL")
    assert store.encode_records(["e1"])["e1"].meta == {}
    store.put_evaluation({k: v for k, v in _eval_row("u1").items() if k != "headline"})  # no headline given
    assert json.loads(store.evaluation("u1")["headline"]) == []
    store.conn.execute("UPDATE evaluations SET headline=NULL")
    store.link_units("r1", ["u1"])
    assert [r["headline"] for r in store.tidy_rows("r1")] == [False, False]


def test_grouped_metric_names_split_at_the_first_slash(store: Store) -> None:
    groups = {"A/x": {"bpp": 5.0}, "A": {"bpp": 7.0}}
    store.put_evaluation(_eval_row("u1", metrics={"recall/A/x": 0.3, "map/A": 0.2}, lower_is_better=["recall"],
                                   group_rates=groups))  # fmt: skip
    store.link_units("r1", ["u1"])
    recall, mp = store.tidy_rows("r1")
    assert recall["lower_is_better"] is True and recall["bpp"] == 5.0
    assert mp["lower_is_better"] is False and mp["bpp"] == 7.0


def test_per_item_rows_count_one_frame_when_frames_is_unset(store: Store) -> None:
    store.put_encode(_encode_row("e1", nbytes=64, width=4, height=4, frames=None))
    store.put_predictions([_pred_row("p1", encode_key="e1")])
    store.put_evaluation(_eval_row("u1", pred_keys=["p1"]))
    store.link_units("r1", ["u1"])
    (row,) = store.per_item_rows("r1")
    assert row["pixels"] == 16 and row["bpp"] == 32.0
