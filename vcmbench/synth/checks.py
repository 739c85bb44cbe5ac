"""Format checks of generated (or any COCO-layout) ground truth: instances, panoptic, SFU-HW-style clips.

The panoptic checks are the ones the reference evaluator applies before scoring
(``panopticapi/evaluation.py``, Kirillov et al., CVPR 2019): every segment id found in a
PNG (id = R + 256 G + 256^2 B, 0 = void) is declared in ``segments_info`` and vice versa,
ids are unique, categories are known, and each declared ``area`` equals the pixel count;
``bbox`` is also checked against the pixels. Each function returns a list of problems
(empty when the files are valid), so a caller can show all of them at once.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .generate import rgb_to_id

__all__ = ["check_clips", "check_instances", "check_panoptic"]


def _bbox(mask: np.ndarray) -> list[int]:
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0]) + 1, int(rows[-1] - rows[0]) + 1]


def check_instances(root: Path, split: str) -> list[str]:
    """Load ``instances_<split>.json`` with pycocotools; check images exist with the declared size and
    each RLE mask decodes to the declared ``area`` and ``bbox``."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    problems: list[str] = []
    path = root / "annotations" / f"instances_{split}.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for img in coco.dataset["images"]:
        f = root / split / img["file_name"]
        if not f.is_file():
            problems.append(f"image {img['id']}: file {f} missing")
            continue
        with Image.open(f) as im:
            if im.size != (img["width"], img["height"]) or im.mode != "RGB":
                problems.append(f"image {img['id']}: {f} is {im.size} {im.mode}, declared {img['width']}x{img['height']}")
    for ann in coco.dataset["annotations"]:
        img = coco.imgs.get(ann["image_id"])
        if img is None:
            problems.append(f"annotation {ann['id']}: unknown image {ann['image_id']}")
            continue
        if ann["category_id"] not in coco.cats:
            problems.append(f"annotation {ann['id']}: unknown category {ann['category_id']}")
        m = coco.annToMask(ann)
        if m.shape != (img["height"], img["width"]):
            problems.append(f"annotation {ann['id']}: mask is {m.shape}")
            continue
        area = int(m.sum())
        if area != ann["area"] or area != int(mask_utils.area(ann["segmentation"])):
            problems.append(f"annotation {ann['id']}: area {ann['area']} but the mask has {area} pixels")
        if area and [float(v) for v in _bbox(m.astype(bool))] != [float(v) for v in ann["bbox"]]:
            problems.append(f"annotation {ann['id']}: bbox {ann['bbox']} but the mask spans {_bbox(m.astype(bool))}")
    return problems


def check_panoptic(root: Path, split: str, instances: bool = True) -> list[str]:
    """COCO panoptic format checks of ``panoptic_<split>.json`` + PNGs (see the module docstring).

    With ``instances``, every instance annotation that names a ``panoptic_segment_id`` must
    cover exactly that segment's pixels.
    """
    problems: list[str] = []
    data = json.loads((root / "annotations" / f"panoptic_{split}.json").read_text())
    png_dir = root / "annotations" / f"panoptic_{split}"
    cats = {c["id"]: c for c in data["categories"]}
    for key in ("id", "name", "isthing"):
        if any(key not in c for c in data["categories"]):
            problems.append(f"a category lacks {key!r}")
    images = {im["id"]: im for im in data["images"]}
    inst_by_image: dict[int, list[dict[str, Any]]] = {}
    if instances:
        from pycocotools import mask as mask_utils

        inst = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        for a in inst["annotations"]:
            inst_by_image.setdefault(a["image_id"], []).append(a)
    seen_images = set()
    for ann in data["annotations"]:
        image_id = ann["image_id"]
        seen_images.add(image_id)
        where = f"image {image_id} ({ann['file_name']})"
        if image_id not in images:
            problems.append(f"{where}: not in 'images'")
            continue
        png = png_dir / ann["file_name"]
        if not png.is_file():
            problems.append(f"{where}: PNG {png} missing")
            continue
        with Image.open(png) as im:
            if im.mode != "RGB":
                problems.append(f"{where}: PNG mode {im.mode}, expected RGB")
            ids = rgb_to_id(np.asarray(im.convert("RGB")))
        if ids.shape != (images[image_id]["height"], images[image_id]["width"]):
            problems.append(f"{where}: PNG is {ids.shape[::-1]}, image is declared "
                            f"{images[image_id]['width']}x{images[image_id]['height']}")  # fmt: skip
        labels, counts = np.unique(ids, return_counts=True)
        in_png = {int(lab): int(n) for lab, n in zip(labels, counts, strict=True) if lab != 0}
        declared: dict[int, dict[str, Any]] = {}
        for seg in ann["segments_info"]:
            if seg["id"] in declared:
                problems.append(f"{where}: segment id {seg['id']} declared twice")
            declared[seg["id"]] = seg
            if seg["category_id"] not in cats:
                problems.append(f"{where}: segment {seg['id']} has unknown category {seg['category_id']}")
            if seg["id"] not in in_png:
                problems.append(f"{where}: segment {seg['id']} declared but absent from the PNG")
                continue
            if seg["area"] != in_png[seg["id"]]:
                problems.append(f"{where}: segment {seg['id']} area {seg['area']} but {in_png[seg['id']]} pixels")
            if list(seg["bbox"]) != _bbox(ids == seg["id"]):
                problems.append(f"{where}: segment {seg['id']} bbox {seg['bbox']} but pixels span {_bbox(ids == seg['id'])}")
        for seg_id in sorted(set(in_png) - set(declared)):
            problems.append(f"{where}: PNG holds segment id {seg_id} ({in_png[seg_id]} pixels) not in segments_info")
        for a in inst_by_image.get(image_id, []):
            seg_id = a.get("panoptic_segment_id")
            if seg_id is None:
                continue
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            if seg_id not in declared or cats.get(declared[seg_id]["category_id"], {}).get("isthing") != 1:
                problems.append(f"{where}: instance {a['id']} names segment {seg_id}, not a thing segment")
            elif not np.array_equal(m, ids == seg_id):
                problems.append(f"{where}: instance {a['id']} mask differs from panoptic segment {seg_id}")
    for image_id in sorted(set(images) - seen_images):
        problems.append(f"image {image_id}: no panoptic annotation")
    return problems


def check_clips(root: Path, split: str) -> list[str]:
    """Clips of ``clips_<split>.json``: YUV file size = frames x W x H x 3/2 (8-bit 4:2:0), one label txt per
    frame in the SFU-HW-Objects-v1 naming, each line ``cls cx cy w h`` with a known class and a box inside
    the picture, matching the manifest."""
    problems: list[str] = []
    data = json.loads((root / "annotations" / f"clips_{split}.json").read_text())
    n_classes = len(data["categories"])
    if data["format"].get("bit_depth") != 8 or data["format"].get("chroma") != "420":
        problems.append(f"unexpected clip format {data['format']}")
    for clip in data["clips"]:
        name, w, h, n, fps = clip["name"], clip["width"], clip["height"], clip["frames"], clip["fps"]
        yuv = root / clip["file"]
        expected_name = f"{name}_{w}x{h}_{fps}Hz_8bit_P420.yuv"
        if yuv.name != expected_name:
            problems.append(f"clip {name}: file name {yuv.name}, expected {expected_name}")
        if not yuv.is_file():
            problems.append(f"clip {name}: {yuv} missing")
            continue
        size = yuv.stat().st_size
        if size != n * w * h * 3 // 2:
            problems.append(f"clip {name}: {yuv} has {size} bytes, {n} frames of {w}x{h} 4:2:0 need {n * w * h * 3 // 2}")
        ann_dir = root / clip["annotations"]
        txts = sorted(ann_dir.glob(f"{name}_{w}x{h}_{fps}_seq_*.txt"))
        if len(txts) != n:
            problems.append(f"clip {name}: {len(txts)} label files in {ann_dir}, expected {n}")
        for f in range(n):
            txt = ann_dir / f"{name}_{w}x{h}_{fps}_seq_{f:03d}.txt"
            if not txt.is_file():
                problems.append(f"clip {name}: {txt} missing")
                continue
            rows = [line.split() for line in txt.read_text().splitlines() if line.strip()]
            for r in rows:
                if len(r) != 5:
                    problems.append(f"{txt}: line {' '.join(r)!r} does not have 5 fields")
                    continue
                c, cx, cy, bw, bh = int(r[0]), *map(float, r[1:])
                if not 0 <= c < n_classes:
                    problems.append(f"{txt}: class {c} outside 0..{n_classes - 1}")
                if not (0 < bw <= 1 and 0 < bh <= 1 and bw / 2 - 1e-6 <= cx <= 1 - bw / 2 + 1e-6
                        and bh / 2 - 1e-6 <= cy <= 1 - bh / 2 + 1e-6):  # fmt: skip
                    problems.append(f"{txt}: box {r[1:]} not inside the picture")
            manifest = clip["labels"][f] if f < len(clip["labels"]) else []
            if [int(r[0]) for r in rows] != [int(m[0]) for m in manifest] or any(
                abs(float(a) - float(b)) > 1e-5 for r, m in zip(rows, manifest, strict=False) for a, b in zip(r[1:], m[1:5], strict=True)
            ):
                problems.append(f"{txt}: labels differ from clips_{split}.json")
    return problems
