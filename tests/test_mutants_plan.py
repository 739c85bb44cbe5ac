"""vcmbench.plan, unit by unit (the mutation lane's tests for plan.py: benchmarks/mutation.toml).

The keys are a stored format: a result, a bitstream or a prediction is found again in a later run only if its
key is made the same way. Each key is therefore pinned to its recipe (the hash of the documented fields), and
each field is shown to change it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vcmbench.media.hashing import stable_hash
from vcmbench.plan import REFERENCE, DatasetSelection, WorkUnit, expand_grid, quality_label

SEL = DatasetSelection("coco", "ds-id", ("a", "b"), ("sha-a", "sha-b"))


def _unit(**kw: object) -> WorkUnit:
    base = {"dataset": "coco", "task": "yolov5", "codec": "jpeg", "quality": 30, "dataset_id": "ds-id",
            "task_id": "task-id", "codec_id": "codec-id", "item_ids": ("a", "b"), "item_shas": ("sha-a", "sha-b")}  # fmt: skip
    base.update(kw)
    return WorkUnit(**base)  # type: ignore[arg-type]


def test_reference_name() -> None:
    assert REFERENCE == "uncompressed"


@pytest.mark.parametrize(("quality", "label"), [(None, None), (30, "30"), (0, "0"), (2.5, "2.5"), ("22", "22")])
def test_quality_label(quality: object, label: str | None) -> None:
    assert quality_label(quality) == label


def test_encode_key_recipe() -> None:
    unit = _unit()
    key = unit.encode_key("sha-a")
    assert key == stable_hash({"codec": "codec-id", "q": "30", "item": "sha-a"}, n=32)
    assert len(key) == 32


def test_encode_key_depends_on_codec_identity_quality_and_item_not_on_task_or_names() -> None:
    unit = _unit()
    key = unit.encode_key("sha-a")
    assert _unit(codec_id="other").encode_key("sha-a") != key
    assert _unit(quality=31).encode_key("sha-a") != key
    assert unit.encode_key("sha-b") != key
    # shared by every task and unaffected by the card's name: only its identity counts
    assert _unit(task="yolov7", task_id="t2", codec="jpeg-renamed", dataset_id="d2").encode_key("sha-a") == key


def test_the_reference_has_no_encode_key_and_a_ref_prediction_key() -> None:
    ref = _unit(codec=REFERENCE, codec_id=REFERENCE, quality=None)
    assert ref.is_reference and not _unit().is_reference
    assert ref.encode_key("sha-a") is None
    assert ref.prediction_key("sha-a") == stable_hash({"task": "task-id", "input": "ref:sha-a"}, n=32)


def test_prediction_key_recipe() -> None:
    unit = _unit()
    enc = unit.encode_key("sha-a")
    key = unit.prediction_key("sha-a")
    assert key == stable_hash({"task": "task-id", "input": enc}, n=32) and len(key) == 32
    assert _unit(task_id="t2").prediction_key("sha-a") != key
    assert _unit(codec_id="c2").prediction_key("sha-a") != key
    assert _unit(task="renamed").prediction_key("sha-a") == key


def test_prediction_keys_follow_the_items_in_order() -> None:
    unit = _unit()
    assert unit.prediction_keys() == [unit.prediction_key("sha-a"), unit.prediction_key("sha-b")]


def test_unit_key_recipe() -> None:
    unit = _unit()
    expected = stable_hash(
        {"dataset": "ds-id", "task": "task-id", "codec": "codec-id", "q": "30", "items": ["sha-a", "sha-b"]}, n=32
    )
    assert unit.key == expected and len(unit.key) == 32


@pytest.mark.parametrize(
    "change",
    [{"dataset_id": "x"}, {"task_id": "x"}, {"codec_id": "x"}, {"quality": 31}, {"item_shas": ("sha-a",)},
     {"item_shas": ("sha-b", "sha-a")}],
)  # fmt: skip
def test_unit_key_changes_with_each_identity(change: dict) -> None:
    assert replace(_unit(), **change).key != _unit().key


def test_unit_key_ignores_names() -> None:
    assert _unit(dataset="d", task="t", codec="c", item_ids=("x", "y")).key == _unit().key


def test_label() -> None:
    assert _unit().label() == "coco/yolov5/jpeg@30"
    assert _unit(codec=REFERENCE, quality=None).label() == "coco/yolov5/uncompressed"
    assert _unit(quality=0).label() == "coco/yolov5/jpeg@0"


def test_expand_grid_order_reference_first_and_fields() -> None:
    other = DatasetSelection("visdrone", "vd-id", ("v",), ("sha-v",))
    units = expand_grid([SEL, other], [("yolov5", "t5"), ("yolov7", "t7")], [("jpeg", "cj", [10, 20]), ("x265", "cx", [32])])
    labels = [u.label() for u in units]
    assert labels == [
        f"{ds}/{t}/{c}" for ds in ("coco", "visdrone") for t in ("yolov5", "yolov7")
        for c in ("uncompressed", "jpeg@10", "jpeg@20", "x265@32")
    ]  # fmt: skip
    first = units[0]
    assert (first.codec, first.codec_id, first.quality) == (REFERENCE, REFERENCE, None)
    second = units[1]
    assert second == WorkUnit("coco", "yolov5", "jpeg", 10, "ds-id", "t5", "cj", ("a", "b"), ("sha-a", "sha-b"))
    assert units[-1].item_ids == ("v",) and units[-1].dataset_id == "vd-id" and units[-1].task_id == "t7"


def test_expand_grid_without_reference_and_duplicates_dropped() -> None:
    units = expand_grid([SEL], [("yolov5", "t5")], [("jpeg", "cj", [10, 10]), ("jpeg", "cj", [20])], reference=False)
    assert [u.label() for u in units] == ["coco/yolov5/jpeg@10", "coco/yolov5/jpeg@20"]
    assert len({u.key for u in units}) == len(units)


def test_expand_grid_keeps_same_named_points_with_different_identities() -> None:
    units = expand_grid([SEL], [("yolov5", "t5")], [("jpeg", "cj", [10]), ("jpeg", "cj2", [10])], reference=False)
    assert [u.codec_id for u in units] == ["cj", "cj2"]
