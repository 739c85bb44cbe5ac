"""The shape of the package: layered imports, one adapter builder, adapters that register themselves,
third-party adapters without editing the package, and task-dataset contracts checked before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from vcmbench.adapters import adapter_class, build
from vcmbench.cards import Card, CardError, CardSet
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.contracts import CocoInstances, PanopticSource, describe, unmet
from vcmbench.plan import REFERENCE
from vcmbench.registry import REGISTRIES, RegistryError, declared_adapters
from vcmbench.run import RunConfig
from vcmbench.run.resolve import SelectedDataset, check_pairs, select_cards

REPO = Path(__file__).resolve().parent.parent


def test_layers_and_no_cycles_hold() -> None:
    """`lint-imports` checks the layers of pyproject.toml's [tool.importlinter] and that no sub-packages of
    any package import each other in a cycle."""
    exe = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout


def test_layer_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The contract is not vacuous: a copy of the package in which a codec imports the runner breaks it."""
    import shutil

    shutil.copytree(REPO / "vcmbench", tmp_path / "vcmbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    jpeg = tmp_path / "vcmbench" / "codecs" / "jpeg.py"
    jpeg.write_text(jpeg.read_text() + "\nfrom ..run import runner  # noqa\n")
    exe = Path(sys.executable).parent / "lint-imports"
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run([str(exe), "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1, out.stdout
    assert "vcmbench.codecs.jpeg -> vcmbench.run.runner" in out.stdout


def test_builtin_adapters_register_themselves_and_are_listed_without_import() -> None:
    assert {"none", "jpeg", "vvenc", "x265", "vtm", "lic", "objicm", "tlicm", "saicm", "nerv", "sanerv"} <= set(
        REGISTRIES["codec"].names()
    )
    assert REGISTRIES["task"].target("yolov5") == "vcmbench.tasks.yolov5:YOLOv5Task"
    assert REGISTRIES["dataset"].target("synth_clips") == "vcmbench.datasets.synth:SynthClipsDataset"
    assert REGISTRIES["codec"].get("jpeg") is JpegCodec
    with pytest.raises(RegistryError, match="did you mean 'jpeg'"):
        REGISTRIES["codec"].get("jepg")


def test_source_scan_reads_register_decorators(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text('@register("codec", "a")\nclass A: ...\n\n@other\nclass B: ...\n@register("task", "c")\nclass C: ...\n')
    assert declared_adapters(src, "pkg.m") == [("codec", "a", "pkg.m:A"), ("task", "c", "pkg.m:C")]


def test_builder_checks_the_base_class() -> None:
    card = Card(kind="codec", name="odd", adapter="collections:OrderedDict", version="1")
    with pytest.raises(CardError, match="is not a vcmbench.codecs.base.Codec subclass"):
        adapter_class(card)
    with pytest.raises(CardError, match="cannot import module"):
        adapter_class(Card(kind="codec", name="gone", adapter="no_such_module:X", version="1"))
    with pytest.raises(CardError, match="do not fit its adapter"):
        build(Card(kind="codec", name="bad", adapter="jpeg", version="1", settings={"nonsense": 1}))


EXTERNAL = '''
"""A codec living outside vcmbench: lossy WebP through Pillow's libwebp (a real encoder)."""
import io

import numpy as np
from PIL import Image

from vcmbench.codecs.base import Bitstream, Codec


class WebPCodec(Codec):
    quality_range = (0, 100)

    def __init__(self, method=4):
        self.method = method

    def encode(self, image, quality):
        buf = io.BytesIO()
        Image.fromarray(image, "RGB").save(buf, format="WEBP", quality=self.validate_quality(quality),
                                           method=self.method)
        h, w = image.shape[:2]
        return Bitstream(buf.getvalue(), width=w, height=h)

    def decode(self, bitstream):
        with Image.open(io.BytesIO(bitstream.data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
'''


def test_codec_from_outside_the_package(tmp_path: Path) -> None:
    """A module outside the package adds a codec twice over, with no edit to vcmbench: by ``adapter:
    module:Class`` in an extra card folder, and by an entry point of an installed distribution (here a
    ``.dist-info`` folder on the path, as ``pip install`` leaves it)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "vcm_webp.py").write_text(textwrap.dedent(EXTERNAL))
    dist = site / "vcm_webp-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vcm-webp\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[vcmbench.codecs]\nwebp = vcm_webp:WebPCodec\n")
    cards = tmp_path / "cards" / "codecs"
    cards.mkdir(parents=True)
    (cards / "webp_by_path.yaml").write_text(yaml.safe_dump({"adapter": "vcm_webp:WebPCodec", "version": 1,
                                                             "qualities": [10, 80]}))  # fmt: skip
    (cards / "webp_by_entry_point.yaml").write_text(yaml.safe_dump({"adapter": "webp", "version": 1,
                                                                    "qualities": [10, 80], "settings": {"method": 6}}))  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    cmd = [sys.executable, "-m", "vcmbench.cli"]
    ls = subprocess.run([*cmd, "ls", "--cards", str(tmp_path / "cards")], capture_output=True, text=True, env=env,
                        timeout=300)  # fmt: skip
    assert ls.returncode == 0, ls.stderr
    assert "webp_by_entry_point adapter=webp" in ls.stdout
    out = tmp_path / "out"
    run = subprocess.run([*cmd, "run", "--codec", "webp_by_path,webp_by_entry_point", "--task", "synth_det",
                          "--dataset", "synth", "--limit", "3", "--cards", str(tmp_path / "cards"), "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr
    (run_dir,) = (out / "runs").iterdir()
    import pandas as pd

    table = pd.read_csv(run_dir / "results.csv")
    rates = table[table.metric == "map50"].set_index(["codec", "quality"])["bpp"]
    # both routes encode (two settings of one encoder: two curves), and a higher quality costs more bits
    for codec in ("webp_by_path", "webp_by_entry_point"):
        assert rates[(codec, 80)] > rates[(codec, 10)] > 0
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["config"]["cards"]["webp_by_entry_point"]["adapter"] == "webp"


# ---- contracts between tasks and datasets ------------------------------------------------------------
def test_contracts_name_what_a_dataset_lacks() -> None:
    cards = CardSet()
    coco = build(cards.get("dataset", "coco").with_settings(root="/nonexistent"))
    cityscapes = build(cards.get("dataset", "cityscapes").with_settings(root="/nonexistent"))
    assert isinstance(coco, CocoInstances) and isinstance(coco, PanopticSource)
    assert isinstance(cityscapes, PanopticSource) and not isinstance(cityscapes, CocoInstances)
    assert unmet(coco, [CocoInstances, PanopticSource]) == []
    (msg,) = unmet(cityscapes, [CocoInstances])
    assert msg.startswith("CocoInstances (coco_gt, image_id): COCO instance ground truth")
    assert msg.endswith("lacks coco_gt, image_id")
    assert describe(PanopticSource).startswith("PanopticSource (panoptic_gt, panoptic_image_id)")


def test_a_task_is_refused_on_a_dataset_lacking_its_contract() -> None:
    """Checked when the grid is planned, from the objects (no model is loaded, no item read)."""
    cards = CardSet()
    task = build(cards.get("task", "synth_det"))
    cityscapes = build(cards.get("dataset", "cityscapes").with_settings(root="/nonexistent"))
    with pytest.raises(CardError, match=r"task synth_det cannot score dataset cs: the task needs CocoInstances "
                                        r"\(coco_gt, image_id\).* lacks coco_gt, image_id"):  # fmt: skip
        check_pairs({}, {"synth_det": task}, {"cs": SelectedDataset(cityscapes, [], [])})
    synth = build(cards.get("dataset", "synth").with_settings(root="/nonexistent"))
    check_pairs({}, {"synth_det": task}, {"synth": SelectedDataset(synth, [], [])})  # meets it: no error


# ---- resolving a config, without models --------------------------------------------------------------
def test_select_cards_applies_overrides_roots_and_checks_names() -> None:
    cards = CardSet()
    cfg = RunConfig(codecs=["jpeg", "vvenc"], tasks=["yolov5"], datasets=["coco"], data_roots={"*": "/data/coco"},
                    overrides={"vvenc": {"preset": "slow"}}, qualities={"jpeg": [5]})  # fmt: skip
    chosen = select_cards(cfg, cards)
    assert chosen["vvenc"].settings["preset"] == "slow"
    assert chosen["coco"].settings["root"] == "/data/coco"
    assert chosen["jpeg"] == cards.get("codec", "jpeg")
    with pytest.raises(CardError, match="no selected card named 'x265'"):
        select_cards(RunConfig(codecs=["jpeg"], overrides={"x265": {"preset": "slow"}}), cards)
    with pytest.raises(CardError, match="--quality given for codec"):
        select_cards(RunConfig(codecs=["jpeg"], qualities={"vvenc": [22]}), cards)
    with pytest.raises(CardError, match="is added to every run automatically"):
        select_cards(RunConfig(codecs=[REFERENCE]), cards)
    with pytest.raises(CardError, match="has no sequence classes"):
        select_cards(RunConfig(classes=["C"]), cards)
