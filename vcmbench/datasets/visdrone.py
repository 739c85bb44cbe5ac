"""VisDrone2019-DET in its official layout, scored as COCO box mAP.

Zhu et al., "Detection and Tracking Meet Drones Challenge", IEEE TPAMI 2021
(VisDrone2019-DET: 6471 train / 548 val / 1610 test-dev images). Layout::

    <root>/VisDrone2019-DET-val/images/0000001_02999_d_0000005.jpg, ...
    <root>/VisDrone2019-DET-val/annotations/0000001_02999_d_0000005.txt, ...

One annotation line per box: ``x,y,w,h,score,category,truncation,occlusion`` (pixels,
top-left corner). In ground truth ``score`` is 1 when the box is evaluated and 0 when it
is ignored. Categories: 0 ignored region, 1 pedestrian, 2 people, 3 bicycle, 4 car,
5 van, 6 truck, 7 tricycle, 8 awning-tricycle, 9 bus, 10 motor, 11 others.

The COCO ground truth is built in memory: the 10 classes 1..10 keep their ids; an
ignored region (category 0, or any box with score 0) becomes a crowd annotation
(``iscrowd: 1``) of *every* class, so that detections inside it are ignored whatever
their class (pycocotools matches crowd regions per category, by the fraction of the
detection inside them); "others" (11) is left out. Image ids are 1..N in file-name order.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DatasetLayoutError
from ..registry import register
from .base import Dataset, Item

__all__ = ["CATEGORIES", "VisDroneDataset", "parse_annotation_file"]

#: the 10 evaluated classes (VisDrone ids)
CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "pedestrian"), (2, "people"), (3, "bicycle"), (4, "car"), (5, "van"),
    (6, "truck"), (7, "tricycle"), (8, "awning-tricycle"), (9, "bus"), (10, "motor"),
)  # fmt: skip
IGNORED, OTHERS = 0, 11

LAYOUT = """  <root>/
    {split}/
      images/       0000001_02999_d_0000005.jpg, ...
      annotations/  0000001_02999_d_0000005.txt, ...  (x,y,w,h,score,category,truncation,occlusion)"""


def parse_annotation_file(path: Path) -> list[tuple[float, float, float, float, int, int, int, int]]:
    """Rows ``(x, y, w, h, score, category, truncation, occlusion)``; a malformed line is a layout error."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip().rstrip(",")
        if not text:
            continue
        parts = [p.strip() for p in text.split(",")]
        try:
            if len(parts) < 8:
                raise ValueError(f"{len(parts)} fields")
            x, y, w, h = (float(v) for v in parts[:4])
            score, cat, trunc, occ = (int(float(v)) for v in parts[4:8])
        except ValueError as exc:
            raise DatasetLayoutError(
                f"{path}:{n}: expected 'x,y,w,h,score,category,truncation,occlusion', got {line!r} ({exc})"
            ) from None
        if not 0 <= cat <= 11:
            raise DatasetLayoutError(f"{path}:{n}: category {cat} outside 0..11")
        rows.append((x, y, w, h, score, cat, trunc, occ))
    return rows


@register("dataset", "visdrone")
class VisDroneDataset(Dataset):
    """VisDrone2019-DET (a split folder with ``images/`` and ``annotations/``); COCO-format GT in memory."""

    def __init__(self, root: str | Path | None = None, split: str = "VisDrone2019-DET-val") -> None:
        self._root = Path(root).expanduser() if root else None
        self.split = split
        self._items: list[Item] | None = None
        self._coco: Any = None
        self._ids: dict[str, int] = {}

    @property
    def root(self) -> Path:
        if self._root is None:
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given; pass --data-root or set `root:` in its card")
        return self._root

    @property
    def image_dir(self) -> Path:
        return self.root / self.split / "images"

    @property
    def annotation_dir(self) -> Path:
        return self.root / self.split / "annotations"

    def check(self) -> None:
        fix = (
            "pass --data-root (or VCMBENCH_VISDRONE_ROOT, or `root:` in datasets/visdrone.yaml) pointing at the "
            "folder that holds the unzipped VisDrone2019-DET-val.zip from https://github.com/VisDrone/VisDrone-Dataset"
        )
        if self._root is None:
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given. Fix: {fix}")
        expected = LAYOUT.format(split=self.split)
        missing = [p for p in (self.root, self.root / self.split, self.image_dir, self.annotation_dir) if not p.exists()]
        if missing:
            raise self.missing_error(self.name, self.root, missing, expected, fix)
        images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise self.missing_error(self.name, self.root, [self.image_dir / "*.jpg"], expected, fix)
        no_ann = [self.annotation_dir / f"{p.stem}.txt" for p in images if not (self.annotation_dir / f"{p.stem}.txt").is_file()]
        if no_ann:
            shown = no_ann[:10] + ([Path(f"... and {len(no_ann) - 10} more")] if len(no_ann) > 10 else [])
            raise self.missing_error(self.name, self.root, shown, expected,
                                     "every image needs its annotation file of the same name; re-extract the archive")  # fmt: skip
        self._items = [
            Item(id=p.stem, path=p, meta={"image_id": i, "annotations": self.annotation_dir / f"{p.stem}.txt"})
            for i, p in enumerate(images, start=1)
        ]
        self._ids = {it.id: int(it.meta["image_id"]) for it in self._items}

    def all_items(self) -> list[Item]:
        if self._items is None:
            self.check()
        assert self._items is not None
        return list(self._items)

    def image_id(self, item_id: str) -> int:
        if not self._ids:
            self.check()
        return self._ids[item_id]

    def categories(self) -> list[dict[str, Any]]:
        """The 10 evaluated classes, VisDrone's ids 1..10 (the :class:`~vcmbench.contracts.Categories` contract)."""
        return [{"id": cid, "name": name} for cid, name in CATEGORIES]

    def coco_dict(self) -> dict[str, Any]:
        """The ground truth as a COCO instances dict (see the module docstring for the mapping)."""
        images, anns = [], []
        for it in self.all_items():
            with Image.open(it.path) as im:
                w, h = im.size
            image_id = int(it.meta["image_id"])
            images.append({"id": image_id, "file_name": it.path.name, "width": w, "height": h})
            for x, y, bw, bh, score, cat, trunc, occ in parse_annotation_file(it.meta["annotations"]):
                if bw <= 0 or bh <= 0 or cat == OTHERS:
                    continue
                box = [x, y, bw, bh]
                if cat == IGNORED or score == 0:
                    for cid, _ in CATEGORIES:
                        anns.append({"image_id": image_id, "category_id": cid, "bbox": box, "area": bw * bh,
                                     "iscrowd": 1, "ignore": 1})  # fmt: skip
                    continue
                anns.append({"image_id": image_id, "category_id": cat, "bbox": box, "area": bw * bh, "iscrowd": 0,
                             "truncation": trunc, "occlusion": occ})  # fmt: skip
        for i, a in enumerate(anns, start=1):
            a["id"] = i
        cats = [dict(c, supercategory="visdrone") for c in self.categories()]
        return {"images": images, "annotations": anns, "categories": cats}

    def coco_gt(self) -> Any:
        """A pycocotools ``COCO`` object (built once)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            coco = COCO()
            coco.dataset = self.coco_dict()
            with contextlib.redirect_stdout(io.StringIO()):
                coco.createIndex()
            self._coco = coco
        return self._coco
