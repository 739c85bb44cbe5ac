"""Values mean what the user typed: cards, ``--set`` and ``--arch-kwargs`` values are read with YAML 1.2
core-schema rules (vcmbench.yaml12), not PyYAML's YAML 1.1 ones (where 4:2:0 is the integer 14520)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, JpegImagePlugin

import vcmbench.run
from vcmbench import yaml12
from vcmbench.adapters import build
from vcmbench.cards import CardError, CardSet, load_card, parse_overrides
from vcmbench.cli import build_parser, main
from vcmbench.codecs.jpeg import SUBSAMPLING
from vcmbench.run.resolve import select_cards

SEXAGESIMAL = ["4:2:0", "4:2:2", "1:30", "-1:30", "190:20:30", "190:20:30.15", "12:00"]


@pytest.mark.parametrize("text", SEXAGESIMAL)
def test_a_sexagesimal_looking_value_is_the_string_typed(text: str) -> None:
    assert isinstance(yaml.safe_load(text), int | float)  # what YAML 1.1 (PyYAML's default) makes of it
    assert yaml12.load(text) == text
    assert yaml12.load(f"k: {text}") == {"k": text}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False),
        ("0", 0), ("-17", -17), ("+12", 12), ("017", 17), ("0o17", 0o17), ("0x10", 16), ("0xFf", 255),
        ("1e-3", 1e-3), ("1.5", 1.5), ("-.5", -0.5), ("1.", 1.0), ("2E+2", 200.0),
        (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf),
        ("~", None), ("null", None), ("Null", None), ("NULL", None), ("", None),
    ],
)  # fmt: skip
def test_core_schema_scalars(text: str, value: object) -> None:
    got = yaml12.load(text)
    assert got == value and type(got) is type(value)


def test_nan_is_a_float() -> None:
    for text in (".nan", ".NaN", ".NAN"):
        got = yaml12.load(text)
        assert isinstance(got, float) and math.isnan(got)


@pytest.mark.parametrize(
    "text",
    ["yes", "no", "on", "off", "y", "n", "Yes", "NO", "On", "tRue", "nULL", "1_000", "0b101", "0O17", "0X10",
     "1e", ".", "+", "2024-01-02", "=", "<<", ".Nan", "1.2.3", "0x", "0o8"],
)  # fmt: skip
def test_everything_else_is_a_string(text: str) -> None:
    assert yaml12.load(text) == text


REPO = Path(__file__).resolve().parent.parent
CARD_FILES = sorted(p for d in ("codecs", "tasks", "datasets") for p in (REPO / d).rglob("*.yaml"))


def test_libyamls_parser_and_pythons_read_every_card_and_scalar_alike() -> None:
    """Cards are read on libyaml's parser where PyYAML has it; both parsers give the same values."""
    assert len(CARD_FILES) >= 30
    texts = [p.read_text() for p in CARD_FILES] + SEXAGESIMAL + ["yes", "0x10", "1_000", ".inf", "~", "!!int 0x1f"]
    for text in texts:
        assert yaml.load(text, Loader=yaml12.FastLoader) == yaml.load(text, Loader=yaml12.Yaml12Loader)
    if yaml.__with_libyaml__:
        assert issubclass(yaml12.FastLoader, yaml.CSafeLoader)
    for bad in ("a: [1, 2", "!!int 1.5", "a: b: c"):
        for loader in (yaml12.FastLoader, yaml12.Yaml12Loader):
            with pytest.raises(yaml.YAMLError):
                yaml.load(bad, Loader=loader)


def test_collections_use_the_same_rules() -> None:
    assert yaml12.load("[4:2:0, yes, 0x10, ~, true]") == ["4:2:0", "yes", 16, None, True]
    assert yaml12.load("{a: off, b: 1_000}") == {"a": "off", "b": "1_000"}


def test_an_explicit_tag_must_hold_a_yaml12_value() -> None:
    assert yaml12.load("!!int 0x1f") == 31
    assert yaml12.load("!!str true") == "true"
    with pytest.raises(yaml.YAMLError, match="not a YAML 1.2 integer"):
        yaml12.load("!!int 4:2:0")
    with pytest.raises(yaml.YAMLError, match="not a YAML 1.2 boolean"):
        yaml12.load("!!bool yes")


def _jpeg_card(tmp_path: Path, settings: str) -> Path:
    path = tmp_path / "codecs" / "myjpeg.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"adapter: jpeg\nversion: 1\nqualities: [50]\nsettings:\n{settings}")
    return path


def test_a_card_file_keeps_4_2_0_and_yes_as_strings(tmp_path: Path) -> None:
    card = load_card(_jpeg_card(tmp_path, "  subsampling: 4:2:0\n  flag: yes\n  n: 0x10\n  on: true\n"), "codec")
    assert card.settings == {"subsampling": "4:2:0", "flag": "yes", "n": 16, "on": True}


def test_a_card_with_4_2_2_builds_a_codec_writing_4_2_2(tmp_path: Path) -> None:
    _jpeg_card(tmp_path, "  subsampling: 4:2:2\n")
    codec = build(CardSet([tmp_path]).get("codec", "myjpeg"))
    assert codec.subsampling == "4:2:2"
    assert _sampling_of(codec) == SUBSAMPLING["4:2:2"]


def test_a_string_where_a_bool_is_declared_is_refused_by_name(tmp_path: Path) -> None:
    path = _jpeg_card(tmp_path, "  optimize: yes\n")
    card = load_card(path, "codec")
    assert card.settings["optimize"] == "yes"
    with pytest.raises(CardError, match=r"setting 'optimize' of codec 'myjpeg' is the string 'yes'.*true or false"):
        build(card)
    with pytest.raises(CardError, match=str(path)):
        build(card)


def test_a_string_where_a_number_is_declared_is_refused_by_name(tmp_path: Path) -> None:
    from vcmbench.adapters import check_setting_types, declared_scalar_types

    class Adapter:
        def __init__(self, steps: int = 1, rate: float | None = None, label: str = "", path: Path | None = None):
            pass

    assert declared_scalar_types(int) == [int]
    assert declared_scalar_types(float | None) == [float]
    assert declared_scalar_types(str) == [] and declared_scalar_types(Path | None) == []
    assert declared_scalar_types(int | str) == []
    card = load_card(_jpeg_card(tmp_path, "  steps: 1_000\n  label: 4:2:0\n  path: 1:30\n"), "codec")
    with pytest.raises(CardError, match=r"setting 'steps' .* is the string '1_000'.*takes int"):
        check_setting_types(card, Adapter)
    check_setting_types(card.with_settings(steps=1000, rate=1e-3), Adapter)  # numbers and strings where str is fine
    with pytest.raises(CardError, match=r"setting 'rate' .* the string '1:30'.*takes float"):
        check_setting_types(card.with_settings(steps=1, rate="1:30"), Adapter)


def _sampling_of(codec: object) -> int:
    image = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    bitstream = codec.encode(image, 75)  # type: ignore[attr-defined]
    with Image.open(io.BytesIO(bitstream.data)) as im:
        return JpegImagePlugin.get_sampling(im)


class _Stop(Exception):
    """Raised by the stand-in run() once it has the RunConfig the CLI built."""


def _config_from_cli(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> vcmbench.run.RunConfig:
    seen = []

    def fake_run(cfg: vcmbench.run.RunConfig) -> None:
        seen.append(cfg)
        raise _Stop

    monkeypatch.setattr(vcmbench.run, "run", fake_run)
    with pytest.raises(_Stop):
        main(argv)
    assert len(seen) == 1
    return seen[0]


def test_set_subsampling_4_2_0_reaches_the_jpeg_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    """`vcmbench run --codec jpeg --set jpeg.subsampling=4:2:0`: the CLI's parsing, the run's card selection
    and the one adapter builder hand the codec the string "4:2:0", and its JPEGs are 4:2:0."""
    argv = ["run", "--codec", "jpeg", "--task", "synth_det", "--dataset", "synth", "--set", "jpeg.subsampling=4:2:0",
            "--set", "jpeg.optimize=true"]  # fmt: skip
    cfg = _config_from_cli(monkeypatch, argv)
    assert cfg.overrides["jpeg"] == {"subsampling": "4:2:0", "optimize": True}
    chosen = select_cards(cfg, CardSet())
    base = CardSet().get("codec", "jpeg")
    chosen_444 = base.with_settings(subsampling="4:4:4")
    codec = build(chosen["jpeg"])
    assert codec.subsampling == "4:2:0" and codec.optimize is True
    assert _sampling_of(codec) == SUBSAMPLING["4:2:0"] != _sampling_of(build(chosen_444))


def test_set_yes_for_a_bool_setting_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["run", "--codec", "jpeg", "--task", "synth_det", "--dataset", "synth", "--set", "jpeg.optimize=yes"]
    cfg = _config_from_cli(monkeypatch, argv)
    assert cfg.overrides["jpeg"] == {"optimize": "yes"}
    with pytest.raises(CardError, match=r"setting 'optimize' of codec 'jpeg' is the string 'yes'"):
        build(select_cards(cfg, CardSet())["jpeg"])


def test_parse_overrides_reads_yaml12_and_names_a_malformed_value() -> None:
    assert parse_overrides(["jpeg.subsampling=4:2:2", "t.flag=on", "t.n=0o10", "t.x=~", "t.e="]) == {
        "jpeg": {"subsampling": "4:2:2"},
        "t": {"flag": "on", "n": 8, "x": None, "e": None},
    }
    with pytest.raises(CardError, match=r"--set t\.k=\[1,: the value is not valid YAML"):
        parse_overrides(["t.k=[1,"])


def test_arch_kwargs_values_read_as_yaml12() -> None:
    argv = ["train", "--codec", "lic", "--train-dir", "imgs", "--out", "o", "--lambda", "0.01",
            "--arch-kwargs", "N=0x40,sub=4:2:0,flag=yes,on=true,lr=1e-3,none=~"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.arch_kwargs == {"N": 64, "sub": "4:2:0", "flag": "yes", "on": True, "lr": 1e-3, "none": None}
