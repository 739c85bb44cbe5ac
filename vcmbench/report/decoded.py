"""Decoded views of chosen items: each codec's reconstruction at each rate point, with the task's predictions.

Nothing decoded is kept by a run; :func:`decoded_views` decodes the run's stored bitstreams again
(``Store.get_blob`` -> :class:`~vcmbench.codecs.base.Bitstream` -> the codec built from the run's card,
as the run's inference stage does) and pairs each picture with the predictions the run stored for it,
its bits, bpp and PSNR. The uncompressed point shows the dataset's own pixels. Clips show their first
frame and its predictions.

:func:`draw_view` makes a thumbnail with the predicted boxes and class labels drawn; the HTML report
(:mod:`vcmbench.report.html`) inlines those, and ``vcmbench decode --ids`` writes them as PNG files
(:func:`save_views`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters import build
from ..cards import Card
from ..codecs.base import Bitstream
from ..errors import VcmbenchError
from ..media.clip import Clip, psnr
from ..plan import REFERENCE
from ..store import EncodeRecord, Store

__all__ = ["Box", "DecodedView", "boxes_of", "decoded_views", "draw_view", "run_cards", "save_views", "view_file"]

#: items shown when none are chosen
DEFAULT_ITEMS = 3


@dataclass(frozen=True)
class Box:
    """One predicted box in pixels of the full picture; ``label`` is the class index or category id."""

    x1: float
    y1: float
    x2: float
    y2: float
    score: float
    label: int | None = None


@dataclass(frozen=True)
class DecodedView:
    """One item at one RD point of one task: the picture the task saw and what it predicted on it."""

    dataset: str
    task: str
    codec: str
    quality: str
    item_id: str
    #: H x W x 3 uint8 RGB (a clip's first frame); None when it could not be decoded (see ``error``)
    image: np.ndarray | None
    boxes: tuple[Box, ...] = ()
    #: class index / category id -> name, for the labels
    names: Mapping[int, str] = field(default_factory=dict)
    nbytes: int | None = None
    bpp: float | None = None
    psnr: float | None = None
    #: why there is no picture or no prediction (empty when there is both)
    error: str = ""

    @property
    def point(self) -> str:
        return f"{self.codec}@{self.quality}" if self.quality else self.codec


# ---- the run's cards and units -------------------------------------------------------------------
def run_cards(config: Mapping[str, Any]) -> dict[str, Card]:
    """The cards a run used (with its overrides), rebuilt from its stored configuration."""
    kinds = {n: k for k, key in (("codec", "codecs"), ("task", "tasks"), ("dataset", "datasets"))
             for n in config.get(key) or []}  # fmt: skip
    out = {}
    for name, c in (config.get("cards") or {}).items():
        out[name] = Card(kind=kinds.get(name, ""), name=name, adapter=c["adapter"], version=str(c["version"]),
                         settings=dict(c["settings"]), path=Path(c["path"]) if c.get("path") else None)  # fmt: skip
    return out


def _run_config(store: Store, run_id: str) -> dict[str, Any]:
    info = store.run_info(run_id)
    if info is None:
        raise VcmbenchError(f"{store.root}: no run {run_id!r} in {store.db_path}; `vcmbench report` lists the latest")
    return json.loads(info["config"] or "{}")


def _choose_items(units: Sequence[Any], preds: Mapping[str, Any], wanted: Sequence[str] | None,
                  limit: int) -> dict[str, list[str]]:  # fmt: skip
    """Item ids to show per dataset: ``wanted`` (those the dataset has), else the first ``limit``."""
    per_ds: dict[str, list[str]] = {}
    for u in units:
        ids = per_ds.setdefault(str(u["dataset"]), [])
        for k in json.loads(u["pred_keys"] or "[]"):
            p = preds.get(k)
            if p is not None and p["item_id"] not in ids:
                ids.append(str(p["item_id"]))
    if wanted:
        chosen = {ds: [i for i in wanted if i in ids] for ds, ids in per_ds.items()}
        if not any(chosen.values()):
            known = ", ".join(f"{ds}: {', '.join(ids[:5])}..." for ds, ids in per_ds.items())
            raise VcmbenchError(f"none of the items {', '.join(wanted)} is in the run; its items are ({known})")
        return chosen
    return {ds: ids[:limit] for ds, ids in per_ds.items()}


# ---- pictures ------------------------------------------------------------------------------------
def first_frame(pixels: Any) -> np.ndarray:
    """An image as it is, a clip's first frame."""
    return np.asarray(pixels.read(0, 1)[0] if isinstance(pixels, Clip) else pixels)


class _Pictures:
    """Originals (from the dataset adapters) and reconstructions (decoded once per bitstream)."""

    def __init__(self, store: Store, cards: Mapping[str, Card]) -> None:
        self.store, self.cards = store, cards
        self.adapters: dict[str, Any] = {}
        self.originals: dict[tuple[str, str], Any] = {}
        self.decoded: dict[str, Any] = {}

    def adapter(self, name: str) -> Any:
        if name not in self.adapters:
            if name not in self.cards:
                raise VcmbenchError(f"the run's configuration has no card {name!r}; was it written by an older vcmbench?")
            self.adapters[name] = build(self.cards[name])
        return self.adapters[name]

    def original(self, dataset: str, item_id: str) -> Any:
        key = (dataset, item_id)
        if key not in self.originals:
            ds = self.adapter(dataset)
            (item,) = ds.items(ids=[item_id])
            self.originals[key] = ds.load_image(item)
        return self.originals[key]

    def reconstruction(self, codec: str, rec: EncodeRecord) -> Any:
        if rec.key not in self.decoded:
            if rec.status != "done" or rec.blob is None:
                raise VcmbenchError(f"no bitstream: {rec.error or 'the encode did not finish'}")
            data = self.store.get_blob(rec.blob)
            bs = Bitstream(data, rec.width or 0, rec.height or 0, rec.frames or 1, rec.meta)
            self.decoded[rec.key] = self.adapter(codec).decode(bs)
        return self.decoded[rec.key]


# ---- predictions ---------------------------------------------------------------------------------
def _row_box(row: Sequence[Any]) -> Box:
    x1, y1, x2, y2, score = (float(v) for v in row[:5])
    return Box(x1, y1, x2, y2, score, int(row[5]) if len(row) > 5 else None)


def _dict_box(d: Mapping[str, Any]) -> Box:
    x, y, w, h = (float(v) for v in d["bbox"])
    label = d.get("label", d.get("category_id"))
    return Box(x, y, x + w, y + h, float(d.get("score", 1.0)), None if label is None else int(label))


def boxes_of(pred: Any) -> tuple[Box, ...]:
    """The boxes of one image's stored prediction, for the formats the tasks write: rows
    ``[x1, y1, x2, y2, score, class]`` (YOLO detectors; faces without the class), ``{"boxes": rows, ...}``
    (instance segmentation) and ``[{"bbox": [x, y, w, h], "score", "label"}, ...]`` (Mask R-CNN). Other
    predictions (panoptic PNGs) have none."""
    if isinstance(pred, Mapping):
        pred = pred.get("boxes", [])
    if not isinstance(pred, list):
        return ()
    boxes = []
    for row in pred:
        if isinstance(row, Mapping) and "bbox" in row:
            boxes.append(_dict_box(row))
        elif isinstance(row, list) and len(row) >= 5 and all(isinstance(v, int | float) for v in row[:5]):
            boxes.append(_row_box(row))
    return tuple(boxes)


def _frame_prediction(pred: Any, clip: bool) -> Any:
    """A clip's prediction is the list of its frames' predictions: the first frame's."""
    return pred[0] if clip and isinstance(pred, list) and pred else pred


def class_names(task: Any, dataset: Any) -> dict[int, str]:
    """Class index -> name of a detector (its checkpoint's), else category id -> name of the dataset."""
    for source, method in ((task, "class_names"), (dataset, "categories")):
        fn = getattr(source, method, None)
        if fn is None:
            continue
        try:
            got = fn()
        except Exception:  # noqa: BLE001 - names are a nicety: unlabelled boxes rather than no page
            continue
        if isinstance(got, Mapping):
            return {int(k): str(v) for k, v in got.items()}
        return {int(c["id"]): str(c["name"]) for c in got}
    return {}


# ---- the views -----------------------------------------------------------------------------------
def decoded_views(
    out_root: str | Path,
    run_id: str,
    item_ids: Sequence[str] | None = None,
    *,
    limit: int = DEFAULT_ITEMS,
) -> list[DecodedView]:
    """Every RD point of every task of run ``run_id`` (in the output folder ``out_root``) for the chosen
    items (``item_ids``; default: the first ``limit`` of each dataset), decoded from the stored bitstreams.

    A point whose bitstream or prediction is missing (failed item, deleted cache entry) is a view with
    ``image`` None or no boxes and the reason in ``error``; the others are unaffected."""
    store = Store(out_root)
    try:
        cfg = _run_config(store, run_id)
        units = store.run_evaluations(run_id)
        preds = store.predictions(k for u in units for k in json.loads(u["pred_keys"] or "[]"))
        chosen = _choose_items(units, preds, item_ids, limit)
        pictures = _Pictures(store, run_cards(cfg))
        encodes = store.encode_records(p["encode_key"] for p in preds.values() if p["encode_key"])
        views = []
        for u in units:
            ids = chosen.get(str(u["dataset"]), [])
            by_item = {p["item_id"]: p for k in json.loads(u["pred_keys"] or "[]") if (p := preds.get(k)) is not None}
            names = _names(pictures, str(u["task"]), str(u["dataset"]))
            for item_id in ids:
                views.append(_view(pictures, u, item_id, by_item.get(item_id), encodes, names))
        return views
    finally:
        store.close()


def _names(pictures: _Pictures, task: str, dataset: str) -> dict[int, str]:
    try:
        return class_names(pictures.adapter(task), pictures.adapter(dataset))
    except VcmbenchError:
        return {}


def _view(pictures: _Pictures, unit: Any, item_id: str, pred: Any, encodes: Mapping[str, EncodeRecord],
          names: Mapping[int, str]) -> DecodedView:  # fmt: skip
    ds, codec = str(unit["dataset"]), str(unit["codec"])
    base = DecodedView(ds, str(unit["task"]), codec, "" if unit["quality"] is None else str(unit["quality"]),
                       item_id, None, names=names)  # fmt: skip
    if pred is None:
        return _replace(base, error="no prediction stored for this item")
    try:
        original = pictures.original(ds, item_id)
        clip = isinstance(original, Clip)
        if codec == REFERENCE:
            return _with_prediction(_replace(base, image=first_frame(original)), pred, clip)
        rec = encodes.get(pred["encode_key"])
        if rec is None:
            return _replace(base, error="no encode record for this item")
        image = pictures.reconstruction(codec, rec)
        bpp = 8.0 * rec.nbytes / (rec.width * rec.height * (rec.frames or 1)) if rec.nbytes and rec.width and rec.height else None
        quality = rec.psnr if rec.psnr is not None else _psnr(original, image)
        view = _replace(base, image=first_frame(image), nbytes=rec.nbytes, bpp=bpp, psnr=quality)
        return _with_prediction(view, pred, clip)
    except (VcmbenchError, OSError, ValueError) as exc:
        return _replace(base, error=f"cannot decode: {exc}")


def _psnr(original: Any, image: Any) -> float | None:
    try:
        value = psnr(original, image)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _with_prediction(view: DecodedView, pred: Any, clip: bool) -> DecodedView:
    if pred["status"] != "done":
        return _replace(view, error=f"prediction failed: {pred['error']}")
    return _replace(view, boxes=boxes_of(_frame_prediction(json.loads(pred["preds"] or "null"), clip)))


def _replace(view: DecodedView, **kw: Any) -> DecodedView:
    return replace(view, **kw)


# ---- drawing -------------------------------------------------------------------------------------
#: box colours by class (tab10)
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def draw_view(view: DecodedView, max_side: int = 320, min_score: float = 0.25) -> np.ndarray:
    """The view's picture scaled to at most ``max_side`` pixels, with its boxes of score >= ``min_score``
    drawn and labelled (class name and score)."""
    from PIL import Image, ImageDraw

    if view.image is None:
        raise VcmbenchError(f"{view.point} item {view.item_id} has no picture: {view.error}")
    im = Image.fromarray(view.image)
    scale = min(1.0, max_side / max(im.size))
    if scale < 1.0:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(im)
    for b in (b for b in view.boxes if b.score >= min_score):
        colour = PALETTE[(b.label or 0) % len(PALETTE)]
        xy = [b.x1 * scale, b.y1 * scale, b.x2 * scale, b.y2 * scale]
        draw.rectangle(xy, outline=colour, width=2)
        name = view.names.get(b.label, str(b.label)) if b.label is not None else ""
        text = f"{name} {b.score:.2f}".strip()
        left, top, right, bottom = draw.textbbox((xy[0], xy[1]), text)
        y = max(0.0, xy[1] - (bottom - top) - 2)
        draw.rectangle([xy[0], y, xy[0] + (right - left) + 2, y + (bottom - top) + 2], fill=colour)
        draw.text((xy[0] + 1, y), text, fill="white")
    return np.asarray(im)


def view_file(view: DecodedView) -> Path:
    """Where :func:`save_views` puts a view, relative to its folder: ``<dataset>/<item>/<task>/<codec>@<q>.png``."""
    safe = [str(s).replace("/", "_").replace(" ", "_") for s in (view.dataset, view.item_id, view.task, view.point)]
    return Path(*safe[:3]) / f"{safe[3]}.png"


def save_views(views: Sequence[DecodedView], out_dir: Path, draw: bool = False, min_score: float = 0.25) -> list[Path]:
    """Each view's picture as a full-size PNG in ``out_dir`` (with its boxes drawn when ``draw``); views without
    a picture are skipped (their reason is in ``view.error``). Returns the files written."""
    from PIL import Image

    written = []
    for view in views:
        if view.image is None:
            continue
        pixels = draw_view(view, max_side=max(view.image.shape[:2]), min_score=min_score) if draw else view.image
        path = out_dir / view_file(view)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
        written.append(path)
    return written
