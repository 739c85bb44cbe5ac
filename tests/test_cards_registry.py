"""Registry and cards: lazy entries, loud errors, 'did you mean', ls without heavy imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vcmbench.cards import CardError, CardSet, load_card, parse_overrides
from vcmbench.registry import CODECS, Registry, RegistryError


def test_registry_is_lazy_and_rejects_duplicates() -> None:
    reg = Registry("thing")
    reg.add("path", "pathlib:Path")
    assert "path" in reg and reg.names() == ["path"]
    assert reg.get("path") is Path
    with pytest.raises(RegistryError, match="registered twice"):
        reg.add("path", "os:PathLike")


def test_registry_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(RegistryError) as exc:
        CODECS.get("jpg")
    assert "did you mean 'jpeg'" in str(exc.value)
    assert "available:" in str(exc.value)


def test_registry_target_must_be_module_attr() -> None:
    reg = Registry("thing")
    with pytest.raises(ValueError, match="module:attr"):
        reg.add("x", "no_colon_here")


def test_builtin_cards_load_and_name_their_adapters() -> None:
    cards = CardSet()
    assert {"jpeg", "vvenc", "x265", "vtm"} <= set(cards.names("codec"))
    assert "yolov5" in cards.names("task")
    assert "coco" in cards.names("dataset")
    assert cards.get("codec", "vvenc").qualities == (22, 27, 32, 37, 42, 47)
    assert cards.get("codec", "jpeg").qualities == (5, 10, 20, 40, 70)


def test_unknown_card_name_says_did_you_mean() -> None:
    with pytest.raises(CardError) as exc:
        CardSet().get("codec", "vvnec")
    assert "did you mean 'vvenc'" in str(exc.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "body, message",
    [
        ("adapter: jpeg\nversion: 1\nqualities: [5]\nbogus: 1\n", "unknown key"),
        ("adapter: jpgg\nversion: 1\nqualities: [5]\n", "did you mean 'jpeg'"),
        ("adapter: jpeg\nqualities: [5]\n", "missing required key 'version'"),
        ("adapter: jpeg\nversion: 1\n", "non-empty qualities"),
        ("adapter: jpeg\nversion: 1\nqualities: [5\n", "not valid YAML"),
        ("- just\n- a list\n", "must be a YAML mapping"),
    ],
)
def test_broken_card_is_a_loud_error_naming_the_file(tmp_path: Path, body: str, message: str) -> None:
    path = _write(tmp_path / "codecs" / "broken.yaml", body)
    with pytest.raises(CardError) as exc:
        load_card(path, "codec")
    assert message in str(exc.value)
    assert str(path) in str(exc.value)
    with pytest.raises(CardError):  # a folder holding it is never silently skipped
        CardSet([tmp_path])


def test_user_cards_folder_adds_cards_and_rejects_duplicate_names(tmp_path: Path) -> None:
    _write(tmp_path / "codecs" / "jpeg-444.yaml", "adapter: jpeg\nversion: 1\nqualities: [50]\nsettings:\n  subsampling: '4:4:4'\n")
    cards = CardSet([tmp_path])
    assert cards.get("codec", "jpeg-444").settings["subsampling"] == "4:4:4"
    _write(tmp_path / "codecs" / "dup.yaml", "name: jpeg\nadapter: jpeg\nversion: 1\nqualities: [50]\n")
    with pytest.raises(CardError, match="duplicate codec card name 'jpeg'"):
        CardSet([tmp_path])


def test_card_settings_expand_environment_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "datasets" / "c.yaml", "adapter: coco\nversion: 1\nsettings:\n  root: ${MY_ROOT_X:-/fallback}\n")
    assert load_card(path, "dataset").settings["root"] == "/fallback"
    monkeypatch.setenv("MY_ROOT_X", "/data/coco")
    assert load_card(path, "dataset").settings["root"] == "/data/coco"


def test_card_digest_changes_with_settings_only() -> None:
    card = CardSet().get("codec", "vvenc")
    assert card.digest() == card.with_settings().digest()
    assert card.digest() != card.with_settings(preset="faster").digest()


def test_parse_overrides() -> None:
    assert parse_overrides(["vvenc.preset=faster", "yolov5.batch_size=4"]) == {
        "vvenc": {"preset": "faster"},
        "yolov5": {"batch_size": 4},
    }
    with pytest.raises(CardError, match="CARD.KEY=VALUE"):
        parse_overrides(["preset=faster"])


def test_ls_lists_cards_without_importing_torch() -> None:
    code = (
        "import sys\nfrom vcmbench.cli import main\nrc = main(['ls'])\n"
        "heavy = [m for m in ('torch', 'cv2', 'yolov5', 'pycocotools', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy)\nsys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout
    for name in ("jpeg", "vvenc", "x265", "vtm", "yolov5", "coco"):
        assert name in out.stdout
    assert "qualities=[22, 27, 32, 37, 42, 47]" in out.stdout


def test_validate_reports_every_builtin_card_ok() -> None:
    from vcmbench.cli import main

    # vtm builds without binaries (they are looked up when used), so every card must validate
    assert main(["validate"]) == 0
