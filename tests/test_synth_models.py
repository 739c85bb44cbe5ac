"""The committed synth task models: checksums, accuracy on synth val, JPEG rate sweep through the real runner.

Everything runs offline on the CPU: the default card's val split is generated into the
session cache (a few seconds), each model predicts the 64 val images once per module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.datasets.synth import SynthDataset
from vcmbench.errors import WeightsError
from vcmbench.media.hashing import file_sha256
from vcmbench.run import DEFAULT_CODECS, DEFAULT_DATASETS, DEFAULT_TASKS, RunConfig, run
from vcmbench.synth.generate import SynthConfig, ensure_split

pytest.importorskip("ultralytics")

from vcmbench.tasks.ultralytics_yolo import UltralyticsDetectTask, UltralyticsSegmentTask  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = ("synth_det", "synth_seg")
# measured on synth val (64 images) with the committed weights, see weights/synth/ultralytics_train_log.json
DET_MAP50_MIN = 0.8


@pytest.fixture(scope="module")
def synth_val(tmp_path_factory: pytest.TempPathFactory) -> SynthDataset:
    cache = tmp_path_factory.getbasetemp() / "vcmbench-cache" / "synth"  # = $VCMBENCH_CACHE/synth (conftest)
    ds = build(CardSet().get("dataset", "synth").with_settings(root=str(cache)))
    ds.check()
    return ds


def _predict_all(task: Any, ds: SynthDataset) -> dict[str, Any]:
    items = ds.items()
    out: dict[str, Any] = {}
    for i in range(0, len(items), task.batch_size):
        chunk = items[i : i + task.batch_size]
        for it, p in zip(chunk, task.predict([ds.load_image(x) for x in chunk]), strict=True):
            out[it.id] = p
    return out


@pytest.fixture(scope="module")
def det() -> UltralyticsDetectTask:
    task = build(CardSet().get("task", "synth_det"))
    task.load()
    return task


@pytest.fixture(scope="module")
def det_preds(det: UltralyticsDetectTask, synth_val: SynthDataset) -> dict[str, Any]:
    return _predict_all(det, synth_val)


def test_committed_weights_reload_with_their_card_sha256(tmp_path: Path) -> None:
    cards = CardSet()
    total = 0
    for name in MODELS:
        card = cards.get("task", name)
        path = REPO / card.settings["weights"]
        assert path.is_file(), f"{path} is not committed"
        total += path.stat().st_size
        assert file_sha256(path) == card.settings["sha256"]
        task = build(card)
        assert task.weights_path().resolve() == path
        assert task.version().endswith(f"weights.sha256:{card.settings['sha256']}")
        task.load()
        assert sorted(task.names().values()) == sorted(
            ["disc", "ball", "crate", "panel", "kite", "star", "pill", "face"]
        )
        # the check can fail: a tampered copy is refused
        bad = tmp_path / f"{name}.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bad.write_bytes(bytes(data))
        with pytest.raises(WeightsError, match="fails its checksum"):
            build(card.with_settings(weights=str(bad))).weights_path()
    assert total < 15e6, f"committed weights are {total / 1e6:.1f} MB together"
    log = json.loads((REPO / "weights" / "synth" / "ultralytics_train_log.json").read_text())
    for name in MODELS:
        assert log["models"][name]["sha256"] == cards.get("task", name).settings["sha256"]


def test_detector_map50_on_synth_val(det: UltralyticsDetectTask, det_preds: dict[str, Any], synth_val: SynthDataset) -> None:
    assert len(det_preds) == 64
    metrics = det.evaluate(det_preds, synth_val)
    assert set(det.metrics) <= set(metrics)
    assert metrics["map50"] >= DET_MAP50_MIN, metrics
    assert 0.4 < metrics["map"] < metrics["map50"], metrics


def test_detector_predictions_are_batch_independent(det: UltralyticsDetectTask, synth_val: SynthDataset,
                                                    det_preds: dict[str, Any]) -> None:  # fmt: skip
    items = synth_val.items()[:3]
    for it in items:
        alone = det.predict([synth_val.load_image(it)])[0]
        batched = det_preds[it.id]
        assert len(alone) == len(batched)
        assert np.allclose(np.array(alone)[:, :5], np.array(batched)[:, :5], atol=1e-3)


def test_seg_model_reports_mask_map(synth_val: SynthDataset) -> None:
    task = build(CardSet().get("task", "synth_seg"))
    assert isinstance(task, UltralyticsSegmentTask)
    preds = _predict_all(task, synth_val)
    first = preds[synth_val.items()[0].id]
    assert first["size"] == [240, 320] and len(first["boxes"]) == len(first["masks"]) > 0
    json.dumps(preds)  # stored as JSON by the runner
    metrics = task.evaluate(preds, synth_val)
    for key in task.metrics:
        assert key in metrics
    assert metrics["segm_map50"] >= 0.6, metrics
    assert metrics["map50"] >= 0.6, metrics
    assert 0.3 < metrics["segm_map"] <= 1.0, metrics


def test_accuracy_falls_as_jpeg_quality_falls(tmp_path: Path) -> None:
    """Through the real runner: three JPEG qualities on the first 24 val images, mAP50 ordered by quality."""
    report = run(RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"],
                           qualities={"jpeg": [2, 10, 75]}, limit=24, out=str(tmp_path / "out"),
                           progress=False))  # fmt: skip
    assert report.ok, report.failures
    rows = [r for r in report.rows if r["metric"] == "map50"]
    assert all(r["n_items"] == 24 and r["n_failed"] == 0 for r in rows)
    ref = next(r["value"] for r in rows if r["codec"] == "uncompressed")
    by_q = {r["quality"]: r for r in rows if r["codec"] == "jpeg"}
    q2, q10, q75 = (by_q[q]["value"] for q in ("2", "10", "75"))
    assert by_q["2"]["bpp"] < by_q["10"]["bpp"] < by_q["75"]["bpp"]
    assert q2 < q10 < q75, (q2, q10, q75)
    assert q75 > 0.9 * ref and q2 < 0.8 * ref, (q2, q10, q75, ref)


def test_default_run_is_the_offline_synth_benchmark() -> None:
    cfg = RunConfig()
    assert (cfg.codecs, cfg.tasks, cfg.datasets) == (["jpeg", "vvenc"], ["synth_det"], ["synth"])
    assert (DEFAULT_CODECS, DEFAULT_TASKS, DEFAULT_DATASETS) == (("jpeg", "vvenc"), ("synth_det",), ("synth",))
    cards = CardSet()
    for kind, name in (("task", "synth_det"), ("dataset", "synth"), ("codec", "jpeg"), ("codec", "vvenc")):
        cards.get(kind, name)


def test_training_labels_match_the_coco_ground_truth(tmp_path: Path) -> None:
    """The recipe's COCO -> Ultralytics conversion (boxes; mask outlines) agrees with the instances JSON."""
    import cv2
    from pycocotools import mask as mask_utils

    from vcmbench.train.synth_yolo import prepare_yolo_dataset

    cfg = SynthConfig(seed=5, images={"train": 4, "val": 2}, clips={}, clip_frames=16)
    for split in ("train", "val"):
        ensure_split(cfg, split, tmp_path / "cache")
    det_dir = tmp_path / "det"
    seg_dir = tmp_path / "seg"
    prepare_yolo_dataset(cfg, det_dir, segments=False, cache=tmp_path / "cache")
    data_yaml = prepare_yolo_dataset(cfg, seg_dir, segments=True, cache=tmp_path / "cache")
    assert "names" in data_yaml.read_text()
    root = cfg.root(tmp_path / "cache")
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    for im in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        stem = Path(im["file_name"]).stem
        assert (det_dir / "images" / "train" / im["file_name"]).resolve() == root / "train" / im["file_name"]
        det_rows = [list(map(float, r.split())) for r in (det_dir / "labels" / "train" / f"{stem}.txt").read_text().splitlines()]
        seg_rows = [list(map(float, r.split())) for r in (seg_dir / "labels" / "train" / f"{stem}.txt").read_text().splitlines()]
        assert len(det_rows) == len(anns) == len(seg_rows)
        for a, d, s in zip(anns, det_rows, seg_rows, strict=True):
            w, h = im["width"], im["height"]
            x, y, bw, bh = a["bbox"]
            assert int(d[0]) == int(s[0]) == a["category_id"] - 1
            assert d[1:] == pytest.approx([(x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h], abs=1e-5)
            poly = (np.array(s[1:]).reshape(-1, 2) * [w, h]).round().astype(np.int32)
            drawn = np.zeros((h, w), np.uint8)
            cv2.fillPoly(drawn, [poly], 1)
            m = mask_utils.decode(a["segmentation"])
            iou = (drawn & m).sum() / max(1, (drawn | m).sum())
            assert iou > 0.6, (a["id"], iou)


def test_cli_default_run_and_plot(tmp_path: Path) -> None:
    """`vcmbench run` with no grid options: JPEG + VVenC (preset faster) x synth_det x synth val, then `plot`."""
    from vcmbench.cli import main

    out = tmp_path / "results"
    assert main(["run", "--out", str(out), "--no-progress", "--limit", "3"]) == 0
    (run_dir,) = (out / "runs").iterdir()
    meta = json.loads((run_dir / "run.json").read_text())
    cards = meta["config"]["cards"]
    assert sorted(cards) == ["jpeg", "synth", "synth_det", "vvenc"]
    assert cards["vvenc"]["settings"]["preset"] == "faster"
    import pandas as pd

    df = pd.read_csv(run_dir / "results.csv")
    assert set(df.codec) == {"uncompressed", "jpeg", "vvenc"} and set(df.dataset) == {"synth"}
    assert len(df[(df.metric == "map50") & (df.codec == "vvenc")]) == 6
    assert main(["plot", str(out)]) == 0
    assert (run_dir / "plots" / "rd_synth_synth_det_map50.png").stat().st_size > 0
    # an explicit --set wins over the default run's own setting
    out2 = tmp_path / "results2"
    assert main(["run", "--out", str(out2), "--no-progress", "--limit", "1", "--quality", "vvenc=47",
                 "--quality", "jpeg=50", "--set", "vvenc.preset=medium"]) == 0  # fmt: skip
    (run_dir2,) = (out2 / "runs").iterdir()
    assert json.loads((run_dir2 / "run.json").read_text())["config"]["cards"]["vvenc"]["settings"]["preset"] == "medium"
