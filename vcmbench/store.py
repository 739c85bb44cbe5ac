"""Results store: one SQLite database plus a content-addressed bitstream cache.

Layout of an output root (``--out``, default ``results/``)::

    vcmbench.db            encodes (per codec x quality x image), predictions (per task x
                           codec x quality x image), evaluations (per work unit), runs
    bitstreams/ab/abcd...  every bitstream once, named by the sha256 of its bytes
    runs/<run_id>/         results.csv (tidy table), run.json (provenance) and run.log (log) of each run

Every row is committed as soon as its work finishes (fast encodes in small batches: see
:meth:`Store.put_encodes`), so a killed run loses at most the items in flight. Only the driver process writes.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .media.hashing import file_sha256, resolved

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, started REAL, finished REAL, status TEXT,
    command TEXT, config TEXT, provenance TEXT
);
CREATE TABLE IF NOT EXISTS encodes (
    key TEXT PRIMARY KEY, codec TEXT, codec_id TEXT, quality TEXT, item_id TEXT, item_sha TEXT,
    status TEXT, error TEXT, blob TEXT, nbytes INTEGER, width INTEGER, height INTEGER, frames INTEGER,
    meta TEXT, encode_s REAL, decode_s REAL, psnr REAL, run_id TEXT, updated REAL
);
CREATE TABLE IF NOT EXISTS predictions (
    key TEXT PRIMARY KEY, task TEXT, task_id TEXT, codec TEXT, quality TEXT, item_id TEXT, item_sha TEXT,
    encode_key TEXT, status TEXT, error TEXT, infer_s REAL, preds TEXT, run_id TEXT, updated REAL
);
CREATE TABLE IF NOT EXISTS evaluations (
    key TEXT PRIMARY KEY, dataset TEXT, dataset_id TEXT, task TEXT, task_id TEXT, codec TEXT, codec_id TEXT,
    quality TEXT, n_items INTEGER, n_failed INTEGER, nbytes INTEGER, pixels INTEGER, bpp REAL, bpp_mean REAL,
    psnr REAL, encode_s REAL, decode_s REAL, infer_s REAL, metrics TEXT, headline TEXT, failed_items TEXT, pred_keys TEXT,
    run_id TEXT, updated REAL, kbps REAL, group_rates TEXT, lower_is_better TEXT, left_out TEXT, scored_by TEXT
);
CREATE TABLE IF NOT EXISTS run_units (
    run_id TEXT, position INTEGER, eval_key TEXT, PRIMARY KEY (run_id, eval_key)
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT
);
"""

TIDY_COLUMNS = [
    "run_id", "dataset", "task", "codec", "quality", "metric", "headline", "lower_is_better", "value", "bpp",
    "bpp_mean", "psnr", "n_items", "n_failed", "nbytes", "pixels", "kbps", "encode_s", "decode_s", "infer_s",
    "codec_id", "task_id", "dataset_id", "scored_by",
]  # fmt: skip

#: the columns of the predictions table (``SCHEMA``)
PREDICTION_COLUMNS = frozenset(
    ("key", "task", "task_id", "codec", "quality", "item_id", "item_sha", "encode_key", "status", "error",
     "infer_s", "preds", "run_id", "updated")
)  # fmt: skip
#: the prediction columns of a run's items.csv (:meth:`Store.per_item_rows`)
ITEM_COLUMNS = ("task", "codec", "quality", "item_id", "status", "error", "encode_key", "infer_s")

#: keys bound in one ``IN (...)`` query (well under SQLite's limit on bound parameters)
KEYS_PER_QUERY = 500
#: the rate columns a unit has, and each group of a clip dataset has of its own
GROUP_RATE_COLUMNS = ("bpp", "bpp_mean", "psnr", "nbytes", "pixels", "kbps", "encode_s", "decode_s")


def sync_filesystem(path: Path) -> bool:
    """Flush everything written to the file system holding ``path`` to disk (Linux ``syncfs``): one call makes
    a batch of new files durable, where an fsync each costs a journal commit each. False where unavailable."""
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is None:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        return bool(syncfs(fd) == 0)
    finally:
        os.close(fd)


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):  # pragma: no cover - no C library to load this way (Windows)
        return None


_LIBC = _libc()


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@dataclass(frozen=True)
class EncodeRecord:
    key: str
    status: str
    error: str | None
    blob: str | None
    nbytes: int | None
    width: int | None
    height: int | None
    frames: int | None
    meta: dict[str, Any]
    encode_s: float | None
    decode_s: float | None
    psnr: float | None


def meta_dict(text: str | None) -> dict[str, Any]:
    """An encode row's ``meta`` column as a dict (most codecs store none: ``{}`` is not parsed, 15,000 times at
    COCO-val size)."""
    return json.loads(text) if text and text != "{}" else {}


class Store:
    """The results database and bitstream cache of one output root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.blob_dir = self.root / "bitstreams"
        self.db_path = self.root / "vcmbench.db"
        self.conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self._migrate()
        #: blobs written with ``durable=False`` and not yet flushed to disk (:meth:`sync_blobs`)
        self._unsynced: list[Path] = []
        #: put_blob runs in encode workers too (:meth:`Executor.encode`'s ``keep``)
        self._unsynced_lock = threading.Lock()

    def _migrate(self) -> None:
        """Columns added after a store was first written (old stores keep working, the column is empty)."""
        have = {r["name"] for r in self.conn.execute("PRAGMA table_info(evaluations)")}
        if "kbps" not in have:  # bit rate of clips at their frame rate (video datasets)
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN kbps REAL")
        if "group_rates" not in have:  # each group's own rate (clip datasets: per sequence, per class)
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN group_rates TEXT")
        if "lower_is_better" not in have:  # the task's metrics where lower is better (face recall)
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN lower_is_better TEXT")
        if "left_out" not in have:  # finished items left out so that every codec is scored on the same ones
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN left_out TEXT")
        if "scored_by" not in have:  # the task card (and weights file) whose model scored the unit
            self.conn.execute("ALTER TABLE evaluations ADD COLUMN scored_by TEXT")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    # ---- bitstream cache -------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return Path(self._blob_file(digest))

    def _blob_file(self, digest: str) -> str:
        """:meth:`blob_path` as a string, joined without pathlib: the cache is asked once per encode (15,000 at
        COCO-val size), where pathlib's joins cost ten times the file system's answer."""
        return f"{self.blob_dir}{os.sep}{digest[:2]}{os.sep}{digest}.bin"

    def put_blob(self, data: bytes, durable: bool = True) -> str:
        """Write bytes under their sha256 (atomically: temp file + rename); return the digest. ``durable``: on
        disk (fsync) before it returns; False leaves that to :meth:`sync_blobs`, which flushes a batch at once
        (call it before committing rows that name these blobs). A folder is made only when a write into it
        finds none."""
        digest = hashlib.sha256(data).hexdigest()
        path = self._blob_file(digest)
        if not os.path.exists(path):
            tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}"
            try:
                f = open(tmp, "wb")  # noqa: SIM115 - closed below, after the folder is made if need be
            except FileNotFoundError:  # its folder is new (or was deleted since)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                f = open(tmp, "wb")  # noqa: SIM115
            with f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if not durable:
                with self._unsynced_lock:
                    self._unsynced.append(Path(path))
        return digest

    def sync_blobs(self) -> None:
        """Put the blobs written with ``durable=False`` on disk: one ``syncfs`` (Linux), else an fsync each."""
        with self._unsynced_lock:
            paths, self._unsynced = self._unsynced, []
        if paths and not sync_filesystem(self.blob_dir):
            for path in paths:
                fsync_file(path)

    def get_blob(self, digest: str) -> bytes:
        data = self.blob_path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise OSError(f"bitstream cache entry {self.blob_path(digest)} is corrupt (hash mismatch); delete it")
        return data

    def has_blob(self, digest: str | None) -> bool:
        return bool(digest) and os.path.exists(self._blob_file(digest))  # type: ignore[arg-type]

    # ---- file hashes -------------------------------------------------------------------------
    def file_sha256(self, path: Path) -> str:
        """sha256 of a file, remembered by (path, size, mtime) so large datasets are hashed once."""
        st = path.stat()
        key = resolved(path)
        row = self.conn.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path=?", (key,)).fetchone()
        if row and row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns:
            return str(row["sha256"])
        digest = file_sha256(path)
        self.conn.execute(
            "INSERT OR REPLACE INTO file_hashes VALUES (?,?,?,?)", (key, st.st_size, st.st_mtime_ns, digest)
        )
        return digest

    def rows_for_keys(self, sql: str, keys: Iterable[str]) -> Iterator[sqlite3.Row]:
        """The rows of ``sql`` (whose ``{keys}`` stands for the placeholders of an ``IN`` list) for every key,
        :data:`KEYS_PER_QUERY` keys a query (SQLite's limit on bound parameters)."""
        keys = list(keys)
        for i in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[i : i + KEYS_PER_QUERY]
            yield from self.conn.execute(sql.format(keys=",".join("?" * len(chunk))), chunk)

    # ---- encodes -----------------------------------------------------------------------------
    def encode_records(self, keys: Iterable[str]) -> dict[str, EncodeRecord]:
        out: dict[str, EncodeRecord] = {}
        for r in self.rows_for_keys("SELECT * FROM encodes WHERE key IN ({keys})", keys):
            out[r["key"]] = EncodeRecord(
                key=r["key"], status=r["status"], error=r["error"], blob=r["blob"], nbytes=r["nbytes"],
                width=r["width"], height=r["height"], frames=r["frames"], meta=meta_dict(r["meta"]),
                encode_s=r["encode_s"], decode_s=r["decode_s"], psnr=r["psnr"],
            )  # fmt: skip
        return out

    def encode_blobs(self, keys: Iterable[str]) -> dict[str, str]:
        """Encode key -> blob digest of the finished encodes among ``keys`` (what resuming needs to know)."""
        q = "SELECT key, blob FROM encodes WHERE status='done' AND key IN ({keys})"
        return {r["key"]: r["blob"] for r in self.rows_for_keys(q, keys) if r["blob"]}

    def put_encodes(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Encode rows in one transaction, after the blobs written meanwhile are put on disk (:meth:`sync_blobs`):
        a row is never committed before its bitstream is durable."""
        self.sync_blobs()
        with self.transaction():
            for row in rows:
                self.put_encode(row)

    def put_encode(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        row.setdefault("meta", {})
        row["meta"] = json.dumps(row["meta"])
        row["updated"] = time.time()
        cols = ",".join(row)
        self.conn.execute(f"INSERT OR REPLACE INTO encodes ({cols}) VALUES ({','.join('?' * len(row))})", list(row.values()))

    def set_decode_stats(self, key: str, decode_s: float, psnr: float | None) -> None:
        self.conn.execute(
            "UPDATE encodes SET decode_s=?, psnr=? WHERE key=? AND decode_s IS NULL", (decode_s, psnr, key)
        )

    # ---- predictions -------------------------------------------------------------------------
    def prediction_status(self, keys: Iterable[str]) -> dict[str, str]:
        q = "SELECT key, status FROM predictions WHERE key IN ({keys})"
        return {r["key"]: r["status"] for r in self.rows_for_keys(q, keys)}

    def predictions(self, keys: Iterable[str], columns: Sequence[str] = ()) -> dict[str, sqlite3.Row]:
        """Prediction rows by key: every column, or ``columns`` (and ``key``) only."""
        unknown = set(columns) - PREDICTION_COLUMNS
        if unknown:
            raise ValueError(f"predictions: no column(s) {sorted(unknown)}; the table has {sorted(PREDICTION_COLUMNS)}")
        cols = ",".join(["key", *columns]) if columns else "*"
        q = f"SELECT {cols} FROM predictions WHERE key IN ({{keys}})"
        return {r["key"]: r for r in self.rows_for_keys(q, keys)}

    def put_predictions(self, rows: Iterable[Mapping[str, Any]]) -> None:
        now = time.time()
        with self.transaction() as conn:
            for row in rows:
                row = dict(row)
                row["preds"] = json.dumps(row.get("preds"), separators=(",", ":"))
                row["updated"] = now
                cols = ",".join(row)
                conn.execute(
                    f"INSERT OR REPLACE INTO predictions ({cols}) VALUES ({','.join('?' * len(row))})",
                    list(row.values()),
                )

    # ---- evaluations and runs ----------------------------------------------------------------
    def evaluation(self, key: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM evaluations WHERE key=?", (key,)).fetchone()

    def put_evaluation(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        row["metrics"] = json.dumps(row["metrics"])
        row["headline"] = json.dumps(list(row.get("headline", [])))
        row["failed_items"] = json.dumps(row.get("failed_items", []))
        row["left_out"] = json.dumps(row.get("left_out", []))
        row["pred_keys"] = json.dumps(row.get("pred_keys", []))
        row["group_rates"] = json.dumps(row["group_rates"]) if row.get("group_rates") is not None else None
        row["lower_is_better"] = json.dumps(sorted(row.get("lower_is_better", [])))
        row["updated"] = time.time()
        cols = ",".join(row)
        self.conn.execute(
            f"INSERT OR REPLACE INTO evaluations ({cols}) VALUES ({','.join('?' * len(row))})", list(row.values())
        )

    def start_run(self, run_id: str, command: str, config: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?)",
            (run_id, time.time(), None, "running", command, json.dumps(config), json.dumps(provenance)),
        )

    def finish_run(self, run_id: str, status: str) -> None:
        self.conn.execute("UPDATE runs SET finished=?, status=? WHERE run_id=?", (time.time(), status, run_id))

    def link_units(self, run_id: str, eval_keys: Iterable[str]) -> None:
        with self.transaction() as conn:
            for pos, key in enumerate(eval_keys):
                conn.execute("INSERT OR REPLACE INTO run_units VALUES (?,?,?)", (run_id, pos, key))

    def latest_run(self) -> str | None:
        row = self.conn.execute("SELECT run_id FROM runs ORDER BY started DESC LIMIT 1").fetchone()
        return row["run_id"] if row else None

    def run_info(self, run_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()

    def tidy_rows(self, run_id: str) -> list[dict[str, Any]]:
        """The run's results, one row per (dataset, task, codec, quality, metric).

        A grouped metric ``<metric>/<group>`` (a sequence or class of a clip dataset) carries its group's own
        rate columns (bits of that group's bitstreams over that group's pixels / duration), every other
        metric the unit's."""
        q = """SELECT e.* FROM run_units u JOIN evaluations e ON e.key = u.eval_key
               WHERE u.run_id=? ORDER BY u.position"""
        rows = []
        for r in self.conn.execute(q, (run_id,)):
            metrics = json.loads(r["metrics"])
            headline = set(json.loads(r["headline"] or "[]"))
            groups = json.loads(r["group_rates"] or "{}")
            # None for units stored before directions were: the report says so rather than guess
            lower = None if r["lower_is_better"] is None else set(json.loads(r["lower_is_better"]))
            unit = {k: r[k] for k in (*GROUP_RATE_COLUMNS, "n_items")}
            for metric, value in metrics.items():
                group = metric.split("/", 1)[1] if "/" in metric else None
                rows.append(
                    {
                        "run_id": run_id, "dataset": r["dataset"], "task": r["task"], "codec": r["codec"],
                        "quality": r["quality"], "metric": metric, "headline": metric in headline,
                        "lower_is_better": None if lower is None else metric.split("/", 1)[0] in lower,
                        "value": value, "n_failed": r["n_failed"], **unit, **groups.get(group, {}),
                        "infer_s": r["infer_s"], "codec_id": r["codec_id"], "task_id": r["task_id"],
                        "dataset_id": r["dataset_id"], "scored_by": r["scored_by"],
                    }
                )  # fmt: skip
        return rows

    def run_evaluations(self, run_id: str) -> list[sqlite3.Row]:
        """The evaluation rows of a run's units (dataset, task, codec, quality, pred_keys, ...), in run order."""
        q = """SELECT e.* FROM run_units u JOIN evaluations e ON e.key = u.eval_key
               WHERE u.run_id=? ORDER BY u.position"""
        return self.conn.execute(q, (run_id,)).fetchall()

    def encode_origins(self, pred_keys: Iterable[str]) -> list[tuple[int, int, str | None]]:
        """(width, height, run id) of the finished encode behind each of these predictions: the size it coded
        and the run that encoded it (whose machine its ``encode_s`` was measured on)."""
        q = """SELECT c.width, c.height, c.run_id FROM predictions p JOIN encodes c ON c.key = p.encode_key
               WHERE p.key IN ({keys}) AND c.status = 'done'"""
        return [(r["width"], r["height"], r["run_id"]) for r in self.rows_for_keys(q, pred_keys)]

    def per_item_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Per-image rows (rate, times, status) of every unit of a run, for CSV/Parquet export."""
        out: list[dict[str, Any]] = []
        q = """SELECT e.dataset, e.pred_keys FROM run_units u JOIN evaluations e ON e.key = u.eval_key
               WHERE u.run_id=? ORDER BY u.position"""
        for unit in self.conn.execute(q, (run_id,)).fetchall():
            keys = json.loads(unit["pred_keys"] or "[]")
            preds = self.predictions(keys, ITEM_COLUMNS)  # not the predictions themselves: large, unused here
            encs = self.encode_records(p["encode_key"] for p in preds.values() if p["encode_key"])
            for key in keys:
                p = preds.get(key)
                if p is None:
                    continue
                e = encs.get(p["encode_key"]) if p["encode_key"] else None
                out.append(
                    {
                        "run_id": run_id, "dataset": unit["dataset"], "task": p["task"], "codec": p["codec"],
                        "quality": p["quality"], "item_id": p["item_id"], "status": p["status"],
                        "error": p["error"], "nbytes": e.nbytes if e else None,
                        "pixels": (e.width * e.height * (e.frames or 1)) if e and e.width else None,
                        "bpp": (8.0 * e.nbytes / (e.width * e.height * (e.frames or 1))) if e and e.nbytes else None,
                        "psnr": e.psnr if e else None, "encode_s": e.encode_s if e else None,
                        "decode_s": e.decode_s if e else None, "infer_s": p["infer_s"],
                    }
                )  # fmt: skip
        return out
