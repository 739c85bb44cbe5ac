"""Cityscapes instance-level AP: ours against cityscapesscripts' evalInstanceLevelSemanticLabeling on the same files.

The fixtures are written in the official layout (gtFine/val/<city>/*_gtFine_instanceIds.png, and a results folder
of prediction txt files listing ``<mask png> <label id> <confidence>``), generated from a seed: several images and
classes, predictions that overlap their object more or less (shifted, grown, shrunk, cut in half, duplicated,
of the wrong class), groups of objects (crowd regions), objects under the 100-pixel minimum, void and caravan
regions, classes absent from some images, a class never in the ground truth and one never predicted, empty
masks and non-instance labels. The official evaluator runs in-process with its args pointing into tmp_path.
"""

from __future__ import annotations

import copy
import glob
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vcmbench.metrics.cityscapes_instances import (
    OVERLAPS,
    ImageRegions,
    InstancePrediction,
    evaluate,
    image_regions,
    image_regions_from_segments,
    instance_classes,
    read_instance_ids,
    read_predictions,
)

# label ids (cityscapesscripts.helpers.labels)
UNLABELED, STATIC, DYNAMIC, ROAD, BUILDING, SKY = 0, 4, 5, 7, 11, 23
PERSON, RIDER, CAR, TRUCK, BUS, CARAVAN, TRAIN, MOTORCYCLE, BICYCLE = 24, 25, 26, 27, 28, 29, 31, 32, 33
IN_GT = (PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE)  # train (31) never in the ground truth
PREDICTED = (PERSON, RIDER, CAR, TRUCK, TRAIN, MOTORCYCLE, BICYCLE)  # bus (28) never predicted
H, W = 120, 200
CITIES = ("aachen", "bonn")


# ---- fixture generation ----------------------------------------------------------------------------
def _rect(rng: np.random.Generator, hmin: int, hmax: int, wmin: int, wmax: int) -> tuple[slice, slice]:
    h, w = int(rng.integers(hmin, hmax + 1)), int(rng.integers(wmin, wmax + 1))
    y, x = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
    return slice(y, y + h), slice(x, x + w)


def _ellipse(rng: np.random.Generator) -> np.ndarray:
    cy, cx = rng.uniform(15, H - 15), rng.uniform(15, W - 15)
    ry, rx = rng.uniform(6, 22), rng.uniform(6, 28)
    yy, xx = np.mgrid[:H, :W]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def instance_map(rng: np.random.Generator) -> np.ndarray:
    """Stuff background, void patches, a caravan object and group, objects (drawn in turn, later ones occlude
    earlier ones) of a random subset of classes, a group of objects and a tiny object."""
    ids = np.full((H, W), ROAD, np.int32)
    ids[: H // 3] = SKY
    ids[H // 3 : H // 2, : int(rng.integers(60, 160))] = BUILDING
    for void in (UNLABELED, STATIC, DYNAMIC):
        ids[_rect(rng, 8, 24, 8, 30)] = void
    ids[_rect(rng, 10, 20, 14, 30)] = CARAVAN * 1000 + 1  # a caravan object: not void in the evaluator
    ids[_rect(rng, 6, 12, 8, 16)] = CARAVAN  # a caravan group: void
    classes = rng.choice(IN_GT, size=int(rng.integers(3, 6)), replace=False)
    for c in classes:
        for k in range(int(rng.integers(1, 4))):
            region = _ellipse(rng) if rng.random() < 0.4 else _rect(rng, 10, 40, 10, 50)
            ids[region] = int(c) * 1000 + k
    ids[_rect(rng, 12, 24, 16, 36)] = int(rng.choice(IN_GT))  # a group of objects (crowd region)
    ids[_rect(rng, 6, 9, 6, 10)] = int(rng.choice(IN_GT))  # a group under the minimum size (counts twice)
    tiny = int(rng.choice(IN_GT))
    ids[_rect(rng, 5, 8, 5, 9)] = tiny * 1000 + 50  # below the 100-pixel minimum
    return ids


def _grow(mask: np.ndarray, k: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(k):
        out = out | np.roll(out, 1, 0) | np.roll(out, -1, 0) | np.roll(out, 1, 1) | np.roll(out, -1, 1)
    return out


def _shrink(mask: np.ndarray, k: int) -> np.ndarray:
    return ~_grow(~mask, k)


def _first(mask: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` pixels of a mask in raster order."""
    flat = mask.ravel()
    keep = np.zeros_like(flat)
    keep[np.flatnonzero(flat)[:n]] = True
    return keep.reshape(mask.shape)


def perturbed(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The region moved, grown, shrunk or cut: IoUs from about 0.3 to 1 with the original."""
    kind = rng.integers(0, 5)
    if kind == 0:
        return mask
    if kind == 1:
        return np.roll(mask, (int(rng.integers(-5, 6)), int(rng.integers(-5, 6))), axis=(0, 1))
    if kind == 2:
        return _grow(mask, int(rng.integers(1, 4)))
    if kind == 3:
        return _shrink(mask, int(rng.integers(1, 3)))
    ys, xs = np.nonzero(mask)
    cut = mask.copy()
    cut[:, : int(rng.integers(xs.min(), xs.max() + 1))] = False  # a partial prediction
    return cut


def _score(rng: np.random.Generator) -> float:
    return float(rng.choice([0.5, 0.75, 0.9])) if rng.random() < 0.25 else round(float(rng.uniform(0.05, 1.0)), 4)


def predictions(rng: np.random.Generator, ids: np.ndarray, first: bool) -> list[tuple[np.ndarray, int, float]]:
    """(mask, label id, confidence) for most regions of the evaluated classes (groups and tiny ones too), some
    duplicated or of the wrong class, plus false positives, one mostly on void, and entries the evaluator
    skips (an empty mask, a stuff label, the caravan label). The first image also holds one plain false
    positive of every predicted class, so every ranking the official script builds is non-empty."""
    out: list[tuple[np.ndarray, int, float]] = []
    for v in np.unique(ids).tolist():
        label = v // 1000 if v >= 1000 else v
        if label not in IN_GT or rng.random() < 0.2:
            continue
        region = ids == v
        cls = label if label in PREDICTED else int(rng.choice(PREDICTED))
        if rng.random() < 0.1:
            cls = int(rng.choice(PREDICTED))  # wrong class
        out.append((perturbed(rng, region), cls, _score(rng)))
        if rng.random() < 0.3:
            out.append((perturbed(rng, region), cls, _score(rng)))  # a duplicate
    for _ in range(int(rng.integers(1, 4))):
        m = np.zeros((H, W), bool)
        m[_rect(rng, 8, 30, 8, 30)] = True
        out.append((m, int(rng.choice(PREDICTED)), _score(rng)))
    void = np.isin(ids, [UNLABELED, STATIC, DYNAMIC])
    out.append((_grow(void, 1), int(rng.choice(PREDICTED)), _score(rng)))
    out.append((_first(void, 40) | _first(ids == SKY, 40), int(rng.choice(PREDICTED)), _score(rng)))  # half on void
    sizes = dict(zip(*np.unique(ids, return_counts=True), strict=True))
    objects = [int(v) for v, n in sizes.items() if v // 1000 in PREDICTED and n >= 100 and n % 2 == 0]
    if objects:  # half of an object: IoU exactly 0.5
        v = objects[int(rng.integers(len(objects)))]
        out.append((_first(ids == v, int(sizes[v]) // 2), v // 1000, _score(rng)))
    out.append((np.zeros((H, W), bool), CAR, 0.99))
    out.append((ids == ROAD, ROAD, 0.8))
    out.append((ids == CARAVAN * 1000 + 1, CARAVAN, 0.7))
    if first:
        for c in PREDICTED:
            m = np.zeros((H, W), bool)
            m[_rect(rng, 10, 14, 10, 14)] = True
            out.append((m, c, _score(rng)))
    rng.shuffle(out)  # type: ignore[arg-type]
    return out


def write_fixture(root: Path, seed: int) -> list[tuple[Path, Path]]:
    """gtFine instanceIds (16-bit) of 2 images per city, and results/<city>/<stem>_pred.txt with mask PNGs
    (8-bit, any non-zero value inside). Returns (gt file, prediction file) pairs."""
    rng = np.random.default_rng(seed)
    pairs = []
    for c, city in enumerate(CITIES):
        gt_dir, res_dir = root / "gtFine" / "val" / city, root / "results" / city
        (res_dir / "masks").mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        for k in range(2):
            stem = f"{city}_{c:06d}_{k:06d}"
            ids = instance_map(rng)
            gt_file = gt_dir / f"{stem}_gtFine_instanceIds.png"
            Image.fromarray(ids.astype(np.uint16)).save(gt_file)
            lines = []
            for j, (mask, label, score) in enumerate(predictions(rng, ids, first=not pairs)):
                value = np.where(mask, rng.integers(1, 256, mask.shape), 0).astype(np.uint8)
                Image.fromarray(value).save(res_dir / "masks" / f"{stem}_{j:03d}.png")
                lines.append(f"masks/{stem}_{j:03d}.png {label} {score}")
            pred_file = res_dir / f"{stem}_pred.txt"
            pred_file.write_text("\n".join(lines) + "\n")
            pairs.append((gt_file, pred_file))
    return pairs


# ---- the official evaluator ------------------------------------------------------------------------
def official(root: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """cityscapesscripts' evaluator on the fixture: its own prediction lookup and evaluateImgLists, with every
    file it reads or writes (ground-truth cache, matches.json, result JSON) inside ``work``."""
    from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as ev

    args = ev.CArgs()
    for k, v in vars(ev.args).items():
        setattr(args, k, copy.deepcopy(v))
    args.cityscapesPath = str(root)
    args.groundTruthSearch = str(root / "gtFine" / "val" / "*" / "*_gtFine_instanceIds.png")
    args.gtInstancesFile = str(work / "gtInstances.json")
    args.exportFile = str(work / "evaluationResults" / "resultInstanceLevelSemanticLabeling.json")
    args.predictionPath, args.predictionWalk = None, None
    args.quiet, args.colorized, args.JSONOutput = True, False, True
    monkeypatch.setenv("CITYSCAPES_DATASET", str(root))  # predictions are looked up in $CITYSCAPES_DATASET/results
    monkeypatch.delenv("CITYSCAPES_RESULTS", raising=False)
    monkeypatch.chdir(work)  # it writes matches.json into the working folder
    gts = sorted(glob.glob(args.groundTruthSearch))
    preds = [ev.getPrediction(g, args) for g in gts]
    result = ev.evaluateImgLists(preds, gts, args)
    assert Path(args.exportFile).is_file()
    return result


def ours(pairs: list[tuple[Path, Path]]) -> Any:
    return evaluate(image_regions(read_instance_ids(g), read_predictions(p), name=g.name) for g, p in pairs)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-6


@pytest.mark.parametrize("seed", [1, 7, 2024])
def test_equal_to_cityscapesscripts(seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, work = tmp_path / "cityscapes", tmp_path / "work"
    work.mkdir()
    pairs = write_fixture(root, seed)
    ref = official(root, work, monkeypatch)
    mine = ours(pairs)
    names = list(mine.classes.values())
    assert names == ref["instLabels"] == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    table = np.asarray(ref["resultApMatrix"][0], dtype=float)  # class x threshold
    assert table.shape == mine.table.shape == (8, len(OVERLAPS))
    np.testing.assert_allclose(mine.table, table, rtol=0, atol=1e-6, equal_nan=True)
    avg = ref["averages"]
    assert _same(mine.ap, avg["allAp"]) and _same(mine.ap50, avg["allAp50%"]), (mine.ap, mine.ap50, avg)
    m = mine.metrics()
    assert _same(m["ap"], avg["allAp"]) and _same(m["ap50"], avg["allAp50%"])
    for name in names:
        assert _same(m[f"ap_{name}"], avg["classes"][name]["ap"]), name
        assert _same(m[f"ap50_{name}"], avg["classes"][name]["ap50%"]), name
    # the fixture exercises what it claims: a class without ground truth (NaN), one never predicted (0), and
    # non-trivial APs in between
    assert math.isnan(m["ap_train"]) and m["ap_bus"] == 0.0
    assert 0.05 < m["ap"] < 0.95 and m["ap"] < m["ap50"]
    assert len({round(v, 6) for v in table[~np.isnan(table)]}) > 10


def test_groups_small_objects_and_void_are_ignored_as_the_evaluator_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hand-made image: a matched car, a car predicted on a car group, one on a 64-pixel car, one on void,
    one on the caravan object (a false positive: caravan objects are not void) -- each case's effect checked
    against the official evaluator and against the expected value."""
    root, work = tmp_path / "cs", tmp_path / "work"
    (root / "gtFine/val/aachen").mkdir(parents=True)
    (root / "results/aachen/masks").mkdir(parents=True)
    work.mkdir()
    ids = np.full((H, W), ROAD, np.int32)
    ids[10:30, 10:40] = CAR * 1000  # 600 px
    ids[40:60, 10:40] = CAR  # group
    ids[70:78, 10:18] = CAR * 1000 + 1  # 64 px: too small
    ids[90:110, 10:40] = UNLABELED
    ids[10:30, 100:130] = CARAVAN * 1000 + 1
    ids[40:60, 100:130] = PERSON * 1000  # never matched: a miss
    gt_file = root / "gtFine/val/aachen/aachen_000000_000000_gtFine_instanceIds.png"
    Image.fromarray(ids.astype(np.uint16)).save(gt_file)
    masks = {"hit": (ids == CAR * 1000, CAR, 0.9), "group": (ids == CAR, CAR, 0.95),
             "small": (ids == CAR * 1000 + 1, CAR, 0.8), "void": (ids == UNLABELED, CAR, 0.85),
             "caravan": (ids == CARAVAN * 1000 + 1, CAR, 0.7), "person": (np.roll(ids == PERSON * 1000, 15, 1), PERSON, 0.6)}  # fmt: skip
    lines = []
    for name, (m, label, score) in masks.items():
        Image.fromarray(m.astype(np.uint8) * 255).save(root / f"results/aachen/masks/{name}.png")
        lines.append(f"masks/{name}.png {label} {score}")
    pred_file = root / "results/aachen/aachen_000000_000000_pred.txt"
    pred_file.write_text("\n".join(lines) + "\n")
    ref = official(root, work, monkeypatch)
    m = ours([(gt_file, pred_file)]).metrics()
    # car: ranking 0.9 hit, 0.7 false positive (group, small, void ignored); precision 1 at recall 1
    assert m["ap_car"] == pytest.approx(1.0) and _same(m["ap_car"], ref["averages"]["classes"]["car"]["ap"])
    # person: the shifted box has IoU 1/3 with its object: a false positive and a miss
    assert m["ap_person"] == 0.0 and _same(m["ap_person"], ref["averages"]["classes"]["person"]["ap"])
    assert _same(m["ap"], ref["averages"]["allAp"]) and m["ap"] == pytest.approx(0.5)


def test_segment_map_path_equals_mask_path() -> None:
    """Non-overlapping predictions given as a segment id map (the panoptic task's path) count as the same
    masks given one by one."""
    rng = np.random.default_rng(3)
    images_a: list[ImageRegions] = []
    images_b: list[ImageRegions] = []
    for _ in range(3):
        ids = instance_map(rng)
        seg = np.zeros((H, W), np.int64)
        segments = []
        for j, (mask, label, score) in enumerate(predictions(rng, ids, first=True), start=1):
            seg[mask] = j  # later ones cover earlier ones: what is left of each is its mask
            segments.append((j, label, score))
        preds = [InstancePrediction(seg == j, label, score) for j, label, score in segments]
        images_a.append(image_regions(ids, preds))
        images_b.append(image_regions_from_segments(ids, seg, segments))
    a, b = evaluate(images_a), evaluate(images_b)
    assert images_a == images_b
    np.testing.assert_array_equal(a.table, b.table)
    assert 0 < a.ap < 1


def test_classes_are_the_eight_with_instances() -> None:
    assert instance_classes() == {24: "person", 25: "rider", 26: "car", 27: "truck", 28: "bus", 31: "train",
                                  32: "motorcycle", 33: "bicycle"}  # fmt: skip


def test_bad_prediction_file_is_named(tmp_path: Path) -> None:
    f = tmp_path / "x_pred.txt"
    f.write_text("masks/a.png 26\n")
    with pytest.raises(ValueError, match=r"x_pred.txt:1: expected '<mask png> <label id> <confidence>'"):
        read_predictions(f)


# ---- the Cityscapes run path -----------------------------------------------------------------------
def test_cityscapes_run_reports_instance_ap(tmp_path: Path) -> None:
    """``vcmbench run``'s path (RunConfig -> runner -> store rows) with the panoptic_deeplab card on a Cityscapes
    fixture: every unit reports ``ap``, ``ap50`` and the per-class values next to PQ, equal to the task's own
    evaluate on the same predictions; PQ stays the headline. The model is a light random-weight Panoptic-DeepLab
    with Cityscapes' 19 classes (things 11..18), so the numbers say nothing about accuracy."""
    import dataclasses

    import pandas as pd
    import torch

    from tests.test_cityscapes import write_cityscapes
    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.datasets.cityscapes import CityscapesDataset
    from vcmbench.models.panoptic_deeplab import PanopticDeepLab
    from vcmbench.run import RunConfig, run
    from vcmbench.tasks.panoptic_deeplab import save_vcmbench_panoptic
    from vcmbench.train.synth_tasks import LIGHT_PANOPTIC

    write_cityscapes(tmp_path / "cs", n_per_city=1)
    torch.manual_seed(0)
    weights = tmp_path / "cityscapes_light.pt"
    model = PanopticDeepLab(dataclasses.replace(LIGHT_PANOPTIC, num_classes=19)).eval()
    save_vcmbench_panoptic(weights, model, list(range(11, 19)), {"note": "random weights"})
    settings = {"weights": str(weights), "format": "vcmbench", "device": "cpu", "min_size": None}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run(RunConfig(codecs=["jpeg"], tasks=["panoptic_deeplab"], datasets=["cityscapes"],
                               qualities={"jpeg": [50]}, data_roots={"cityscapes": str(tmp_path / "cs")},
                               overrides={"panoptic_deeplab": settings}, out=str(tmp_path / "out"),
                               progress=False))  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert report.ok, report.failures
    df = pd.DataFrame(report.rows)
    names = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    wanted = {"ap", "ap50", *(f"ap_{c}" for c in names), *(f"ap50_{c}" for c in names)}
    for codec in ("uncompressed", "jpeg"):
        rows = df[df.codec == codec].set_index("metric")
        assert wanted | {"pq", "pq_th", "pq_st"} <= set(rows.index), (codec, sorted(rows.index))
        assert not rows.loc[sorted(wanted)].headline.astype(bool).any()
        assert rows.loc["pq"].headline
        assert math.isnan(rows.loc["ap_train"].value)  # no train in the ground truth
        assert 0 <= rows.loc["ap_car"].value <= 1 and 0 <= rows.loc["ap"].value <= 1
    # the uncompressed row is the task's evaluate of the same images' predictions
    ds = CityscapesDataset(tmp_path / "cs", cache=tmp_path / "cache")
    task = build(CardSet().get("task", "panoptic_deeplab").with_settings(**settings))
    items = ds.items()
    preds = {it.id: p for it, p in zip(items, task.predict([ds.load_image(it) for it in items]), strict=True)}
    direct = task.evaluate(preds, ds)
    ref = df[df.codec == "uncompressed"].set_index("metric").value
    for m in sorted(wanted):
        assert _same(float(ref[m]), direct[m]), (m, ref[m], direct[m])


def test_panoptic_task_evaluate_equals_cityscapesscripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The panoptic_deeplab task's evaluate on a Cityscapes fixture (model classes = train ids, mapped to label
    ids; thing segments of a panoptic PNG with scores) gives the AP that cityscapesscripts' evaluator gives when
    the same thing segments are written as its mask files."""
    from tests.test_cityscapes import write_cityscapes
    from vcmbench.adapters import build
    from vcmbench.cards import CardSet
    from vcmbench.datasets.cityscapes import CityscapesDataset
    from vcmbench.metrics.panoptic import encode_id_png

    root, work = tmp_path / "cs", tmp_path / "work"
    write_cityscapes(root)
    work.mkdir()
    ds = CityscapesDataset(root, cache=tmp_path / "cache")
    task = build(CardSet().get("task", "panoptic_deeplab").with_settings(weights=str(tmp_path / "unused.pkl")))
    train_id = {c["id"]: i for i, c in enumerate(ds.panoptic_gt().categories)}
    rng = np.random.default_rng(5)
    preds = {}
    for it in ds.items():
        gt = read_instance_ids(ds.instance_ids_file(it.id))
        seg = np.where(gt == ROAD, 1, 0)
        segments = [{"id": 1, "class": train_id[ROAD], "isthing": 0}]
        for k, v in enumerate(v for v in np.unique(gt).tolist() if v >= 1000 or v == PERSON):  # objects + the group
            mask = np.roll(gt == v, (int(rng.integers(-3, 4)), int(rng.integers(-6, 7))), axis=(0, 1))
            seg[mask] = k + 2
            label = v // 1000 if v >= 1000 else v
            segments.append({"id": k + 2, "class": train_id[label], "isthing": 1, "score": round(float(rng.uniform(0.1, 1)), 3)})
        segments = [s for s in segments if (seg == s["id"]).any()]
        preds[it.id] = {"png": encode_id_png(seg), "segments_info": segments}
        city = it.meta["city"]
        (root / "results" / city).mkdir(parents=True, exist_ok=True)
        lines = []
        for s in segments:
            if s["isthing"]:
                Image.fromarray((seg == s["id"]).astype(np.uint8) * 255).save(root / "results" / city / f"{it.id}_{s['id']}.png")
                lines.append(f"{it.id}_{s['id']}.png {ds.panoptic_gt().categories[s['class']]['id']} {s['score']}")
        (root / "results" / city / f"{it.id}_pred.txt").write_text("\n".join(lines) + "\n")
    m = task.evaluate(preds, ds)
    ref = official(root, work, monkeypatch)["averages"]
    assert _same(m["ap"], ref["allAp"]) and _same(m["ap50"], ref["allAp50%"]), (m, ref)
    for name in ("person", "car", "train"):
        assert _same(m[f"ap_{name}"], ref["classes"][name]["ap"]) and _same(m[f"ap50_{name}"], ref["classes"][name]["ap50%"])
    assert 0 < m["ap"] < m["ap50"] <= 1 and math.isnan(m["ap_train"])


def test_cityscapes_meets_the_instance_id_contract(tmp_path: Path) -> None:
    from tests.test_cityscapes import write_cityscapes
    from vcmbench.contracts import CocoInstances, InstanceIdMaps
    from vcmbench.datasets.cityscapes import CityscapesDataset

    write_cityscapes(tmp_path / "cs", n_per_city=1)
    ds = CityscapesDataset(tmp_path / "cs")
    assert isinstance(ds, InstanceIdMaps) and not isinstance(ds, CocoInstances)
    f = ds.instance_ids_file("bonn_000001_000000")
    assert f == tmp_path / "cs/gtFine/val/bonn/bonn_000001_000000_gtFine_instanceIds.png" and f.is_file()
    with pytest.raises(KeyError, match="no item 'bonn_9'"):
        ds.instance_ids_file("bonn_9")
