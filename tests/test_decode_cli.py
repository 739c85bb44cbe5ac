"""``vcmbench decode`` (issue 16): a finished run's decoded images of chosen items, as PNG files, each codec
at each rate point, optionally with the task's predictions drawn; nothing is kept by a run itself."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vcmbench.cli import main
from vcmbench.run.config import RunConfig
from vcmbench.run.runner import run
from vcmbench.store import Store


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    out = tmp_path_factory.mktemp("decode") / "out"
    report = run(RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [10, 80]},
                           limit=2, out=str(out), progress=False, background_scoring="off"))  # fmt: skip
    assert report.ok
    ids = [line.split(",")[5] for line in (report.run_dir / "items.csv").read_text().splitlines()[1:3]]
    return out, report.run_id, ids


def test_a_run_keeps_no_decoded_images(finished: tuple[Path, str, list[str]]) -> None:
    out, run_id, _ = finished
    assert not list(out.rglob("*.png"))


def test_decode_writes_every_rate_point_as_the_codec_decodes_it(finished: tuple[Path, str, list[str]],
                                                               tmp_path: Path) -> None:  # fmt: skip
    out, run_id, ids = finished
    assert main(["decode", str(out), "--ids", ids[0], "--out", str(tmp_path / "plain")]) == 0
    folder = tmp_path / "plain" / "synth" / ids[0] / "synth_det"
    assert sorted(p.name for p in folder.iterdir()) == ["jpeg@10.png", "jpeg@80.png", "uncompressed.png"]
    # each PNG is the stored bitstream decoded: a JPEG stream, which Pillow decodes to the same pixels
    store = Store(out)
    for q in ("10", "80"):
        (blob,) = store.conn.execute("SELECT blob FROM encodes WHERE codec='jpeg' AND quality=? AND item_id=?",
                                     (q, ids[0])).fetchone()  # fmt: skip
        data = store.get_blob(blob)
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(np.asarray(Image.open(folder / f"jpeg@{q}.png")), expected)
    store.close()
    low, high = (np.asarray(Image.open(folder / f"jpeg@{q}.png")).astype(int) for q in ("10", "80"))
    original = np.asarray(Image.open(folder / "uncompressed.png")).astype(int)
    assert np.abs(low - original).mean() > np.abs(high - original).mean() > 0


def test_decode_draws_the_predictions(finished: tuple[Path, str, list[str]], tmp_path: Path) -> None:
    out, run_id, ids = finished
    assert main(["decode", str(out), "--ids", ",".join(ids), "--draw", "--out", str(tmp_path / "drawn")]) == 0
    assert main(["decode", str(out), "--ids", ",".join(ids), "--out", str(tmp_path / "plain")]) == 0
    drawn = sorted((tmp_path / "drawn").rglob("*.png"))
    assert len(drawn) == 2 * 3
    plain = tmp_path / "plain" / drawn[0].relative_to(tmp_path / "drawn")
    a, b = np.asarray(Image.open(drawn[0])), np.asarray(Image.open(plain))
    assert a.shape == b.shape and (a != b).any(axis=2).mean() < 0.5  # boxes and labels over the same picture


def test_decode_names_unknown_items(finished: tuple[Path, str, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    out, _, _ = finished
    assert main(["decode", str(out), "--ids", "no-such-item"]) == 2
    assert "no-such-item" in capsys.readouterr().err
