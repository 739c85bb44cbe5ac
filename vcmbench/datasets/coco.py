"""COCO 2017 in its official layout: ``<root>/val2017/*.jpg`` + ``<root>/annotations/instances_val2017.json``.

Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

from ..errors import DatasetLayoutError
from ..registry import register
from .base import Dataset, Item

LAYOUT = """  <root>/
    {split}/                      000000000139.jpg, ...
    {annotations}"""


@register("dataset", "coco")
class CocoDataset(Dataset):
    def __init__(
        self,
        root: str | Path,
        split: str = "val2017",
        annotations: str = "annotations/instances_val2017.json",
    ) -> None:
        self.root = Path(root) if root else Path("")
        self.split = split
        self.annotations = annotations
        self._coco: Any = None
        self._panoptic: Any = None
        self._items: list[Item] | None = None

    @property
    def image_dir(self) -> Path:
        return self.root / self.split

    @property
    def annotation_file(self) -> Path:
        return self.root / self.annotations

    def check(self) -> None:
        expected = LAYOUT.format(split=self.split, annotations=self.annotations)
        fix = (
            "pass --data-root pointing at your COCO copy (or set VCMBENCH_COCO_ROOT, or `root:` in "
            "datasets/coco.yaml); the annotation file comes from annotations_trainval2017.zip on cocodataset.org"
        )
        if not str(self.root):
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given. Fix: {fix}")
        missing = [p for p in (self.root, self.image_dir, self.annotation_file) if not p.exists()]
        if missing:
            raise self.missing_error(self.name, self.root, missing, expected, fix)
        try:
            with open(self.annotation_file) as f:
                head = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetLayoutError(
                f"dataset {self.name}: annotation file {self.annotation_file} is not valid JSON ({exc}); "
                "download it again"
            ) from None
        for key in ("images", "annotations", "categories"):
            if key not in head:
                raise DatasetLayoutError(
                    f"dataset {self.name}: {self.annotation_file} has no {key!r} list; it is not a COCO "
                    "instances file"
                )
        self._index(head)

    def _index(self, data: dict[str, Any]) -> None:
        items = []
        missing = []
        for img in data["images"]:
            path = self.image_dir / img["file_name"]
            if not path.exists():
                missing.append(path)
            items.append(
                Item(
                    id=str(img["id"]),
                    path=path,
                    meta={"image_id": int(img["id"]), "width": img.get("width"), "height": img.get("height")},
                )
            )
        if missing:
            shown = missing[:10] + ([Path(f"... and {len(missing) - 10} more")] if len(missing) > 10 else [])
            raise self.missing_error(
                self.name,
                self.root,
                shown,
                LAYOUT.format(split=self.split, annotations=self.annotations),
                f"every image listed in {self.annotation_file} must be in {self.image_dir}; "
                "copy them, or point --data-root at a complete copy",
            )
        items.sort(key=lambda it: (len(it.id), it.id))
        self._items = items

    def all_items(self) -> list[Item]:
        if self._items is None:
            self.check()
        assert self._items is not None
        return list(self._items)

    def coco_gt(self) -> Any:
        """The ground truth as a pycocotools ``COCO`` object (loaded once)."""
        if self._coco is None:
            from pycocotools.coco import COCO

            with contextlib.redirect_stdout(io.StringIO()):
                self._coco = COCO(str(self.annotation_file))
        return self._coco

    def image_id(self, item_id: str) -> int:
        return int(item_id)

    def categories(self) -> list[dict[str, Any]]:
        """The annotation file's categories (``id``, ``name``, ``supercategory``), sorted by id."""
        return [dict(c) for _, c in sorted(self.coco_gt().cats.items())]

    # ---- panoptic ground truth, where the dataset has it ---------------------------------------------
    @property
    def panoptic_json(self) -> Path:
        """COCO's convention: ``annotations/instances_X.json`` -> ``annotations/panoptic_X.json``."""
        ann = self.annotation_file
        stem = ann.name[len("instances_") :] if ann.name.startswith("instances_") else ann.name
        return ann.with_name("panoptic_" + stem)

    @property
    def panoptic_dir(self) -> Path:
        """The folder of panoptic PNGs beside :attr:`panoptic_json` (``annotations/panoptic_X/``)."""
        return self.panoptic_json.with_suffix("")

    def panoptic_gt(self) -> Any:
        """The COCO-panoptic ground truth (:class:`~vcmbench.metrics.panoptic.PanopticGroundTruth`), loaded once."""
        if self._panoptic is None:
            from ..metrics.panoptic import PanopticGroundTruth

            json_file, folder = self.panoptic_json, self.panoptic_dir
            if not json_file.is_file() or not folder.is_dir():
                raise DatasetLayoutError(
                    f"dataset {self.name} has no panoptic ground truth (looked for {json_file} and {folder}); "
                    "panoptic_deeplab needs COCO panoptic annotations (a JSON and a folder of PNGs)"
                )
            self._panoptic = PanopticGroundTruth(json_file, folder)
        return self._panoptic

    def panoptic_image_id(self, item_id: str) -> int:
        return self.image_id(item_id)
