"""The synth dataset generator: determinism, official formats (pycocotools, COCO panoptic, SFU-HW clips), cache.

Small configurations keep this file fast (a few seconds); the default card's val split is
generated once per session into the session's cache (as the runner does).
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.datasets.coco import CocoDataset
from vcmbench.datasets.synth import SynthDataset
from vcmbench.media.yuv import YUVFormat, bytes_to_planes, yuv420_to_rgb
from vcmbench.metrics.coco_map import coco_bbox_eval, coco_segm_eval
from vcmbench.synth import SynthConfig, ensure_split, tree_digest
from vcmbench.synth.checks import check_clips, check_instances, check_panoptic
from vcmbench.synth.generate import rgb_to_id
from vcmbench.synth.scene import THINGS

SMALL = dict(images={"train": 3, "val": 6}, clips={"train": 0, "val": 1}, clip_frames=16)


@pytest.fixture(scope="module")
def synth_val(tmp_path_factory: pytest.TempPathFactory) -> SynthDataset:
    """The built-in card's val split, generated into the session cache the runner tests also use."""
    cache = tmp_path_factory.getbasetemp() / "vcmbench-cache" / "synth"  # = $VCMBENCH_CACHE/synth (conftest)
    ds = build(CardSet().get("dataset", "synth").with_settings(root=str(cache)))
    ds.check()
    return ds


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[SynthConfig, Path]:
    cfg = SynthConfig(seed=7, **SMALL)
    cache = tmp_path_factory.mktemp("synth-small")
    root = ensure_split(cfg, "val", cache)
    ensure_split(cfg, "train", cache)
    return cfg, root


def test_same_seed_gives_byte_identical_files(small: tuple[SynthConfig, Path], tmp_path: Path) -> None:
    cfg, root = small
    again = ensure_split(SynthConfig(seed=7, **SMALL), "val", tmp_path / "other-cache")
    assert again != root and again.name == root.name  # same key, different cache
    assert tree_digest(again, "val") == tree_digest(root, "val")
    # the digest covers every file: images, panoptic PNGs, JSON, YUV, label txts
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert any(str(f).endswith(".yuv") for f in files) and any(str(f).endswith("_seq_015.txt") for f in files)
    for rel in files:
        if "train" in str(rel) or rel.name == "synth.json":
            continue
        assert (again / rel).read_bytes() == (root / rel).read_bytes(), rel
    # one worker or several: the same bytes
    serial = tmp_path / "serial"
    from vcmbench.synth.generate import generate_split

    generate_split(cfg, "val", serial, workers=1)
    assert tree_digest(serial, "val") == tree_digest(root, "val")


def test_different_seed_or_size_gives_different_data(small: tuple[SynthConfig, Path], tmp_path: Path) -> None:
    cfg, root = small
    other = ensure_split(SynthConfig(seed=8, **SMALL), "val", tmp_path)
    assert other.name != root.name
    assert tree_digest(other, "val") != tree_digest(root, "val")
    a = np.asarray(Image.open(root / "val" / "000000000001.png"))
    b = np.asarray(Image.open(other / "val" / "000000000001.png"))
    assert a.shape == b.shape and np.mean(a != b) > 0.5
    bigger = SynthConfig(seed=7, width=352, height=256, **SMALL)
    assert bigger.key() != cfg.key()
    assert ensure_split(bigger, "val", tmp_path).name == bigger.key()
    with Image.open(bigger.root(tmp_path) / "val" / "000000000001.png") as im:
        assert im.size == (352, 256)


def test_splits_differ_and_train_val_share_one_root(small: tuple[SynthConfig, Path]) -> None:
    cfg, root = small
    assert (root / "train").is_dir() and (root / "val").is_dir()
    train = json.loads((root / "annotations" / "instances_train.json").read_text())
    val = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert len(train["images"]) == 3 and len(val["images"]) == 6
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}
    a = np.asarray(Image.open(root / "train" / train["images"][0]["file_name"]))
    b = np.asarray(Image.open(root / "val" / val["images"][0]["file_name"]))
    assert not np.array_equal(a, b)


def test_pycocotools_loads_instances_and_masks_match_boxes(small: tuple[SynthConfig, Path]) -> None:
    _, root = small
    assert check_instances(root, "val") == []
    ds = CocoDataset(root, split="val", annotations="annotations/instances_val.json")
    ds.check()
    coco = ds.coco_gt()
    assert sorted(c["name"] for c in coco.cats.values()) == sorted(t.name for t in THINGS)
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) >= 6 * 3 * 0.8  # at least ~3 things per image survive placement
    assert all(isinstance(a["segmentation"]["counts"], str) for a in anns)  # compressed RLE
    # ground truth scored as detections is perfect, through the harness' own metric code
    img_ids = coco.getImgIds()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0} for a in anns]
    segs = [{"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": a["segmentation"],
             "score": 1.0} for a in anns]  # fmt: skip
    assert coco_bbox_eval(coco, dets, img_ids)["map"] == pytest.approx(1.0)
    assert coco_segm_eval(coco, segs, img_ids)["segm_map"] == pytest.approx(1.0)


def test_faces_carry_landmarks(small: tuple[SynthConfig, Path]) -> None:
    _, root = small
    data = json.loads((root / "annotations" / "instances_train.json").read_text())
    data_val = json.loads((root / "annotations" / "instances_val.json").read_text())
    face_cat = next(c for c in data["categories"] if c["name"] == "face")
    assert face_cat["keypoints"] == ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    faces = [a for a in data["annotations"] + data_val["annotations"] if a["category_id"] == face_cat["id"]]
    others = [a for a in data["annotations"] if a["category_id"] != face_cat["id"]]
    assert faces, "no face in the small splits"
    assert all(len(a["keypoints"]) == 15 and a["num_keypoints"] >= 1 for a in faces)
    assert not any("keypoints" in a for a in others)
    for a in faces:  # visible landmarks lie inside the face's box
        x, y, w, h = a["bbox"]
        for kx, ky, v in zip(a["keypoints"][0::3], a["keypoints"][1::3], a["keypoints"][2::3], strict=True):
            if v == 2:
                assert x - 1 <= kx <= x + w + 1 and y - 1 <= ky <= y + h + 1


def test_panoptic_format_checks_pass(small: tuple[SynthConfig, Path]) -> None:
    _, root = small
    assert check_panoptic(root, "val") == []
    data = json.loads((root / "annotations" / "panoptic_val.json").read_text())
    cats = {c["id"]: c for c in data["categories"]}
    assert {c["isthing"] for c in cats.values()} == {0, 1}
    for ann in data["annotations"]:
        ids = rgb_to_id(np.asarray(Image.open(root / "annotations" / "panoptic_val" / ann["file_name"])))
        assert 0 not in ids  # every pixel is labelled: stuff or thing
        assert sorted(np.unique(ids).tolist()) == sorted(s["id"] for s in ann["segments_info"])
        assert sum(s["area"] for s in ann["segments_info"]) == ids.size


def test_panoptic_checker_catches_broken_files(small: tuple[SynthConfig, Path], tmp_path: Path) -> None:
    _, root = small
    broken = tmp_path / "broken"
    shutil.copytree(root / "annotations", broken / "annotations")
    data = json.loads((broken / "annotations" / "panoptic_val.json").read_text())
    seg = data["annotations"][0]["segments_info"][0]
    seg["area"] += 1
    (broken / "annotations" / "panoptic_val.json").write_text(json.dumps(data))
    png = broken / "annotations" / "panoptic_val" / data["annotations"][1]["file_name"]
    rgb = np.asarray(Image.open(png)).copy()
    rgb[0, 0] = (1, 2, 3)  # an id no segment declares
    Image.fromarray(rgb).save(png)
    problems = check_panoptic(broken, "val")
    assert any(f"segment {seg['id']} area" in p for p in problems), problems
    assert any("not in segments_info" in p for p in problems), problems


def test_clips_yuv_sizes_and_labels_are_consistent(small: tuple[SynthConfig, Path]) -> None:
    cfg, root = small
    assert check_clips(root, "val") == []
    data = json.loads((root / "annotations" / "clips_val.json").read_text())
    (clip,) = data["clips"]
    w, h, n = clip["width"], clip["height"], clip["frames"]
    assert (w, h, n) == (cfg.width, cfg.height, 16)
    yuv = root / clip["file"]
    assert yuv.parent == root / "sfu_hw" / "val" / "ClassS"
    assert yuv.stat().st_size == n * w * h * 3 // 2
    ann_dir = root / clip["annotations"]
    assert (ann_dir / f"{clip['name']}_{w}x{h}_object.list").read_text().split() == [t.name for t in THINGS]
    # frame 0 decodes (8-bit BT.601 limited range) to a picture close to a fresh rendering of it
    from vcmbench.synth.generate import clip_frame, clip_setup

    bg, things = clip_setup(cfg, "val", 0)
    rendered, _ = clip_frame(cfg, "val", 0, bg, things, 0)
    fmt = YUVFormat(matrix="bt601", full_range=False, bit_depth=8)
    rgb = yuv420_to_rgb(*bytes_to_planes(yuv.read_bytes(), w, h, fmt, frame=0), w, h, fmt)
    assert np.abs(rgb.astype(int) - rendered.image.astype(int)).mean() < 6
    # things move: the labelled boxes of the first and the last frame differ
    first = (ann_dir / f"{clip['name']}_{w}x{h}_{clip['fps']}_seq_000.txt").read_text()
    last = (ann_dir / f"{clip['name']}_{w}x{h}_{clip['fps']}_seq_{n - 1:03d}.txt").read_text()
    assert first.strip() and last.strip() and first != last


def test_concurrent_generation_is_safe(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=3, images={"train": 0, "val": 4}, clips={"val": 0}, clip_frames=16)
    roots: list[Path] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            roots.append(ensure_split(cfg, "val", tmp_path))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(roots)) == 1
    root = roots[0]
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    assert check_instances(root, "val") == [] and check_panoptic(root, "val") == []
    # an interrupted generation (no completion marker) is rebuilt, not trusted
    (root / ".complete-val.json").unlink()
    (root / "val" / "000000000001.png").write_bytes(b"truncated")
    ensure_split(cfg, "val", tmp_path)
    assert check_instances(root, "val") == []


def test_dataset_card_generates_on_first_use(tmp_path: Path) -> None:
    card = CardSet().get("dataset", "synth").with_settings(root=str(tmp_path), images={"train": 0, "val": 5},
                                                           clips={"val": 0})  # fmt: skip
    ds = build(card)
    assert isinstance(ds, SynthDataset) and isinstance(ds, CocoDataset)
    assert not (ds.root / ".complete-val.json").exists()
    ds.check()
    items = ds.items()
    assert [it.id for it in items] == ["1", "2", "3", "4", "5"]
    img = ds.load_image(items[0])
    assert img.shape == (240, 320, 3) and img.dtype == np.uint8
    assert ds.root.parent == tmp_path and ds.root.name.startswith("v1-")
    # identity: the generator parameters matter, the cache location does not
    other = build(card.with_settings(root=str(tmp_path / "elsewhere")))
    assert other.identity() == ds.identity()
    assert build(card.with_settings(seed=1)).identity() != ds.identity()
    assert ds.panoptic_json.is_file() and ds.panoptic_dir.is_dir()


def test_default_val_split_is_valid(synth_val: SynthDataset) -> None:
    """The default card's val split (what `vcmbench run` uses): all format checks pass."""
    root, split = synth_val.root, synth_val.split
    assert len(synth_val.items()) == 64
    assert check_instances(root, split) == []
    assert check_panoptic(root, split) == []
    assert check_clips(root, split) == []
    coco = synth_val.coco_gt()
    per_class = {c: len(coco.getAnnIds(catIds=[c])) for c in coco.getCatIds()}
    assert all(n >= 20 for n in per_class.values()), per_class  # every class is well represented


def test_worker_with_another_cache_regenerates_the_same_image(tmp_path: Path) -> None:
    """A worker (e.g. a Ray node) whose cache lacks the driver's files generates the split itself."""
    from vcmbench.datasets.base import Item

    card = CardSet().get("dataset", "synth").with_settings(images={"train": 0, "val": 3}, clips={"val": 0})
    driver = build(card.with_settings(root=str(tmp_path / "driver")))
    driver.check()
    item = driver.items()[2]
    worker = build(card.with_settings(root=str(tmp_path / "worker")))
    moved = Item(item.id, tmp_path / "gone" / item.path.name)
    assert np.array_equal(worker.load_image(moved), driver.load_image(item))
    assert (tmp_path / "worker" / driver.root.name / "val" / item.path.name).is_file()
