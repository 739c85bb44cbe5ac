"""``vcmbench inspect``: what a learned-codec checkpoint, or every rate point of a codec card, was trained on.

A checkpoint's entry holds its training record (:mod:`vcmbench.codecs.training_record`): the objective,
λ, the steps, the training folder and the sorted sha256 of every training image (``train_images_sha256``;
null, with ``training_set: unknown``, for foreign weights). A card's entry lists its rate points, each
resolved as the codec resolves it (the card's path, ``$VCMBENCH_WEIGHTS_DIR``, the cache) but never
downloaded: a checkpoint not on this machine is said to be absent. ``overlap`` folders are compared by
file sha256 with each recorded training set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..cards import Card, CardError, CardSet, load_card
from ..errors import VcmbenchError

__all__ = ["describe_card", "describe_checkpoint", "inspect_target"]

CARD_SUFFIXES = (".yaml", ".yml")


def inspect_target(target: str, cards_dirs: Sequence[str] = (), overlap: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON-able description of ``target``: a checkpoint file, a codec card file, or a codec card name."""
    folders = {d: _folder_hashes(d) for d in overlap}
    path = Path(target).expanduser()
    if path.is_file() and path.suffix.lower() not in CARD_SUFFIXES:
        return describe_checkpoint(path, folders)
    if path.is_file():
        card = load_card(path, "codec")
    elif path.suffix.lower() in CARD_SUFFIXES or os.sep in target:
        raise VcmbenchError(f"inspect: {path} not found; give a checkpoint file, a codec card file or a codec "
                            "card name (see `vcmbench ls codecs`)")  # fmt: skip
    else:
        card = CardSet([Path(d) for d in cards_dirs]).get("codec", target)
    return describe_card(card, folders)


def describe_checkpoint(path: Path, overlap: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """A checkpoint file's training record (see the module docstring)."""
    from ..codecs.training_record import read_record
    from ..media.hashing import file_sha256

    rec = read_record(path)
    meta = rec.meta
    images = rec.training_images
    out: dict[str, Any] = {
        "checkpoint": str(path), "sha256": file_sha256(path), "format": rec.format, "arch": rec.arch,
        "arch_kwargs": rec.arch_kwargs or None, "objective": meta.get("loss"), "lambda": meta.get("lambda"),
        "lambda2": meta.get("lambda2"), "steps": meta.get("steps"), "train_dir": meta.get("train_dir"),
        "train_images": len(images) if images is not None else meta.get("train_images"),
        "masks": meta.get("masks"), "init": meta.get("init"), "tl_objective": meta.get("tl_objective"),
        "alpha": ((meta.get("masks_params") or {}).get("params") or {}).get("alpha"),
        "training_set": "recorded" if images is not None else "unknown",
        "train_images_sha256": sorted(images) if images is not None else None,
    }  # fmt: skip
    if overlap:
        out["overlap"] = {d: _overlap(images, hashes) for d, hashes in overlap.items()}
    return out


def describe_card(card: Card, overlap: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Every rate point of a learned codec's card with its checkpoint's training record (nothing downloaded)."""
    from ..adapters import build
    from ..codecs.learned import LearnedCodec

    codec = build(card)
    if not isinstance(codec, LearnedCodec):
        raise CardError(f"inspect: codec {card.name} ({card.path}, adapter {card.adapter}) has no trained "
                        "checkpoints; inspect reads learned codecs (lic, objicm, saicm, tlicm) and checkpoint files")  # fmt: skip
    points = [_rate_point(codec, key, overlap) for key in codec.keys]
    return {"codec": card.name, "card": str(card.path), "adapter": card.adapter, "arch": codec.arch,
            "arch_kwargs": codec.arch_kwargs, "rate_points": points}  # fmt: skip


def _rate_point(codec: Any, key: int | float, overlap: dict[str, dict[str, str]] | None) -> dict[str, Any]:
    from ..media.hashing import file_sha256

    p = codec.points[key]
    entry: dict[str, Any] = {"quality": key, "card_lambda": p.lmbda, "card_sha256": p.sha256}
    if p.random_seed is not None:
        return {**entry, "present": True, "checkpoint": None, "training_set": "none (random weights)",
                "objective": None, "lambda": None, "steps": 0, "train_images_sha256": []}  # fmt: skip
    path = codec.local_checkpoint(key)
    if path is None:
        where = p.checkpoint or p.url
        how = f"; a run downloads it from {p.url}" if p.url else ""
        return {**entry, "present": False, "checkpoint": where, "url": p.url,
                "note": f"checkpoint not on this machine (inspect downloads nothing){how}",
                "objective": None, "lambda": None, "steps": None, "train_images_sha256": None}  # fmt: skip
    entry.update(present=True, **describe_checkpoint(path, overlap))
    if p.sha256 and file_sha256(path) != p.sha256.lower():
        entry["note"] = f"sha256 differs from the card's {p.sha256}: a run refuses this file"
    return entry


def _folder_hashes(folder: str) -> dict[str, str]:
    """path -> sha256 of every image file under ``folder`` (recursive)."""
    from ..media.hashing import file_sha256
    from .lic import IMAGE_SUFFIXES

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise VcmbenchError(f"inspect --overlap: {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise VcmbenchError(f"inspect --overlap: {root} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return {str(p): file_sha256(p) for p in files}


def _overlap(images: frozenset[str] | None, folder: dict[str, str]) -> dict[str, Any]:
    shared = None if images is None else [path for path, sha in folder.items() if sha in images]
    return {"images": len(folder), "in_training_set": None if shared is None else len(shared),
            "files": shared[:20] if shared else []}  # fmt: skip
