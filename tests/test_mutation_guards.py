"""Behaviour that silently corrupts results when broken: cache keys and file hashes that follow content,
reruns that redo what changed or failed, and every COCO metric name pinned to its meaning.

Each test here was written against a deliberate mutation of the code (issue 20) that no other test caught:
a cache key made of the card's name instead of its content, a file-hash cache that ignores size and mtime,
failed units not evaluated again, a deleted bitstream blob not noticed, COCO metric names pointing at other
``COCOeval.stats`` entries.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from vcmbench.media.hashing import file_sha256
from vcmbench.metrics.coco_map import BACKENDS, coco_bbox_eval
from vcmbench.run import RunConfig, RunReport, run
from vcmbench.store import Store

from .helpers import config, small_coco

COLUMNS = ["codec", "quality", "metric", "value", "bpp", "n_items", "n_failed"]


def table(report: RunReport) -> pd.DataFrame:
    df = pd.DataFrame(report.rows)[COLUMNS]
    return df.sort_values(["codec", "quality", "metric"]).reset_index(drop=True)


def synth_grid(out: Path, **kw: Any) -> RunConfig:
    """JPEG at quality 20 (+ uncompressed) x the synth detector x 4 synth images."""
    base: dict[str, Any] = dict(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [20]},
                                limit=4, out=str(out), progress=False)  # fmt: skip
    base.update(kw)
    return RunConfig(**base)


def value(report: RunReport, codec: str, column: str, metric: str = "map50") -> float:
    (row,) = [r for r in report.rows if r["codec"] == codec and r["metric"] == metric]
    return float(row[column])


# ---- cache keys follow the cards' content, not their names ------------------------------------------
def test_a_changed_codec_setting_is_encoded_again_in_the_same_output_folder(tmp_path: Path) -> None:
    first = run(synth_grid(tmp_path / "o"))
    assert first.ok and first.work["encodes"] == 4
    full_chroma = {"jpeg": {"subsampling": "4:4:4"}}
    second = run(synth_grid(tmp_path / "o", overrides=full_chroma))
    assert second.ok, second.failures
    # the reference unit is reused; every JPEG encode (and its decode and inference) is new
    assert second.work == {"encodes": 4, "decodes": 4, "inferences": 4, "evaluations": 1}
    assert value(second, "jpeg", "bpp") > value(first, "jpeg", "bpp")  # full-resolution chroma costs bits
    fresh = run(synth_grid(tmp_path / "fresh", overrides=full_chroma))
    pd.testing.assert_frame_equal(table(second), table(fresh))


def test_a_changed_task_setting_is_predicted_again_in_the_same_output_folder(tmp_path: Path) -> None:
    first = run(synth_grid(tmp_path / "o"))
    assert first.ok
    confident = {"synth_det": {"conf_thres": 0.5}}
    second = run(synth_grid(tmp_path / "o", overrides=confident))
    assert second.ok, second.failures
    # the bitstreams are reused; every prediction (reference and JPEG) is new
    assert second.work == {"encodes": 0, "decodes": 4, "inferences": 8, "evaluations": 2}
    fresh = run(synth_grid(tmp_path / "fresh", overrides=confident))
    pd.testing.assert_frame_equal(table(second), table(fresh))
    assert value(second, "uncompressed", "value", "map") != value(first, "uncompressed", "value", "map")


# ---- file hashes follow the bytes ---------------------------------------------------------------------
def _rewrite(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_file_hash_follows_content_when_only_size_or_only_mtime_changes(tmp_path: Path) -> None:
    path = tmp_path / "image.bin"
    _rewrite(path, b"a" * 10)
    store = Store(tmp_path / "out")
    try:
        for sha in (file_sha256, store.file_sha256):
            _rewrite(path, b"a" * 10, mtime_ns=1_000_000_000_000)
            assert sha(path) == _sha(b"a" * 10)
            _rewrite(path, b"b" * 10, mtime_ns=2_000_000_000_000)  # same size, later mtime
            assert sha(path) == _sha(b"b" * 10)
            _rewrite(path, b"c" * 11, mtime_ns=2_000_000_000_000)  # same mtime, another size
            assert sha(path) == _sha(b"c" * 11)
    finally:
        store.close()


def test_an_image_edited_in_place_is_encoded_again(tmp_path: Path, coco_mini: Path, yolov5n_weights: Path) -> None:
    """The same path with other bytes (re-saved at another JPEG quality) is another item: its encode and
    predictions are redone; the other images' are reused."""
    coco = tmp_path / "coco"
    ids = small_coco(coco_mini, coco, 3)
    for link in (coco / "val2017").iterdir():  # real files, edited below (not the shared ones behind links)
        target = link.resolve()
        link.unlink()
        shutil.copy(target, link)
    cfg = config(tmp_path / "o", coco, yolov5n_weights, qualities={"jpeg": [40]})
    first = run(cfg)
    assert first.ok and first.work["encodes"] == 3
    edited = coco / "val2017" / f"{int(ids[1]):012d}.jpg"
    buf = io.BytesIO()
    Image.open(edited).save(buf, format="JPEG", quality=30)
    _rewrite(edited, buf.getvalue())
    second = run(cfg)
    assert second.ok, second.failures
    assert second.work == {"encodes": 1, "decodes": 1, "inferences": 2, "evaluations": 2}
    db = sqlite3.connect(tmp_path / "o" / "vcmbench.db")
    shas = {row[0] for row in db.execute("SELECT item_sha FROM encodes WHERE item_id=?", (ids[1],))}
    db.close()
    assert _sha(buf.getvalue()) in shas and len(shas) == 2


# ---- reruns redo what is missing or failed ------------------------------------------------------------
def test_a_deleted_bitstream_is_encoded_again(tmp_path: Path) -> None:
    first = run(synth_grid(tmp_path / "o"))
    assert first.ok
    store = Store(tmp_path / "o")
    try:
        blob = store.conn.execute("SELECT blob FROM encodes ORDER BY item_id LIMIT 1").fetchone()[0]
        path = store.blob_path(blob)
    finally:
        store.close()
    data = path.read_bytes()
    path.unlink()
    second = run(synth_grid(tmp_path / "o"))
    assert second.ok, second.failures
    assert second.work == {"encodes": 1, "decodes": 0, "inferences": 0, "evaluations": 0}
    assert path.read_bytes() == data  # the same bytes, back under their name
    pd.testing.assert_frame_equal(table(second), table(first))


@pytest.mark.parametrize("common_items", [True, False])
def test_a_failure_fixed_before_the_rerun_is_scored_again(tmp_path: Path, common_items: bool) -> None:
    """Every encode of a codec fails (its row: n_failed 4, no value); fixed without touching its card, the
    rerun encodes and scores it: n_failed 0 and the numbers of a run that never failed. Scoring every unit on
    its own items (``--no-common-items``), nothing but its failed items says that the unit is out of date."""
    marker = tmp_path / "encoder-broken"
    marker.touch()
    cards = tmp_path / "cards" / "codecs"
    cards.mkdir(parents=True)
    (cards / "jpeg-flaky.yaml").write_text(yaml.safe_dump({
        "adapter": "tests.codec_fakes:FailsWhileFileExists", "version": 1, "qualities": [20],
        "settings": {"marker": str(marker)}}))  # fmt: skip
    grid = dict(codecs=["jpeg-flaky"], qualities={"jpeg-flaky": [20]}, cards_dirs=[str(tmp_path / "cards")],
                common_items=common_items)  # fmt: skip
    broken = run(synth_grid(tmp_path / "o", **grid))
    assert not broken.ok and len(broken.failures) == 4
    row = table(broken).set_index(["codec", "metric"]).loc[("jpeg-flaky", "map50")]
    assert row.n_failed == 4 and np.isnan(row.value)
    marker.unlink()
    fixed = run(synth_grid(tmp_path / "o", **grid))
    assert fixed.ok, fixed.failures
    assert fixed.work == {"encodes": 4, "decodes": 4, "inferences": 4, "evaluations": 1}
    t = table(fixed)
    assert (t.n_failed == 0).all() and t.value.notna().all()
    pd.testing.assert_frame_equal(t, table(run(synth_grid(tmp_path / "fresh", **grid))))


# ---- each COCO metric name means what it says ---------------------------------------------------------
def _gt(boxes: list[list[float]]) -> Any:
    """A pycocotools COCO with one 640x480 image (id 1), one category (id 1) and these xywh boxes."""
    from pycocotools.coco import COCO

    anns = [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, b in enumerate(boxes)]  # fmt: skip
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 640, "height": 480}], "annotations": anns,
                  "categories": [{"id": 1, "name": "thing"}]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _dets(boxes: list[list[float]]) -> list[dict[str, Any]]:
    return [{"image_id": 1, "category_id": 1, "bbox": b, "score": 1.0 - 0.01 * i} for i, b in enumerate(boxes)]


#: COCO's area ranges: small < 32^2 <= medium < 96^2 <= large
SMALL, MEDIUM, LARGE = [10.0, 10.0, 20.0, 20.0], [100.0, 100.0, 50.0, 50.0], [300.0, 200.0, 200.0, 200.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_metrics_score_their_own_objects(backend: str) -> None:
    """One small, one medium, one large object; only one of them found (IoU 1). Each size metric is 1 for its
    own size and 0 for the others; over all sizes, recall 1/3 at precision 1 is AP 34/101 (the recall
    thresholds 0, 0.01, ..., 0.33 of COCO's 101) and AR 1/3."""
    gt = _gt([SMALL, MEDIUM, LARGE])
    for found, size in ((SMALL, "small"), (MEDIUM, "medium"), (LARGE, "large")):
        m = coco_bbox_eval(gt, _dets([found]), [1], backend=backend)
        sizes = {s: m[f"map_{s}"] for s in ("small", "medium", "large")}
        assert sizes == pytest.approx({s: (1.0 if s == size else 0.0) for s in sizes}, abs=1e-12), (size, m)
        for name in ("map", "map50", "map75"):
            assert m[name] == pytest.approx(34 / 101, abs=1e-12), (name, m)
        assert m["ar100"] == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_iou_threshold_metrics(backend: str) -> None:
    """One object, one detection shifted 20 px sideways: IoU 80*100 / (2*100*100 - 80*100) = 2/3, a match at
    the IoU thresholds 0.50, 0.55, 0.60, 0.65 and none above: map50 1, map75 0, map (0.50:0.95) 4/10."""
    gt = _gt([[100.0, 100.0, 100.0, 100.0]])
    m = coco_bbox_eval(gt, _dets([[120.0, 100.0, 100.0, 100.0]]), [1], backend=backend)
    assert (m["map50"], m["map75"]) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert m["map"] == pytest.approx(0.4, abs=1e-12) and m["ar100"] == pytest.approx(0.4, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ar100_counts_up_to_100_detections(backend: str) -> None:
    """15 objects, all found: AR with up to 100 detections per image is 1 (with 10 it would be 10/15)."""
    boxes = [[20.0 + 60 * (i % 5), 20.0 + 60 * (i // 5), 40.0, 40.0] for i in range(15)]
    m = coco_bbox_eval(_gt(boxes), _dets(boxes), [1], backend=backend)
    assert (m["ar100"], m["map"]) == pytest.approx((1.0, 1.0), abs=1e-12)
