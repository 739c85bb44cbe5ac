"""Plots, BD-rate tables and the regression gate, on tidy tables made up for the purpose."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import bjontegaard
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vcmbench.cli import main
from vcmbench.errors import VcmbenchError
from vcmbench.report import load_results
from vcmbench.report.compare import Rule, compare
from vcmbench.report.tables import bd_table, pick_anchor

JPEG = ([0.25, 0.45, 0.8, 1.3, 2.0], [0.10, 0.22, 0.29, 0.31, 0.315])
VVC = ([0.08, 0.15, 0.3, 0.55, 0.9, 1.4], [0.12, 0.20, 0.27, 0.30, 0.312, 0.316])


def _table(curves: dict[str, tuple[list[float], list[float]]], ref: float = 0.316, metric: str = "map") -> pd.DataFrame:
    rows = [dict(dataset="coco", task="yolov5", codec="uncompressed", quality=None, metric=metric, headline=True,
                 value=ref, bpp=np.nan, psnr=np.nan, n_items=79, n_failed=0)]  # fmt: skip
    for codec, (rates, vals) in curves.items():
        for i, (r, v) in enumerate(zip(rates, vals, strict=True)):
            rows.append(dict(dataset="coco", task="yolov5", codec=codec, quality=str(10 * (i + 1)), metric=metric,
                             headline=True, value=v, bpp=r, psnr=25 + 5 * np.log2(r + 1), n_items=79, n_failed=0))  # fmt: skip
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def test_bd_table_matches_the_bjontegaard_package() -> None:
    bd, anchor = bd_table(_table({"jpeg": JPEG, "vvenc": VVC}), anchor="jpeg")
    assert anchor == "jpeg"
    row = bd[(bd.codec == "vvenc") & (bd.metric == "map")].iloc[0]
    expected = bjontegaard.bd_rate(JPEG[0], JPEG[1], VVC[0], VVC[1], method="pchip", require_matching_points=False)
    assert row.bd_rate == pytest.approx(expected, abs=1e-6)
    assert row.bd_rate < 0  # VVC needs fewer bits for the same accuracy here


def test_default_anchor_is_the_first_vvc_codec() -> None:
    assert pick_anchor(["jpeg", "x265", "vvenc"], None) == "vvenc"
    assert pick_anchor(["jpeg", "vvenc", "vtm"], None) == "vtm"
    assert pick_anchor(["jpeg", "x265"], None) == "jpeg"
    with pytest.raises(Exception, match="anchor codec 'vtm' is not in the results"):
        pick_anchor(["jpeg"], "vtm")


def test_plot_writes_png_and_svg_with_one_line_per_codec_and_dashed_reference(tmp_path: Path) -> None:
    csv = _write(_table({"jpeg": JPEG, "vvenc": VVC}), tmp_path / "run" / "results.csv")
    assert main(["plot", str(csv)]) == 0
    png = tmp_path / "run" / "plots" / "rd_coco_yolov5_map.png"
    svg = png.with_suffix(".svg")
    assert Image.open(png).size[0] > 300
    text = svg.read_text()
    ET.fromstring(text)  # valid XML
    for label in ("jpeg", "vvenc", "uncompressed (0.316)"):
        assert label in text
    assert "stroke-dasharray" in text  # the dashed reference line


def test_report_prints_and_writes_bd_table_and_warns_on_bad_curves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wobbly = ([0.1, 0.2, 0.4, 0.8], [0.2, 0.25, 0.22, 0.3])  # non-monotonic
    csv = _write(_table({"jpeg": JPEG, "vvenc": VVC, "x265": wobbly}), tmp_path / "run" / "results.csv")
    assert main(["report", str(csv), "--anchor", "jpeg", "--method", "akima"]) == 0
    out = capsys.readouterr()
    assert "BD-rate against jpeg (akima" in out.out
    assert "x265 map" in out.err and "not monotonic" in out.err
    bd = pd.read_csv(tmp_path / "run" / "bd_rate.csv")
    assert set(bd.codec) == {"vvenc", "x265"} and (bd.method == "akima").all()
    assert (tmp_path / "run" / "report.md").read_text().startswith("# RD points")


def test_compare_passes_on_identical_tables_and_fails_on_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _write(_table({"jpeg": JPEG, "vvenc": VVC}), tmp_path / "base.csv")
    same = _write(_table({"jpeg": JPEG, "vvenc": VVC}), tmp_path / "same.csv")
    assert main(["compare", str(base), str(same), "--fail", "bd_rate:+1.0", "--fail", "map:-0.01"]) == 0
    assert "OK: no rule violated" in capsys.readouterr().out

    # the new VVC needs 5 % more bits at the same accuracy: a BD-rate regression, no point drops 0.01
    worse_rate = (list(np.array(VVC[0]) * 1.05), VVC[1])
    new = _write(_table({"jpeg": JPEG, "vvenc": worse_rate}), tmp_path / "new.csv")
    assert main(["compare", str(base), str(new), "--fail", "bd_rate:+1.0", "--fail", "map:-0.01"]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "coco/yolov5/vvenc map: BD-rate of new vs baseline +5.00 %" in out
    # but it passes a looser gate
    assert main(["compare", str(base), str(new), "--fail", "bd_rate:+6.0"]) == 0
    capsys.readouterr()

    # one JPEG point loses 0.02 mAP
    vals = list(JPEG[1])
    vals[2] -= 0.02
    drop = _write(_table({"jpeg": (JPEG[0], vals), "vvenc": VVC}), tmp_path / "drop.csv")
    assert main(["compare", str(base), str(drop), "--fail", "map:-0.01"]) == 1
    out = capsys.readouterr().out
    assert "coco/yolov5/jpeg@30 map: 0.2900 -> 0.2700 (-0.0200 < -0.01)" in out


def test_compare_fails_when_points_disappear(tmp_path: Path) -> None:
    base = _table({"jpeg": JPEG, "vvenc": VVC})
    new = base[~((base.codec == "vvenc") & (base.quality == "10"))]
    result = compare(base, new, [Rule.parse("map:-0.01")])
    assert result.failed and any("missing in the new results" in v for v in result.violations)


def test_compare_rules_are_validated() -> None:
    for bad, why in (("bd_rate", "KEY:THRESHOLD"), ("bd_rate:-1", "allowed increase"), ("map:+0.1", "allowed drop"),
                     ("map:x", "not a number")):  # fmt: skip
        with pytest.raises(VcmbenchError, match=why):
            Rule.parse(bad)
    assert Rule.parse("bpp:+2").threshold == 2.0
    with pytest.raises(Exception, match="no metric 'pq'"):
        compare(_table({"jpeg": JPEG}), _table({"jpeg": JPEG}), [Rule.parse("pq:-0.01")])


def test_load_results_rejects_foreign_tables(tmp_path: Path) -> None:
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="missing columns"):
        load_results(bad)
    with pytest.raises(Exception, match="not a results.csv"):
        load_results(tmp_path / "nothing-here")
