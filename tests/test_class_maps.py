"""Class maps between a detector's classes and a dataset's categories (vcmbench/tasks/classes.py), through the
real YOLOv5 and YOLOv7 scoring paths: by name, checked, and refused before any work when they do not fit.

The VisDrone-trained stand-ins are the real yolov5n / yolov7-tiny architectures with random weights and
VisDrone's class names (tests/yolov5_models.py, tests/yolov7_models.py); scoring needs only their names,
since the predictions scored are built from the ground truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vcmbench.cards import CardError, CardSet
from vcmbench.datasets.coco import CocoDataset
from vcmbench.datasets.visdrone import VisDroneDataset
from vcmbench.run import RunConfig, run
from vcmbench.run.resolve import SelectedDataset, check_pairs
from vcmbench.tasks.classes import COCO80_TO_COCO91, ClassMapError, check_setting, class_map, normalise_name
from vcmbench.tasks.yolov5 import YOLOv5Task  # noqa: E402
from vcmbench.tasks.yolov7 import YOLOv7Task  # noqa: E402

from .test_visdrone import write_visdrone
from .yolov5_models import build_random_yolov5n, save_yolov5_checkpoint  # noqa: E402
from .yolov7_models import build_random_yolov7_tiny, save_upstream_checkpoint  # noqa: E402

#: Ultralytics' VisDrone.yaml: class index 0..9 (VisDrone's category ids are 1..10)
VISDRONE_NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
                  "motor"]  # fmt: skip
ORDERS = {"ultralytics": VISDRONE_NAMES, "reversed": VISDRONE_NAMES[::-1]}
FAMILIES = {"yolov5": YOLOv5Task, "yolov7": YOLOv7Task}


@pytest.fixture(scope="module")
def visdrone(tmp_path_factory: pytest.TempPathFactory) -> VisDroneDataset:
    ds = VisDroneDataset(write_visdrone(tmp_path_factory.mktemp("visdrone")))
    ds.name = "visdrone"
    ds.check()
    return ds


def _checkpoint(family: str, names: list[str] | None, folder: Path) -> Path:
    path = folder / f"{family}-{'-'.join(n[:3] for n in names or ['placeholder'])}.pt"
    if family == "yolov5":
        save_yolov5_checkpoint(build_random_yolov5n(10, names), path)
    else:
        save_upstream_checkpoint(build_random_yolov7_tiny(10, names=names), path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    folder = tmp_path_factory.mktemp("weights")
    return {(family, order): _checkpoint(family, names, folder) for family in FAMILIES
            for order, names in ORDERS.items()}  # fmt: skip


def _task(family: str, weights: Path, **settings: Any) -> Any:
    task = FAMILIES[family](weights=str(weights), device="cpu", **settings)
    task.name = family
    return task


def perfect_predictions(ds: VisDroneDataset, names: list[str]) -> dict[str, list[list[float]]]:
    """The ground truth's evaluated boxes as predictions ``[x1, y1, x2, y2, score, class index]`` of a model
    whose classes are ``names``."""
    gt = ds.coco_gt()
    index = {gt.cats[cid]["name"]: names.index(gt.cats[cid]["name"]) for cid in gt.cats}
    by_image: dict[int, list[list[float]]] = {}
    for a in gt.dataset["annotations"]:
        if not a["iscrowd"]:
            x, y, w, h = a["bbox"]
            by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h, 0.9, index[gt.cats[a["category_id"]]["name"]]])
    return {it.id: by_image.get(ds.image_id(it.id), []) for it in ds.items()}


# -- VisDrone models through the real scoring paths ---------------------------------------------------------
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_perfect_visdrone_detections_score_1(family: str, order: str, visdrone: VisDroneDataset,
                                             checkpoints: dict[tuple[str, str], Path]) -> None:  # fmt: skip
    """A VisDrone model with the task's default settings, loaded as a run loads it, scores perfect detections
    at mAP 1.0, whatever the order of its classes: classes are matched to categories by name."""
    task = _task(family, checkpoints[family, order])
    task.load()
    names = ORDERS[order]
    assert task.class_names() == dict(enumerate(names))
    assert task.category_map(visdrone) == {i: VISDRONE_NAMES.index(n) + 1 for i, n in enumerate(names)}
    metrics = task.evaluate(perfect_predictions(visdrone, names), visdrone)
    assert metrics["map"] == pytest.approx(1.0) and metrics["map50"] == pytest.approx(1.0), metrics
    dets = task.coco_detections(perfect_predictions(visdrone, names), visdrone)
    assert {d["category_id"] for d in dets} == {1, 4, 9, 10}  # pedestrian, car, bus, motor of the fixture


@pytest.mark.parametrize("family", FAMILIES)
def test_off_by_one_maps_are_clear_errors(family: str, visdrone: VisDroneDataset,
                                          checkpoints: dict[tuple[str, str], Path]) -> None:  # fmt: skip
    """`identity` (category id = class index 0..9) on VisDrone's ids 1..10, and a table shifted by one inside
    the id range, are refused with the classes at fault named -- not scored at mAP ~0."""
    weights = checkpoints[family, "ultralytics"]
    preds = perfect_predictions(visdrone, VISDRONE_NAMES)
    with pytest.raises(ClassMapError, match=r"gives category ids 0 that dataset visdrone does not have.*off by one"):
        _task(family, weights, class_map="identity").evaluate(preds, visdrone)
    shifted = {i: (i + 1) % 10 + 1 for i in range(10)}  # pedestrian -> 2 'people', ..., motor -> 1
    with pytest.raises(ClassMapError, match=r"contradicts the class names.*class 0 'pedestrian' -> 2 'people', "
                                            r"but 'pedestrian' is category 1"):  # fmt: skip
        _task(family, weights, class_map=shifted).evaluate(preds, visdrone)
    right = {i: i + 1 for i in range(10)}  # the explicit form of what the names say
    assert _task(family, weights, class_map=right).evaluate(preds, visdrone)["map"] == pytest.approx(1.0)


def test_placeholder_names_are_refused_until_a_class_map_is_given(
    visdrone: VisDroneDataset, tmp_path: Path
) -> None:
    """A checkpoint without class names (yolov7's "0", "1", ...) says nothing: refused, with the fix named; an
    explicit {index: id} map from the card makes it score."""
    weights = _checkpoint("yolov7", None, tmp_path)
    task = _task("yolov7", weights)
    assert task.class_names() == {i: str(i) for i in range(10)}
    with pytest.raises(ClassMapError, match=r"match 0 of the 10 categories.*placeholders.*class_map: \{class index"):
        task.category_map(visdrone)
    mapped = _task("yolov7", weights, class_map={i: i + 1 for i in range(10)})
    assert mapped.evaluate(perfect_predictions(visdrone, VISDRONE_NAMES), visdrone)["map"] == pytest.approx(1.0)


# -- COCO: the map by name is val.py's table ------------------------------------------------------------------
def test_coco80_names_map_to_coco80_to_coco91(yolov5n_weights: Path, coco_mini: Path) -> None:
    """yolov5n.pt's 80 names equal coco-mini's category names exactly, so matching by name gives val.py's
    coco80_to_coco91 ids: results on COCO do not change."""
    import yolov5.utils.general as v5_general

    coco = CocoDataset(coco_mini)
    coco.name = "coco"
    task = _task("yolov5", yolov5n_weights)
    names = task.class_names()
    cats = {c["id"]: c["name"] for c in coco.categories()}
    table = list(v5_general.coco80_to_coco91_class())
    assert list(COCO80_TO_COCO91) == table
    assert [names[i] for i in range(80)] == [cats[table[i]] for i in range(80)]  # exact, no synonym needed
    assert task.category_map(coco) == dict(enumerate(table))
    assert _task("yolov5", yolov5n_weights, class_map="coco80_to_coco91").category_map(coco) == dict(enumerate(table))


# -- refused before any work ---------------------------------------------------------------------------------
def test_coco80_model_on_visdrone_is_refused_before_any_work(
    yolov5n_weights: Path, visdrone: VisDroneDataset, tmp_path: Path
) -> None:
    task = _task("yolov5", yolov5n_weights)
    with pytest.raises(CardError, match=r"^task yolov5 cannot score dataset vd: the model's classes match 4 of the 10 "
                                        r"categories of dataset visdrone \(at least 5 needed\).*Matched: 3 'bicycle', "
                                        r"4 'car', 6 'truck', 9 'bus'; unmatched categories: 1 'pedestrian'"):  # fmt: skip
        check_pairs({}, {"yolov5": task}, {"vd": SelectedDataset(visdrone, [], [])})
    out = tmp_path / "out"
    cfg = RunConfig(codecs=["jpeg"], tasks=["yolov5"], datasets=["visdrone"], qualities={"jpeg": [40]},
                    data_roots={"visdrone": str(visdrone.root)}, overrides={"yolov5": {"weights": str(yolov5n_weights)}},
                    out=str(out), progress=False)  # fmt: skip
    with pytest.raises(CardError, match="task yolov5 cannot score dataset visdrone: the model's classes match 4"):
        run(cfg)
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix not in (".db", ".lock")], "work was done"


def test_synth_detector_on_coco_is_refused_and_on_synth_maps_by_name(coco_mini: Path) -> None:
    """The Ultralytics adapter shares the contract (names from the checkpoint, no predictor built)."""
    from vcmbench.adapters import build

    cards = CardSet()
    det = build(cards.get("task", "synth_det"))
    synth = build(cards.get("dataset", "synth").with_settings(root="/nonexistent"))  # categories need no data
    assert det.category_map(synth) == {i: i + 1 for i in range(8)}
    assert det._model is None
    coco = build(cards.get("dataset", "coco").with_settings(root=str(coco_mini)))
    with pytest.raises(CardError, match=r"task synth_det cannot score dataset c: the model's classes match 1 of the "
                                        r"80 categories of dataset coco \(at least 40 needed\).*Matched: 38 'kite'"):  # fmt: skip
        check_pairs({}, {"synth_det": det}, {"c": SelectedDataset(coco, [], [])})


# -- the rules ------------------------------------------------------------------------------------------------
def test_names_compare_loosely_and_old_coco_spellings_are_read_as_coco() -> None:
    assert normalise_name("Awning-Tricycle") == normalise_name("awning tricycle") == "awningtricycle"
    assert normalise_name("pottedplant") == normalise_name("potted plant")
    assert [normalise_name(n) for n in ("motorbike", "aeroplane", "sofa", "tvmonitor")] == [
        "motorcycle", "airplane", "couch", "tv"]  # fmt: skip
    cats = [{"id": 4, "name": "motorcycle"}, {"id": 5, "name": "airplane"}]
    assert class_map({0: "aeroplane", 1: "motorbike", 2: "zebra"}, cats) == {0: 5, 1: 4}  # zebra: not scored


def test_coverage_rule_duplicates_and_settings() -> None:
    cats = [{"id": i, "name": n} for i, n in enumerate("abcd", start=1)]
    assert class_map({0: "a", 1: "b"}, cats) == {0: 1, 1: 2}  # half of the categories: enough
    with pytest.raises(ClassMapError, match=r"match 1 of the 4 categories of dataset d \(at least 2 needed\)"):
        class_map({0: "a", 1: "x"}, cats, who="task t", dataset="d")
    with pytest.raises(ClassMapError, match=r"classes 0 'a' and 1 'A' both match category 1 'a'"):
        class_map({0: "a", 1: "A", 2: "b"}, cats)
    with pytest.raises(ClassMapError, match=r"names class indices 7 that the model does not have"):
        class_map({0: "a", 1: "b"}, cats, {0: 1, 7: 2})
    with pytest.raises(ClassMapError, match="coco80_to_coco91 needs a COCO-80 model, this one has 2 classes"):
        class_map({0: "a", 1: "b"}, cats, "coco80_to_coco91")
    assert check_setting({"0": 3, 1: "4"}, "t") == {0: 3, 1: 4}
    for bad in ("coco91", {-1: 2}, {"a": 1}, {}, [1, 2]):
        with pytest.raises(ValueError, match="class_map must be auto"):
            check_setting(bad, "t")
    with pytest.raises(ValueError, match="^yolov5: class_map must be auto"):
        YOLOv5Task(class_map="coco91")
