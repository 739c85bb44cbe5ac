"""Mask R-CNN task: official weight table, weights checks, RLE output, COCO mask mAP, and the synth-trained model.

The official R50-FPN checkpoints cannot be downloaded here; the accuracy checks use the light model trained on
synth (weights/synth/synth_maskrcnn.pt) against a random-weights model of the same architecture.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.errors import WeightsError
from vcmbench.media.hashing import file_sha256
from vcmbench.metrics.coco_map import coco_segm_eval, encode_masks
from vcmbench.models.mask_rcnn import OFFICIAL_WEIGHTS, LightMaskRCNNConfig, build_light_maskrcnn
from vcmbench.tasks.mask_rcnn import MaskRCNNTask
from vcmbench.train.synth_tasks import save_light_maskrcnn

REPO = Path(__file__).resolve().parent.parent
SYNTH_WEIGHTS = REPO / "weights" / "synth" / "synth_maskrcnn.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One intra-op thread: on a 2-core machine shared with other jobs, two threads that wait on each other
    made these small models' inference 10x slower (torch.unique 100x); results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_official_table_matches_torchvision() -> None:
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

    for arch, enum in (("resnet50_fpn", MaskRCNN_ResNet50_FPN_Weights), ("resnet50_fpn_v2", MaskRCNN_ResNet50_FPN_V2_Weights)):
        url, prefix = OFFICIAL_WEIGHTS[arch]
        assert url == enum.COCO_V1.url
        assert url.endswith(f"-{prefix}.pth") and len(prefix) == 8
    t = MaskRCNNTask(arch="resnet50_fpn_v2")
    assert t._source() == OFFICIAL_WEIGHTS["resnet50_fpn_v2"]


def test_official_architecture_loads_a_torchvision_state_dict(tmp_path: Path) -> None:
    """A state dict with torchvision's key names for R50-FPN v1 loads strictly (random values: no download)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    ref = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    f = tmp_path / "maskrcnn_resnet50_fpn_coco-00000000.pth"
    torch.save(ref.state_dict(), f)
    t = MaskRCNNTask(arch="resnet50_fpn", weights=str(f), device="cpu", min_size=320, max_size=320)
    t.load()
    assert t._model.roi_heads.box_predictor.cls_score.out_features == 91
    torch.testing.assert_close(t._model.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                               ref.state_dict()["roi_heads.mask_predictor.mask_fcn_logits.weight"])  # fmt: skip
    assert t._model.transform.min_size == (320,)
    with pytest.raises(WeightsError, match="does not fit"):
        MaskRCNNTask(arch="resnet50_fpn_v2", weights=str(f), device="cpu").load()


def test_weights_checks(tmp_path: Path) -> None:
    f = tmp_path / "w.pth"
    f.write_bytes(b"not a checkpoint")
    digest = file_sha256(f)
    with pytest.raises(WeightsError, match="should start with deadbeef"):
        MaskRCNNTask(weights=str(f), sha256="deadbeef").weights_path()
    assert MaskRCNNTask(weights=str(f), sha256=digest[:8]).weights_path() == f
    assert MaskRCNNTask(weights=str(f), sha256=digest).weights_path() == f
    with pytest.raises(WeightsError, match="cannot load"):
        MaskRCNNTask(weights=str(f), device="cpu").load()
    with pytest.raises(ValueError, match="prefix of at least 8"):
        MaskRCNNTask(sha256="abc")
    with pytest.raises(ValueError, match="arch must be one of"):
        MaskRCNNTask(arch="resnet18")
    with pytest.raises(ValueError, match="no official download"):
        MaskRCNNTask(arch="light")


def test_detectron2_backend_only_if_importable() -> None:
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="detectron2 is not importable here|not importable"):
            MaskRCNNTask(backend="detectron2", d2_config="x.yaml")
    else:  # pragma: no cover - detectron2 is not installed here
        MaskRCNNTask(backend="detectron2", d2_config="x.yaml")


def test_encode_masks_roundtrip() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((3, 17, 29)) > 0.6
    rles = encode_masks(masks)
    json.dumps(rles)
    assert all(isinstance(r["counts"], str) and r["size"] == [17, 29] for r in rles)
    back = mask_utils.decode([{"size": r["size"], "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(np.moveaxis(back, -1, 0).astype(bool), masks)
    assert encode_masks(np.zeros((0, 5, 5), bool)) == []


def _coco_with_masks() -> COCO:
    h, w = 40, 60
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 5:20, 5:25] = 1
    masks[1, 22:38, 30:58] = 1
    yy, xx = np.mgrid[:h, :w]
    masks[2] = ((yy - 12) ** 2 + (xx - 45) ** 2 < 64).astype(np.uint8)
    anns = []
    for i, (m, cat) in enumerate(zip(masks, (1, 1, 2), strict=True), start=1):
        rle = mask_utils.encode(np.asfortranarray(m))
        anns.append({"id": i, "image_id": 7, "category_id": cat, "iscrowd": 0, "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                     "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})  # fmt: skip
    coco = COCO()
    coco.dataset = {"images": [{"id": 7, "width": w, "height": h}], "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_coco_segm_eval() -> None:
    coco = _coco_with_masks()
    dets = [{"image_id": 7, "category_id": a["category_id"], "segmentation": a["segmentation"], "score": 0.9,
             "bbox": [0, 0, 1, 1]} for a in coco.dataset["annotations"]]  # fmt: skip
    m = coco_segm_eval(coco, dets, [7])
    assert m["segm_map"] == pytest.approx(1.0) and m["segm_map50"] == pytest.approx(1.0)
    # same boxes, wrong masks: mask mAP drops although the (ignored) box is unchanged
    gt0 = mask_utils.decode(dets[0]["segmentation"] | {"counts": dets[0]["segmentation"]["counts"].encode()})
    half = gt0.copy()
    half[:, 15:] = 0
    dets[0] = dict(dets[0], segmentation=encode_masks(half[None].astype(bool))[0])
    m2 = coco_segm_eval(coco, dets, [7])
    assert m2["segm_map"] < 0.9
    assert coco_segm_eval(coco, [], [7])["segm_map"] == 0.0
    with pytest.raises(ValueError, match="absent from the ground truth"):
        coco_segm_eval(coco, [dict(dets[1], image_id=8)], [7])


# ---- the light model on synth --------------------------------------------------------------------
@pytest.fixture(scope="session")
def synth_val(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:  # the cache conftest gives every test (session fixtures run first)
        mp.setenv("VCMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "vcmbench-cache"))
        ds = build(CardSet().get("dataset", "synth"))
        ds.check()
        ds.items()
    return ds


def _random_light(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    cfg = LightMaskRCNNConfig(num_classes=9, min_size=240, max_size=320)
    f = tmp_path / "random_light.pt"
    save_light_maskrcnn(f, build_light_maskrcnn(cfg).eval(), cfg, {"note": "random weights"})
    return f


def _predict_all(task: MaskRCNNTask, ds: Any, items: list[Any]) -> dict[str, Any]:
    out = {}
    for i in range(0, len(items), 8):
        chunk = items[i : i + 8]
        for it, p in zip(chunk, task.predict([ds.load_image(x) for x in chunk]), strict=True):
            out[it.id] = p
    return out


def test_light_model_output_format(tmp_path: Path, synth_val: Any) -> None:
    task = MaskRCNNTask(arch="light", weights=str(_random_light(tmp_path)), device="cpu", score_thresh=0.0)
    items = synth_val.items(limit=2)
    images = [synth_val.load_image(it) for it in items]
    preds = task.predict(images)
    json.dumps(preds)
    assert len(preds) == 2 and len(preds[0]) > 0
    for det in preds[0]:
        assert set(det) == {"bbox", "score", "label", "segmentation"}
        assert det["segmentation"]["size"] == [240, 320] and isinstance(det["segmentation"]["counts"], str)
        x, y, w, h = det["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 320.01 and y + h <= 240.01
    # a batch of two gives what each image gives alone
    (alone,) = task.predict(images[1:])
    assert len(alone) == len(preds[1])
    np.testing.assert_allclose([d["bbox"] for d in alone], [d["bbox"] for d in preds[1]], atol=0.05)
    np.testing.assert_allclose([d["score"] for d in alone], [d["score"] for d in preds[1]], atol=1e-4)
    assert task.version().startswith("1+torchvision+weights.sha256:")


def test_synth_model_beats_random_weights(tmp_path: Path, synth_val: Any) -> None:
    """The trained light model scores well on synth val; the same architecture with random weights does not."""
    card = CardSet().get("task", "synth_maskrcnn")
    trained = build(card)
    assert Path(trained.weights_path()) == SYNTH_WEIGHTS
    items = synth_val.items(limit=16)
    m = trained.evaluate(_predict_all(trained, synth_val, items), synth_val)
    rand = MaskRCNNTask(arch="light", weights=str(_random_light(tmp_path)))
    r = rand.evaluate(_predict_all(rand, synth_val, items), synth_val)
    assert r["segm_map50"] < 0.02 and r["map50"] < 0.02, r
    # measured on these 16 images: map50 0.695, segm_map50 0.680, segm_map 0.470 (random: <= 0.004)
    assert m["segm_map50"] > 0.5 and m["map50"] > 0.5, m
    assert m["segm_map"] > 0.3, m


def test_dataset_without_instances_is_refused() -> None:
    from vcmbench.datasets.cityscapes import CityscapesDataset

    with pytest.raises(ValueError, match="no COCO instance ground truth"):
        MaskRCNNTask().evaluate({}, CityscapesDataset(None))
