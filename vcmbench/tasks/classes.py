"""Class maps: which dataset category each class of a detector scores as, matched by name and checked.

A detector states its classes (``class index -> name``, from its checkpoint); a dataset states its
categories (:class:`~vcmbench.contracts.Categories`: ``[{"id", "name"}, ...]``). :func:`class_map` pairs
them, by name unless the task's card sets ``class_map``:

- ``auto`` (default): by name, compared case-insensitively with spaces, hyphens and underscores removed
  (``awning-tricycle`` = ``awning tricycle``; ``pottedplant`` = ``potted plant``), and with the old
  darknet spellings of four COCO classes (``motorbike``, ``aeroplane``, ``sofa``, ``tvmonitor``) read as
  COCO's. On COCO this gives the same ids as ``coco80_to_coco91``;
- an explicit mapping ``{class index: category id}`` for models whose names say nothing (placeholders such as
  ``"0"``, ``"1"``, ...) or differ from the dataset's;
- ``coco80_to_coco91`` (the COCO-80 -> COCO-91 table of YOLO's ``val.py``) and ``identity`` (id = index),
  the fixed tables of earlier versions.

Every map is checked against the dataset: each id it yields must be a category of the dataset, a class whose
name is a category's name must map to that category (an off-by-one table fails here), no two classes may
take one category by name, and at least half of the dataset's categories must be covered
(:data:`MIN_COVERAGE`). A map failing a check is a :class:`ClassMapError` naming the classes and categories
at fault; a run meets it before any work (``vcmbench.run.resolve.check_pairs``). Classes that map to no
category (e.g. the 76 other classes of a COCO-80 model on a dataset of persons and vehicles) are not
scored: their detections are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import VcmbenchError

__all__ = ["FIXED_MAPS", "MIN_COVERAGE", "ClassMapError", "check_setting", "class_map", "normalise_name"]

#: the fewest dataset categories a map must cover, as a fraction of them (refused below it)
MIN_COVERAGE = 0.5

#: the named tables ``class_map`` may give besides ``auto``
FIXED_MAPS = ("coco80_to_coco91", "identity")

#: darknet / PASCAL spellings of COCO classes found in older YOLO checkpoints (normalised)
_SYNONYMS = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv"}

#: COCO-80 index -> COCO-91 category id (YOLOv5 ``utils.general.coco80_to_coco91_class``)
COCO80_TO_COCO91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33, 34,
    35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63,
    64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip


class ClassMapError(VcmbenchError, ValueError):
    """A detector's classes cannot be scored as the dataset's categories (see :func:`class_map`)."""


def normalise_name(name: str) -> str:
    """The form names are compared in: lower case, no spaces / hyphens / underscores, old COCO spellings read as
    COCO's."""
    key = "".join(ch for ch in str(name).lower() if ch not in " -_")
    return _SYNONYMS.get(key, key)


def check_setting(setting: Any, who: str) -> Any:
    """The ``class_map`` card setting, validated (``auto``, a fixed table name, or ``{index: id}``)."""
    if setting in ("auto", *FIXED_MAPS):
        return setting
    if isinstance(setting, Mapping) and setting:
        try:
            out = {int(k): int(v) for k, v in setting.items()}
        except (TypeError, ValueError):
            out = {}
        if out and all(k >= 0 for k in out) and all(str(k).lstrip("-").isdigit() for k in setting):
            return out
    raise ValueError(
        f"{who}: class_map must be auto, {', '.join(FIXED_MAPS)} or a mapping {{class index: dataset category id}} "
        f"with integer keys >= 0, got {setting!r}"
    )


def _categories(categories: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in categories}


def _by_name(names: Mapping[int, str], cats: Mapping[int, str], who: str, dataset: str) -> dict[int, int]:
    """Class index -> category id of the category of the same (normalised) name."""
    ids = {normalise_name(n): cid for cid, n in cats.items()}
    out: dict[int, int] = {}
    taken: dict[int, int] = {}
    for index, name in sorted(names.items()):
        cid = ids.get(normalise_name(name))
        if cid is None:
            continue
        if cid in taken:
            raise ClassMapError(
                f"{who}: classes {taken[cid]} {names[taken[cid]]!r} and {index} {name!r} both match category "
                f"{cid} {cats[cid]!r} of dataset {dataset}; set class_map: {{class index: category id}} in the "
                "task card"
            )
        taken[cid] = index
        out[index] = cid
    return out


def _fixed(setting: Any, names: Mapping[int, str] | None, cats: Mapping[int, str], who: str) -> dict[int, int]:
    if setting == "identity":
        return {i: i for i in (names if names is not None else cats)}
    if setting == "coco80_to_coco91":
        if names is not None and len(names) != len(COCO80_TO_COCO91):
            raise ClassMapError(
                f"{who}: class_map coco80_to_coco91 needs a COCO-80 model, this one has {len(names)} classes; "
                "use class_map: auto (by name) or {class index: category id}"
            )
        return dict(enumerate(COCO80_TO_COCO91))
    return dict(setting)


def _check_explicit(
    mapping: Mapping[int, int], names: Mapping[int, str] | None, cats: Mapping[int, str], who: str, dataset: str
) -> None:
    """Indices the model lacks, ids the dataset lacks, and named classes sent to another category than their
    namesake, are errors."""
    unknown = sorted(i for i in mapping if names is not None and i not in names)
    if unknown:
        raise ClassMapError(f"{who}: the class map names class indices {_short(unknown)} that the model does not "
                            f"have (its classes: {_listing(names)})")  # fmt: skip
    absent = sorted({cid for cid in mapping.values() if cid not in cats})
    if absent:
        raise ClassMapError(
            f"{who}: the class map gives category ids {_short(absent)} that dataset {dataset} does not have "
            f"(its categories: {_listing(cats)}): a table for another dataset, or one off by one? Use class_map: auto "
            "to match by name"
        )
    if names is None:
        return
    by_name = {normalise_name(n): cid for cid, n in cats.items()}
    wrong = [(i, names.get(i, str(i)), cid) for i, cid in sorted(mapping.items())
             if by_name.get(normalise_name(names.get(i, "")), cid) != cid]  # fmt: skip
    if wrong:
        shown = "; ".join(
            f"class {i} {n!r} -> {cid} {cats[cid]!r}, but {n!r} is category {by_name[normalise_name(n)]}"
            for i, n, cid in wrong[:5]
        )
        raise ClassMapError(f"{who}: the class map contradicts the class names on dataset {dataset}: {shown}"
                            f"{' ...' if len(wrong) > 5 else ''}; use class_map: auto to match by name")  # fmt: skip


def _check_coverage(
    mapping: Mapping[int, int], names: Mapping[int, str], cats: Mapping[int, str], who: str, dataset: str
) -> None:
    covered = set(mapping.values())
    need = math.ceil(MIN_COVERAGE * len(cats))
    if len(covered) >= max(need, 1):
        return
    missing = {cid: n for cid, n in cats.items() if cid not in covered}
    hint = ""
    if names and all(str(n).strip() == str(i) for i, n in names.items()):
        hint = " The checkpoint's class names are placeholders (0, 1, ...): give class_map: {class index: category id}."
    raise ClassMapError(
        f"{who}: the model's classes match {len(covered)} of the {len(cats)} categories of dataset {dataset} "
        f"(at least {need} needed): it was not trained for this dataset's classes, and its mAP would count every "
        f"unmatched category as 0. Matched: {_listing({c: cats[c] for c in sorted(covered)}) or 'none'}; "
        f"unmatched categories: {_listing(missing)}; model classes: {_listing(names) or 'unknown'}.{hint}"
    )


def class_map(
    names: Mapping[int, str] | None, categories: Sequence[Mapping[str, Any]], setting: Any = "auto",
    who: str = "task", dataset: str = "dataset",
) -> dict[int, int]:  # fmt: skip
    """Class index -> dataset category id for a detector with classes ``names`` on a dataset with
    ``categories``; raises :class:`ClassMapError` when the map fails a check (see the module docstring).

    ``names`` may be None only with a fixed or explicit ``setting`` (scoring saved predictions without the
    checkpoint at hand): the checks that need the names are then skipped.
    """
    cats = _categories(categories)
    if not cats:
        raise ClassMapError(f"{who}: dataset {dataset} states no categories")
    if setting == "auto":
        if names is None:
            raise ClassMapError(f"{who}: class_map auto needs the model's class names")
        mapping = _by_name(names, cats, who, dataset)
    else:
        mapping = _fixed(setting, names, cats, who)
        _check_explicit(mapping, names, cats, who, dataset)
    _check_coverage(mapping, names or {}, cats, who, dataset)
    return mapping


def _listing(named: Mapping[int, str], n: int = 12) -> str:
    items = [f"{k} {v!r}" for k, v in sorted(named.items())]
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _short(values: Sequence[int], n: int = 12) -> str:
    return ", ".join(map(str, values[:n])) + (f", ... ({len(values)} in all)" if len(values) > n else "")
