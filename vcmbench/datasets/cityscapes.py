"""Cityscapes (fine annotations) in its official layout, with panoptic ground truth made by cityscapesscripts.

Cordts et al., "The Cityscapes Dataset for Semantic Urban Scene Understanding", CVPR 2016.
Layout::

    <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png   (+ _labelIds.png, _polygons.json)

Item ids are ``<city>_<seq>_<frame>``, the ``image_id`` of Cityscapes' panoptic format.
On first use the panoptic ground truth is made with cityscapesscripts'
``createPanopticImgs.convert2panoptic`` (label ids, not train ids: 19 categories, things
have instances; ``ignoreInEval`` labels are void) into a cache folder keyed by the
annotation files and the cityscapesscripts version, and reused afterwards. PQ on this
dataset is computed by cityscapesscripts' own evaluator
(:func:`vcmbench.metrics.panoptic.cityscapes_pq`); instance-level AP reads the instanceIds maps
(:meth:`CityscapesDataset.instance_ids_file`, scored by :mod:`vcmbench.metrics.cityscapes_instances`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import DatasetLayoutError
from ..media.paths import cache_root
from ..registry import register
from .base import Dataset, Item

__all__ = ["CityscapesDataset"]

LAYOUT = """  <root>/
    leftImg8bit/{split}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_instanceIds.png
    gtFine/{split}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""

IMAGE_SUFFIX = "_leftImg8bit.png"
GT_SUFFIXES = ("_gtFine_instanceIds.png", "_gtFine_labelIds.png")


@register("dataset", "cityscapes")
class CityscapesDataset(Dataset):
    """Cityscapes leftImg8bit + gtFine; panoptic GT (cityscapesscripts) cached on first use."""

    location_settings = ("root", "cache")

    def __init__(self, root: str | Path | None = None, split: str = "val", cache: str | Path | None = None) -> None:
        self._root = Path(root).expanduser() if root else None
        self.split = split
        self.cache = Path(cache).expanduser() if cache else None
        self._items: list[Item] | None = None
        self._by_id: dict[str, Item] | None = None
        self._panoptic: Any = None

    @property
    def root(self) -> Path:
        if self._root is None:
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given; pass --data-root or set `root:` in its card")
        return self._root

    @property
    def image_dir(self) -> Path:
        return self.root / "leftImg8bit" / self.split

    @property
    def gt_dir(self) -> Path:
        return self.root / "gtFine" / self.split

    def check(self) -> None:
        fix = (
            "pass --data-root (or VCMBENCH_CITYSCAPES_ROOT, or `root:` in datasets/cityscapes.yaml) pointing at the "
            "folder holding leftImg8bit/ and gtFine/ (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip "
            "from cityscapes-dataset.com)"
        )
        if self._root is None:
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given. Fix: {fix}")
        expected = LAYOUT.format(split=self.split)
        missing = [p for p in (self.root, self.image_dir, self.gt_dir) if not p.exists()]
        if missing:
            raise self.missing_error(self.name, self.root, missing, expected, fix)
        images = sorted(self.image_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not images:
            raise self.missing_error(self.name, self.root, [self.image_dir / "<city>" / f"*{IMAGE_SUFFIX}"], expected, fix)
        items, absent = [], []
        for p in images:
            stem = p.name[: -len(IMAGE_SUFFIX)]
            city = p.parent.name
            gts = [self.gt_dir / city / f"{stem}{s}" for s in GT_SUFFIXES]
            absent += [g for g in gts if not g.is_file()]
            items.append(Item(id=stem, path=p, meta={"city": city, "instance_ids": gts[0], "label_ids": gts[1]}))
        if absent:
            shown = absent[:10] + ([Path(f"... and {len(absent) - 10} more")] if len(absent) > 10 else [])
            raise self.missing_error(self.name, self.root, shown, expected,
                                     "every image needs its gtFine annotations; unzip gtFine_trainvaltest.zip into the root")  # fmt: skip
        self._items = items
        self._by_id = None

    def all_items(self) -> list[Item]:
        if self._items is None:
            self.check()
        assert self._items is not None
        return list(self._items)

    def panoptic_image_id(self, item_id: str) -> str:
        return item_id

    def instance_ids_file(self, item_id: str) -> Path:
        """The item's ``gtFine/<split>/<city>/<id>_gtFine_instanceIds.png`` (instance-level AP ground truth)."""
        if self._by_id is None:
            self._by_id = {it.id: it for it in self.all_items()}
        item = self._by_id.get(item_id)
        if item is None:
            raise KeyError(f"dataset {self.name}: no item {item_id!r} in {self.image_dir}")
        return Path(item.meta["instance_ids"])

    def categories(self) -> list[dict[str, Any]]:
        """The 19 evaluated classes, by Cityscapes label id (those of the panoptic ground truth: cityscapesscripts'
        labels not ``ignoreInEval``)."""
        from cityscapesscripts.helpers.labels import labels

        return [{"id": int(lb.id), "name": str(lb.name)} for lb in labels if not lb.ignoreInEval]

    # ---- panoptic ground truth ------------------------------------------------------------------
    def _cache_root(self) -> Path:
        if self.cache is not None:
            return self.cache
        return cache_root() / "cityscapes"

    def panoptic_key(self) -> str:
        """Hash of the split's instanceIds files (name, size, mtime) and the cityscapesscripts version."""
        from importlib.metadata import version

        h = hashlib.sha256(f"cityscapesscripts {version('cityscapesScripts')} split {self.split}".encode())
        for it in self.all_items():
            st = Path(it.meta["instance_ids"]).stat()
            h.update(f"{it.meta['city']}/{it.id} {st.st_size} {st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def panoptic_folder(self) -> Path:
        return self._cache_root() / f"{self.split}-{self.panoptic_key()}"

    def panoptic_gt(self) -> Any:
        """The panoptic ground truth (:class:`~vcmbench.metrics.panoptic.PanopticGroundTruth`), made once."""
        if self._panoptic is None:
            from ..metrics.panoptic import PanopticGroundTruth

            folder = self.ensure_panoptic()
            name = f"cityscapes_panoptic_{self.split}"
            self._panoptic = PanopticGroundTruth(folder / f"{name}.json", folder / name, evaluator="cityscapes")
        return self._panoptic

    def ensure_panoptic(self) -> Path:
        """Run ``createPanopticImgs.convert2panoptic`` into the cache unless its output is there already."""
        folder = self.panoptic_folder()
        done = folder / ".complete"
        if done.is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(folder.parent / f".{folder.name}.lock"):
            if done.is_file():
                return folder
            from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    convert2panoptic(cityscapesPath=str(self.root / "gtFine"), outputFolder=str(tmp),
                                     useTrainId=False, setNames=[self.split])  # fmt: skip
                name = f"cityscapes_panoptic_{self.split}"
                if not (tmp / f"{name}.json").is_file():
                    raise DatasetLayoutError(f"dataset {self.name}: createPanopticImgs wrote no {name}.json")
                if folder.exists():
                    shutil.rmtree(folder)
                os.replace(tmp, folder)
                (folder / ".complete").write_text(json.dumps({"root": str(self.root), "split": self.split}))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return folder


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
