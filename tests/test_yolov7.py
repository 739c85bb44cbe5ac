"""YOLOv7 task: a yolov7-tiny with random weights, saved as an official-style checkpoint, run end to end.

No official weights are downloaded: the model is built from the yolov7-tiny architecture (written out
below) by yolov7-package's ``Model``, pickled the way upstream training saves it (classes recorded as
``models.yolo.*`` / ``models.common.*``, fp16, ``epoch: -1``), and loaded back through exactly the path
an official ``yolov7.pt`` takes: ``YOLOv7Task(weights=...)``.
"""

from __future__ import annotations

import copy
import io
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.adapters import adapter_class, build
from vcmbench.cards import load_card, parse_overrides
from vcmbench.datasets.coco import CocoDataset
from vcmbench.errors import WeightsError
from vcmbench.models.safe_pickle import FAMILIES, RestrictedUnpickler
from vcmbench.tasks.classes import ClassMapError

from .helpers import config, small_coco

torch = pytest.importorskip("torch")
pytest.importorskip("yolov5")
pytest.importorskip("yolov7_package")

import yolov7_package.models.common as v7_common  # noqa: E402
import yolov7_package.models.yolo as v7_yolo  # noqa: E402
import yolov7_package.utils.datasets as v7_datasets  # noqa: E402
import yolov7_package.utils.general as v7_general  # noqa: E402

from vcmbench.tasks import yolov7 as y7  # noqa: E402
from vcmbench.tasks.yolov5 import rect_input_shape  # noqa: E402
from vcmbench.tasks.yolov7 import YOLOv7Task, load_yolov7_checkpoint, resize_long_side_floor  # noqa: E402

from .yolov7_models import _quiet_grid, build_random_yolov7_tiny, pickle_globals, save_upstream_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_URL = "https://github.com/WongKinYiu/yolov7/releases/download/v0.1/yolov7.pt"
N_IMAGES = 4  # the small COCO subset predicted and scored


def _top_level_upstream_modules() -> set[str]:
    return {k for k in sys.modules if k.split(".")[0] in ("models", "utils")}


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread while this module runs: its convolutions are small, and on 2 cores shared with
    other jobs two spinning OpenMP threads made the module ~3x slower (64 s instead of 23 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def coco(coco_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    root = tmp_path_factory.mktemp("coco")
    small_coco(coco_mini, root, N_IMAGES)
    ds = CocoDataset(root)
    ds.check()
    return ds


@pytest.fixture(scope="module")
def images(coco: CocoDataset) -> dict[str, np.ndarray]:
    return {it.id: coco.load_image(it) for it in coco.items()}


@pytest.fixture(scope="module")
def model_and_checkpoint(
    images: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path]:
    import cv2

    calibration = [cv2.resize(im, (320, 256), interpolation=cv2.INTER_AREA) for im in images.values()]
    model = build_random_yolov7_tiny(80, calibration)
    path = tmp_path_factory.mktemp("weights") / "yolov7-tiny-random.pt"
    save_upstream_checkpoint(model, path)
    return model, path


@pytest.fixture(scope="module")
def checkpoint(model_and_checkpoint: tuple[Any, Path]) -> Path:
    return model_and_checkpoint[1]


@pytest.fixture(scope="module")
def task(checkpoint: Path) -> YOLOv7Task:
    t = YOLOv7Task(weights=str(checkpoint), device="cpu")
    t.load()
    return t


@pytest.fixture(scope="module")
def predictions(task: YOLOv7Task, images: dict[str, np.ndarray]) -> dict[str, Any]:
    return dict(zip(images, task.predict(list(images.values())), strict=True))


# -- the architecture and the checkpoint format ------------------------------------------------------
def test_model_is_a_yolov7_tiny(model_and_checkpoint: tuple[Any, Path]) -> None:
    model, _ = model_and_checkpoint
    assert len(model.model) == 78 and {14, 21, 37, 47, 57, 65, 73} <= set(model.save)  # the routed layers
    head = model.model[-1]
    assert type(head) is v7_yolo.IDetect and head.nc == 80 and head.na == 3 and head.f == [74, 75, 76]
    assert head.stride.tolist() == [8.0, 16.0, 32.0]
    assert sum(isinstance(m, v7_common.SP) for m in model.modules()) == 3
    assert 6.1e6 < sum(p.numel() for p in model.parameters()) < 6.3e6  # yolov7-tiny: 6.2 M parameters


def test_checkpoint_references_upstream_module_names(checkpoint: Path) -> None:
    refs = pickle_globals(checkpoint)
    ours = {(m, n) for m, n in refs if not m.startswith(("torch", "collections", "builtins", "__builtin__", "_codecs"))}
    assert {("models.yolo", "Model"), ("models.yolo", "IDetect"), ("models.common", "Conv")} <= ours
    assert {m for m, _ in ours} <= {"models.yolo", "models.common"}, ours
    assert not any("yolov7_package" in m for m, _ in refs)
    unpickler = RestrictedUnpickler(io.BytesIO(b""), family=FAMILIES["yolov7"], source=str(checkpoint))
    for module, name in ours:  # each upstream name resolves to the package's class, never a top-level import
        cls = unpickler.find_class(module, name)
        assert cls.__module__ == f"yolov7_package.{module}"
    assert not _top_level_upstream_modules()  # the aliases used while saving are gone
    assert v7_yolo.Model.__module__ == "yolov7_package.models.yolo"


def test_checkpoint_loads_with_the_saved_weights(model_and_checkpoint: tuple[Any, Path]) -> None:
    model, path = model_and_checkpoint
    before = _top_level_upstream_modules()
    loaded = load_yolov7_checkpoint(path, fuse=False)
    assert _top_level_upstream_modules() == before  # the remapper imports no top-level models / utils
    assert type(loaded) is v7_yolo.Model and type(loaded.model[-1]) is v7_yolo.IDetect
    expected = copy.deepcopy(model).half().float().state_dict()  # saved in fp16, as upstream does
    got = loaded.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert loaded.yaml == model.yaml and not loaded.training


def test_loaded_model_is_fused_float_eval(task: YOLOv7Task, model_and_checkpoint: tuple[Any, Path]) -> None:
    fused = task._model
    assert not fused.training and type(fused).__module__ == "yolov7_package.models.yolo"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in fused.parameters())
    # fusing (Conv+BN, IDetect's implicit layers) keeps the outputs of the saved model
    reference = copy.deepcopy(model_and_checkpoint[0]).half().float().eval()
    x = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), _quiet_grid():
        a, b = reference(x)[0], fused(x)[0]
    torch.testing.assert_close(b[..., :4], a[..., :4], atol=1e-2, rtol=1e-3)  # pixels, boxes up to ~1500 px
    torch.testing.assert_close(b[..., 4:], a[..., 4:], atol=2e-5, rtol=1e-3)


# -- pre- and post-processing ---------------------------------------------------------------------------
def test_preprocess_matches_upstream_loader(coco: CocoDataset, tmp_path: Path) -> None:
    """Our letterboxed input == yolov7's own load_image + letterbox (test.py's dataloader) for the same file."""
    import cv2

    task = YOLOv7Task()  # preprocess needs no model (stride 32 until one is loaded)
    odd = tmp_path / "odd.png"  # 581 px long side: yolov7 resizes it to 639 (rounding down), not 640
    cv2.imwrite(str(odd), np.random.default_rng(0).integers(0, 256, (400, 581, 3), dtype=np.uint8))
    files = [it.path for it in coco.items()[:3]] + [odd]
    for f in files:
        upstream = types.SimpleNamespace(imgs=[None], img_files=[str(f)], img_size=640, augment=False)
        img, (h0, w0), (h, w) = v7_datasets.load_image(upstream, 0)
        shape = rect_input_shape(h0, w0, 640, 32)  # test.py's batch shape for a batch of this image alone
        ref, _, pad = v7_datasets.letterbox(img, shape, auto=False, scaleup=False)
        rgb = cv2.imread(str(f))[:, :, ::-1]
        ours, (gain, ours_pad) = task.preprocess(np.ascontiguousarray(rgb))
        np.testing.assert_array_equal(ours, ref[:, :, ::-1])
        assert gain == h / h0 and ours_pad == (float(pad[0]), float(pad[1]))
    assert (h, w) == (440, 639) and ours.shape[:2] == (480, 672)


def test_resize_rounds_down_like_yolov7() -> None:
    assert resize_long_side_floor(np.zeros((400, 581, 3), np.uint8), 640).shape == (440, 639, 3)
    assert resize_long_side_floor(np.zeros((333, 1000, 3), np.uint8), 640).shape == (213, 640, 3)  # yolov5: 214
    assert resize_long_side_floor(np.zeros((480, 640, 3), np.uint8), 640).shape == (480, 640, 3)


def _random_raw(nc: int, n: int = 400, seed: int = 0) -> torch.Tensor:
    """Raw head output (xywh, objectness, class probabilities) with ~2000 (box, class) pairs above conf 0.001."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, n, 2, generator=g) * 640
    wh = torch.rand(1, n, 2, generator=g) * 200 + 2
    scores = torch.rand(1, n, 1 + nc, generator=g) ** 16
    return torch.cat([xy, wh, scores], 2)


@pytest.mark.parametrize("nc", [80, 1])
def test_nms_gives_yolov7_results(nc: int) -> None:
    """YOLOv5's NMS (what predict() calls) keeps what yolov7's keeps; for nc == 1 after the objectness hook."""
    import yolov5.utils.general as v5_general

    raw = _random_raw(nc)
    ref = v7_general.non_max_suppression(raw.clone(), 0.001, 0.65, multi_label=True)[0]
    adjusted = raw.clone()
    if nc == 1:
        y7._objectness_only(torch.nn.Identity(), (), (adjusted, None))
    ours = v5_general.non_max_suppression(adjusted, 0.001, 0.65, multi_label=True, max_det=300)[0]
    assert len(ref) == 300 or nc == 1
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    if nc == 1:  # without the hook the single-class scores would be objectness x an untrained class output
        plain = v5_general.non_max_suppression(raw.clone(), 0.001, 0.65, multi_label=True)[0]
        assert not torch.equal(plain[:, 4], ref[:, 4])


def test_prediction_format(predictions: dict[str, Any], coco: CocoDataset) -> None:
    json.dumps(predictions)
    sizes = {it.id: (it.meta["height"], it.meta["width"]) for it in coco.items()}
    assert len(predictions) == N_IMAGES and sum(map(len, predictions.values())) > 50
    for item_id, dets in predictions.items():
        assert 0 < len(dets) <= 300
        h, w = sizes[item_id]
        scores = [d[4] for d in dets]
        assert scores == sorted(scores, reverse=True)
        for x1, y1, x2, y2, score, cls in dets:
            assert all(type(v) is float for v in (x1, y1, x2, y2, score))
            assert type(cls) is int and 0 <= cls < 80
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert 0.001 <= score <= 1
    assert len({d[5] for dets in predictions.values() for d in dets}) > 10  # many classes, not one


def test_predict_matches_upstream_test_py_pipeline(
    task: YOLOv7Task, coco: CocoDataset, predictions: dict[str, Any]
) -> None:
    """One image through test.py's own steps (yolov7's loader, letterbox, NMS, scale_coords) at --batch-size 1,
    the reference the task defines (a larger batch would letterbox the image to its neighbours' rectangle)
    == predict()."""
    item = coco.items()[0]
    upstream = types.SimpleNamespace(imgs=[None], img_files=[str(item.path)], img_size=640, augment=False)
    img, (h0, w0), (h, w) = v7_datasets.load_image(upstream, 0)
    img, _, pad = v7_datasets.letterbox(img, rect_input_shape(h0, w0, 640, 32), auto=False, scaleup=False)
    x = torch.from_numpy(np.ascontiguousarray(img[:, :, ::-1].transpose(2, 0, 1))).float()[None] / 255
    with torch.no_grad(), _quiet_grid():
        out = task._model(x)[0]
    det = v7_general.non_max_suppression(out, conf_thres=0.001, iou_thres=0.65, multi_label=True)[0]
    v7_general.scale_coords(x.shape[2:], det[:, :4], (h0, w0), ((h / h0, w / w0), pad))
    ours = np.array(predictions[item.id])
    assert ours.shape == tuple(det.shape) and len(ours) > 0
    np.testing.assert_allclose(ours[:, :4], det[:, :4].numpy(), atol=2e-3)
    np.testing.assert_allclose(ours[:, 4], det[:, 4].numpy(), atol=1e-6)
    np.testing.assert_array_equal(ours[:, 5], det[:, 5].numpy())


def test_batch_equals_images_alone(task: YOLOv7Task, images: dict[str, np.ndarray], predictions: dict) -> None:
    item_id, image = next(iter(images.items()))
    (alone,) = task.predict([image])
    a, b = np.array(alone), np.array(predictions[item_id])
    assert a.shape == b.shape
    np.testing.assert_allclose(b[:, :5], a[:, :5], atol=1e-3)
    np.testing.assert_array_equal(b[:, 5], a[:, 5])


def test_category_ids_are_coco91(task: YOLOv7Task, predictions: dict[str, Any], coco: CocoDataset) -> None:
    """The checkpoint carries COCO's 80 names (as the official ones do): by name, they are test.py's ids."""
    coco91 = list(v7_general.coco80_to_coco91_class())
    assert task.category_map(coco) == dict(enumerate(coco91)) and len(set(coco91)) == 80
    dets = task.coco_detections(predictions, coco)
    assert len(dets) == sum(map(len, predictions.values()))
    valid = set(coco.coco_gt().getCatIds())
    assert {d["category_id"] for d in dets} <= valid & set(coco91)
    assert {d["image_id"] for d in dets} == {int(k) for k in predictions}


def test_evaluate_small_coco(task: YOLOv7Task, predictions: dict[str, Any], coco: CocoDataset) -> None:
    metrics = task.evaluate(predictions, coco)
    assert set(task.metrics) == {"map", "map50"} <= set(metrics)
    assert metrics["map50"] >= metrics["map"]
    assert task.evaluate(dict.fromkeys(predictions, []), coco)["map"] == 0.0
    # the ground-truth boxes as detections (through the class map back to the model's classes) score 1
    gt = coco.coco_gt()
    to_class = {cat: cls for cls, cat in task.category_map(coco).items()}
    perfect = {
        item_id: [[x, y, x + w, y + h, 1.0, to_class[a["category_id"]]]
                  for a in gt.loadAnns(gt.getAnnIds(imgIds=[int(item_id)], iscrowd=False))
                  for x, y, w, h in [a["bbox"]]]
        for item_id in predictions
    }  # fmt: skip
    scores = task.evaluate(perfect, coco)
    assert [scores[m] for m in ("map", "map50", "map75", "ar100")] == pytest.approx([1.0] * 4, abs=1e-12), scores


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [{"epoch": -1, "model": None, "ema": None}, {"model": {"w": 1}}, [1, 2]])
def test_checkpoint_without_a_model_is_a_weights_error(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "yolov7.pt"
    torch.save(content, path)
    t = YOLOv7Task(weights=str(path), device="cpu")
    with pytest.raises(WeightsError, match=rf"{path}.*holds no YOLOv7 detection model"):
        t.load()


def test_corrupt_or_foreign_checkpoint_is_a_weights_error(tmp_path: Path, yolov5n_weights: Path) -> None:
    bad = tmp_path / "yolov7.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=str(bad)):
        YOLOv7Task(weights=str(bad), device="cpu").load()
    # a YOLOv5 checkpoint also names models.yolo: it must fail here, not load through yolov5's top-level folder
    before = _top_level_upstream_modules()
    with pytest.raises(WeightsError, match=rf"cannot load YOLOv7 checkpoint {yolov5n_weights}"):
        YOLOv7Task(weights=str(yolov5n_weights), device="cpu").load()
    assert _top_level_upstream_modules() == before


def test_missing_weights_path_is_a_weights_error(tmp_path: Path) -> None:
    t = YOLOv7Task(weights=str(tmp_path / "absent.pt"), url=OFFICIAL_URL)
    with pytest.raises(WeightsError, match=r"absent\.pt.*tasks/yolov7\.yaml"):
        t.version()


def test_single_class_repconv_detect_model(tmp_path: Path, coco: CocoDataset) -> None:
    """A single-class variant with a plain Detect head and RepConv outputs: RepConv fusion, objectness scores."""
    path = tmp_path / "one-class.pt"
    noise = [np.random.default_rng(i).integers(0, 256, (64, 96, 3), dtype=np.uint8) for i in range(2)]
    save_upstream_checkpoint(build_random_yolov7_tiny(1, noise, head="Detect", repconv=True), path)
    assert ("models.common", "RepConv") in pickle_globals(path) and ("models.yolo", "Detect") in pickle_globals(path)
    # its one class, named "0" (yolov7's placeholder), is no COCO category: refused for COCO, loads fine
    with pytest.raises(ClassMapError, match="match 0 of the 80 categories.*placeholders"):
        YOLOv7Task(weights=str(path), device="cpu").category_map(coco)
    t = YOLOv7Task(weights=str(path), device="cpu", class_map="identity")
    t.load()
    assert t.class_names() == {0: "0"}
    reps = [m for m in t._model.modules() if type(m) is v7_common.RepConv]
    assert len(reps) == 3 and all(m.deploy and m.rbr_1x1 is None and m.rbr_identity is None for m in reps)
    assert not any(p.requires_grad for p in t._model.parameters())
    unfused = load_yolov7_checkpoint(path, fuse=False)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in unfused.modules()) > 3 * len(reps)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), _quiet_grid():
        raw, ref = t._model(x)[0], unfused(x)[0]
    assert raw.shape[-1] == 6 and bool((raw[..., 5] == 1).all())  # class probability 1: score = objectness
    torch.testing.assert_close(raw[..., :5], ref[..., :5], atol=1e-3, rtol=1e-3)


def test_bad_settings_are_rejected_with_the_task_name() -> None:
    with pytest.raises(ValueError, match="^yolov7: class_map"):
        YOLOv7Task(class_map="coco91")
    with pytest.raises(ValueError, match="^yolov7: conf_thres"):
        YOLOv7Task(conf_thres=2.0)


# -- card, identity, runner ----------------------------------------------------------------------------
def test_card_and_identity(checkpoint: Path, tmp_path: Path) -> None:
    card = load_card(REPO / "tasks" / "yolov7.yaml", "task")
    assert card.adapter in ("vcmbench.tasks.yolov7:YOLOv7Task", "yolov7") and card.name == "yolov7"
    assert adapter_class(card) is YOLOv7Task
    assert card.settings["url"] == OFFICIAL_URL and card.settings["sha256"] is None
    t = build(card)
    assert type(t) is YOLOv7Task and t.name == "yolov7"
    assert (t.img_size, t.conf_thres, t.iou_thres, t.max_det) == (640, 0.001, 0.65, 300)
    local = build(card.with_settings(weights=str(checkpoint)))  # --set yolov7.weights=...
    assert local.weights_path() == checkpoint
    sha = y7.file_sha256(checkpoint)
    assert sha in local.version() and local.version().startswith(f"{y7.IMPL_VERSION}+yolov5.")
    # where the weights live stays out of the identity; the cache key follows the file's content
    copied = tmp_path / "elsewhere" / checkpoint.name
    copied.parent.mkdir()
    copied.write_bytes(checkpoint.read_bytes())
    moved = build(card.with_settings(weights=str(copied), url=None))
    assert moved.weights_path() == copied and moved.identity() == local.identity()
    changed = build(card.with_settings(weights=str(copied), conf_thres=0.25))
    assert changed.identity() != local.identity()


def test_runner_with_the_card_and_set_weights(tmp_path: Path, coco_mini: Path, checkpoint: Path) -> None:
    from vcmbench.run import run

    root = tmp_path / "coco"
    small_coco(coco_mini, root, 2)
    overrides = parse_overrides([f"yolov7.weights={checkpoint}"])  # what --set yolov7.weights=... gives
    report = run(config(tmp_path / "out", root, checkpoint, tasks=["yolov7"], overrides=overrides,
                        qualities={"jpeg": [40]}))  # fmt: skip
    assert report.ok, report.failures
    assert report.work["inferences"] == 4 and report.work["encodes"] == 2
    rows = [r for r in report.rows if r["task"] == "yolov7" and r["metric"] == "map"]
    assert {r["codec"] for r in rows} == {"uncompressed", "jpeg"}
    for r in rows:
        assert 0.0 <= float(r["value"]) <= 1.0
    meta = json.loads((report.run_dir / "run.json").read_text())
    assert meta["config"]["cards"]["yolov7"]["settings"]["weights"] == str(checkpoint)
