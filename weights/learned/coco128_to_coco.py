"""Turn Ultralytics' ``coco128-seg`` (YOLO polygon labels) into COCO's official layout.

The shipped learned-codec checkpoints are trained on these 128 COCO **train2017** images, which share no
image with val2017 (hence none with coco-mini). ``coco128-seg`` is Ultralytics' redistribution of the
first 128 train2017 images with their instance polygons in YOLO format (one line per object:
``class x1 y1 x2 y2 ...``, class = index in COCO's 80-class list, coordinates normalised to [0, 1]).

    python weights/learned/coco128_to_coco.py SRC DST

writes ``DST/train2017/*.jpg`` (the images, unchanged) and ``DST/annotations/instances_train2017.json``
(polygons in pixels, boxes and areas computed with pycocotools, category ids mapped 80 -> 91 with
Ultralytics' table), so that ``vcmbench masks --dataset coco --split train2017`` reads it as it would
read COCO itself.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import yaml
from PIL import Image


def categories() -> list[dict[str, object]]:
    import ultralytics
    from ultralytics.data.converter import coco80_to_coco91_class

    names = yaml.safe_load((Path(ultralytics.__file__).parent / "cfg/datasets/coco.yaml").read_text())["names"]
    ids = coco80_to_coco91_class()
    return [{"id": ids[i], "name": names[i], "supercategory": ""} for i in range(80)]


def objects(label_file: Path, width: int, height: int, cat_ids: list[int]) -> list[dict[str, object]]:
    from pycocotools import mask as mask_utils

    out = []
    for line in label_file.read_text().splitlines() if label_file.exists() else []:
        parts = line.split()
        if len(parts) < 7:
            continue
        xy = [float(v) for v in parts[1:]]
        poly = [round(v * (width if i % 2 == 0 else height), 2) for i, v in enumerate(xy)]
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
        out.append({"segmentation": [poly], "area": float(mask_utils.area(rle)), "bbox": [x, y, w, h],
                    "iscrowd": 0, "category_id": cat_ids[int(parts[0])]})  # fmt: skip
    return out


def convert(src: Path, dst: Path) -> dict[str, object]:
    cats = categories()
    cat_ids = [int(c["id"]) for c in cats]  # type: ignore[call-overload]
    images, annotations = [], []
    (dst / "train2017").mkdir(parents=True, exist_ok=True)
    for path in sorted((src / "images" / "train2017").glob("*.jpg")):
        shutil.copyfile(path, dst / "train2017" / path.name)
        with Image.open(path) as im:
            width, height = im.size
        image_id = int(path.stem)
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        for obj in objects(src / "labels" / "train2017" / f"{path.stem}.txt", width, height, cat_ids):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **obj})
    data = {"info": {"description": "COCO train2017, first 128 images (Ultralytics coco128-seg), polygons"},
            "licenses": [], "images": images, "annotations": annotations, "categories": cats}  # fmt: skip
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    (dst / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return data


if __name__ == "__main__":
    result = convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{len(result['images'])} images, {len(result['annotations'])} objects")  # type: ignore[arg-type]
