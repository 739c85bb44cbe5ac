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
from vcmbench.metrics.bd import compare_curves
from vcmbench.report import load_results
from vcmbench.report.compare import Rule, compare
from vcmbench.report.tables import bd_table, pick_anchor

JPEG = ([0.25, 0.45, 0.8, 1.3, 2.0], [0.10, 0.22, 0.29, 0.31, 0.315])
VVC = ([0.08, 0.15, 0.3, 0.55, 0.9, 1.4], [0.12, 0.20, 0.27, 0.30, 0.312, 0.316])


def _table(curves: dict[str, tuple[list[float], list[float]]], ref: float = 0.316, metric: str = "map",
           task: str = "yolov5", **extra: object) -> pd.DataFrame:  # fmt: skip
    rows = [dict(dataset="coco", task=task, codec="uncompressed", quality=None, metric=metric, headline=True,
                 value=ref, bpp=np.nan, psnr=np.nan, n_items=79, n_failed=0, **extra)]  # fmt: skip
    for codec, (rates, vals) in curves.items():
        for i, (r, v) in enumerate(zip(rates, vals, strict=True)):
            rows.append(dict(dataset="coco", task=task, codec=codec, quality=str(10 * (i + 1)), metric=metric,
                             headline=True, value=v, bpp=r, psnr=25 + 5 * np.log2(r + 1), n_items=79, n_failed=0,
                             **extra))  # fmt: skip
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


# --------------------------------------------------------------------------------------------------
# Issue 14: BD only where the method defines it, metric direction, same items for every codec

LIC = ([0.3, 0.9], [0.12, 0.30])  # two rate points: no BD value
THIN = ([0.05, 0.08, 0.12, 0.2], [0.02, 0.05, 0.08, 0.12])  # shares 7 % of the mAP range with JPEG


def _bd(run: Path, metric: str = "map") -> pd.DataFrame:
    bd = pd.read_csv(run / "bd_rate.csv")
    return bd[bd.metric == metric].set_index("codec")


def test_report_leaves_bd_cells_empty_with_the_reason_beside_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _write(_table({"jpeg": JPEG, "vvenc": VVC, "lic": LIC, "thin": THIN}), tmp_path / "run" / "results.csv")
    assert main(["report", str(csv), "--anchor", "jpeg"]) == 0
    out = capsys.readouterr().out
    bd = _bd(tmp_path / "run")
    assert np.isfinite(bd.loc["vvenc", "bd_rate"]) and pd.isna(bd.loc["vvenc", "bd_rate_note"])
    assert np.isnan(bd.loc["lic", "bd_rate"]) and bd.loc["lic", "bd_rate_note"] == "test: 2 points < 4"
    assert np.isnan(bd.loc["thin", "bd_rate"]) and bd.loc["thin", "bd_rate_note"] == "metric overlap 7% < 50%"
    assert bd.loc["thin", "bd_metric_note"] == "no rate overlap"
    md = (tmp_path / "run" / "report.md").read_text()
    for text in (out, md):
        assert "pchip through the measured points; >= 4 points per curve, overlap >= 50%, same items" in text
        assert "bd_rate < 0 and bd_metric > 0 mean the codec is better than the anchor" in text
    (printed,) = [line for line in out.splitlines() if " map " in line and " higher " in line and " lic " in line]
    assert "test: 2 points < 4" in printed and not any(c.isdigit() for c in printed.split("lic")[1].split("test")[0])
    (row,) = [line for line in md.splitlines() if "| map | higher | jpeg | lic |" in line]
    assert "| lic |  | test: 2 points < 4 |" in row  # the empty cell, then its reason

    # --allow-short computes them anyway and marks them; --min-overlap moves the threshold
    assert main(["report", str(csv), "--anchor", "jpeg", "--allow-short"]) == 0
    bd = _bd(tmp_path / "run")
    assert np.isfinite(bd.loc["lic", "bd_rate"]) and bd.loc["lic", "bd_rate_note"].startswith("allowed: test: 2 points")
    assert bd.loc["thin", "bd_rate_note"] == "allowed: metric overlap 7% < 50%"
    assert "computed anyway (--allow-short) and marked" in capsys.readouterr().out
    assert main(["report", str(csv), "--anchor", "jpeg", "--min-overlap", "0.05"]) == 0
    bd = _bd(tmp_path / "run")
    assert np.isfinite(bd.loc["thin", "bd_rate"]) and pd.isna(bd.loc["thin", "bd_rate_note"])


def test_report_monotone_fit_is_used_and_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dip = ([0.1, 0.2, 0.4, 0.8, 1.6], [0.12, 0.21, 0.27, 0.31, 0.30])  # mAP falls at the highest rate
    csv = _write(_table({"jpeg": JPEG, "vvenc": dip}), tmp_path / "run" / "results.csv")
    assert main(["report", str(csv), "--anchor", "jpeg", "--fit", "monotone"]) == 0
    out = capsys.readouterr().out
    assert "pchip through the CTC monotone cubic fit of the points" in out
    row = _bd(tmp_path / "run").loc["vvenc"]
    assert row.fit == "monotone"
    expected = compare_curves(JPEG[0], JPEG[1], dip[0], dip[1], fit="monotone")
    assert row.bd_rate == pytest.approx(expected.bd_rate, abs=1e-9)
    assert row.bd_rate != pytest.approx(compare_curves(JPEG[0], JPEG[1], dip[0], dip[1]).bd_rate, abs=1e-3)
    assert "(pchip, monotone points)" in (tmp_path / "run" / "report.md").read_text()


def test_plot_legend_gives_each_codec_its_bd_rate_or_the_reason_it_has_none(tmp_path: Path) -> None:
    csv = _write(_table({"jpeg": JPEG, "vvenc": VVC, "lic": LIC}), tmp_path / "run" / "results.csv")
    assert main(["plot", str(csv), "--anchor", "jpeg"]) == 0
    text = (tmp_path / "run" / "plots" / "rd_coco_yolov5_map.svg").read_text()
    expected = compare_curves(JPEG[0], JPEG[1], VVC[0], VVC[1]).bd_rate
    for label in ("jpeg (anchor)", f"vvenc: BD-rate {expected:+.1f} %", "lic: BD-rate none (test: 2 points &lt; 4)",
                  "BD: vs jpeg, pchip, measured points"):  # fmt: skip
        assert label in text


# Face recall (lower = more private) rises with the rate; "saicm" keeps JPEG's recall only at 1.5x its
# rate: it finds fewer faces at every rate, a privacy gain.
RECALL = ([0.24, 0.35, 0.53, 0.83, 1.34], [0.14, 0.27, 0.37, 0.57, 0.67])
PRIVATE = ([1.5 * r for r in RECALL[0]], RECALL[1])


def _faces(curves: dict[str, tuple[list[float], list[float]]], marked: bool = True) -> pd.DataFrame:
    extra = {"lower_is_better": True} if marked else {}
    return _table(curves, ref=1.0, metric="face_recall", task="faces", **extra)


def test_lower_is_better_metric_reads_right_in_the_report_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _write(_faces({"jpeg": RECALL, "saicm": PRIVATE}), tmp_path / "run" / "results.csv")
    assert main(["report", str(csv), "--anchor", "jpeg"]) == 0
    row = _bd(tmp_path / "run", "face_recall").loc["saicm"]
    assert row.better == "lower"
    assert row.bd_rate == pytest.approx(100 * (1 / 1.5 - 1), abs=1e-9)  # negative: the codec is better
    assert row.bd_metric > 0  # the privacy gain is positive
    assert "note: this results table has no lower_is_better" not in capsys.readouterr().err

    # a table written before the column existed: higher-is-better unless declared, with a note
    old = _write(_faces({"jpeg": RECALL, "saicm": PRIVATE}, marked=False), tmp_path / "old" / "results.csv")
    assert main(["report", str(old), "--anchor", "jpeg"]) == 0
    assert "no lower_is_better column" in capsys.readouterr().err
    assert _bd(tmp_path / "old", "face_recall").loc["saicm", "bd_rate"] == pytest.approx(50.0, abs=1e-9)
    assert main(["report", str(old), "--anchor", "jpeg", "--lower-is-better", "face_recall"]) == 0
    assert _bd(tmp_path / "old", "face_recall").loc["saicm", "bd_rate"] == pytest.approx(100 * (1 / 1.5 - 1), abs=1e-9)

    assert main(["plot", str(csv), "--anchor", "jpeg"]) == 0
    text = (tmp_path / "run" / "plots" / "rd_coco_faces_face_recall.svg").read_text()
    assert "face_recall (lower is better)" in text and "saicm: BD-rate -33.3 %" in text


def test_compare_fail_rules_honour_lower_is_better(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = _write(_faces({"jpeg": RECALL, "saicm": PRIVATE}), tmp_path / "base.csv")
    more_faces = list(PRIVATE[1])
    more_faces[2] += 0.02  # one point leaks 2 % more faces: a privacy loss
    worse = _write(_faces({"jpeg": RECALL, "saicm": (PRIVATE[0], more_faces)}), tmp_path / "worse.csv")
    assert main(["compare", str(base), str(worse), "--fail", "face_recall:-0.01"]) == 1
    out = capsys.readouterr().out
    assert "coco/faces/saicm@30 face_recall: 0.3700 -> 0.3900 (+0.0200; lower is better: a loss of 0.0200 > 0.01)" in out
    fewer_faces = list(PRIVATE[1])
    fewer_faces[2] -= 0.02  # a privacy gain passes
    better = _write(_faces({"jpeg": RECALL, "saicm": (PRIVATE[0], fewer_faces)}), tmp_path / "better.csv")
    assert main(["compare", str(base), str(better), "--fail", "face_recall:-0.01"]) == 0
    capsys.readouterr()
    # the same recall at 10 % fewer bits: faces survive at lower rates, a BD-rate regression of +11 %
    cheaper = _write(_faces({"jpeg": RECALL, "saicm": ([0.9 * r for r in PRIVATE[0]], PRIVATE[1])}),
                     tmp_path / "cheaper.csv")  # fmt: skip
    assert main(["compare", str(base), str(cheaper), "--fail", "bd_rate:+1.0"]) == 1
    assert "coco/faces/saicm face_recall: BD-rate of new vs baseline +11.11 %" in capsys.readouterr().out


def _items_csv(run: Path, df: pd.DataFrame, failed: dict[tuple[str, str], str]) -> None:
    """items.csv of the table's units over 79 items; ``failed``: (codec, quality) -> the item that failed."""
    rows = []
    for u in df.drop_duplicates(["codec", "quality"]).itertuples():
        q = "" if pd.isna(u.quality) else str(u.quality)
        for i in range(79):
            item = f"{i:012d}"
            status = "failed" if failed.get((u.codec, q)) == item else "done"
            rows.append(dict(run_id="r", dataset=u.dataset, task=u.task, codec=u.codec, quality=u.quality,
                             item_id=item, status=status))  # fmt: skip
    pd.DataFrame(rows).to_csv(run / "items.csv", index=False)


def _with_failure(df: pd.DataFrame, codec: str, quality: str) -> pd.DataFrame:
    hit = (df.codec == codec) & (df.quality == quality)
    return df.assign(n_items=df.n_items.where(~hit, 78), n_failed=df.n_failed.where(~hit, 1))


def test_bd_needs_the_same_items_for_every_codec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    df = _with_failure(_table({"jpeg": JPEG, "vvenc": VVC, "x265": VVC}), "vvenc", "30")
    _write(df, run / "results.csv")
    _items_csv(run, df, {("vvenc", "30"): "000000000005"})
    assert main(["report", str(run), "--anchor", "jpeg"]) == 0
    out = capsys.readouterr().out
    bd = _bd(run)
    assert np.isnan(bd.loc["vvenc", "bd_rate"]) and np.isnan(bd.loc["vvenc", "bd_metric"])
    assert bd.loc["vvenc", "bd_rate_note"] == "items differ: vvenc@30 scored on 78 of 79"
    assert np.isfinite(bd.loc["x265", "bd_rate"])  # its units and the anchor's share all 79 items
    (marked,) = [line for line in out.splitlines() if "fewer items" in line]
    assert marked.split()[2:4] == ["vvenc", "30"] and "fewer items: 78 of 79" in marked
    # --no-common-items: today's numbers, marked
    assert main(["report", str(run), "--anchor", "jpeg", "--no-common-items"]) == 0
    bd = _bd(run)
    assert np.isfinite(bd.loc["vvenc", "bd_rate"])
    assert bd.loc["vvenc", "bd_rate_note"] == "items differ: vvenc@30 scored on 78 of 79 (--no-common-items)"
    # without items.csv the counts cannot prove the sets equal
    (run / "items.csv").unlink()
    assert main(["report", str(run), "--anchor", "jpeg"]) == 0
    assert _bd(run).loc["vvenc", "bd_rate_note"] == "items may differ: vvenc@30 has 78 items, 1 failed (no items.csv)"


def test_an_item_every_codec_failed_does_not_block_bd(tmp_path: Path) -> None:
    run = tmp_path / "run"
    df = _table({"jpeg": JPEG, "vvenc": VVC}).assign(n_items=78, n_failed=1)
    _write(df, run / "results.csv")
    units = df.drop_duplicates(["codec", "quality"])
    every = zip(units.codec, units.quality, strict=True)
    _items_csv(run, df, {(c, "" if pd.isna(q) else q): "000000000007" for c, q in every})
    assert main(["report", str(run), "--anchor", "jpeg"]) == 0
    row = _bd(run).loc["vvenc"]
    assert np.isfinite(row.bd_rate) and pd.isna(row.bd_rate_note)


def _markdown_tables(text: str) -> list[pd.DataFrame]:
    """Every Markdown table of ``text``, as strings."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            tables.append(pd.DataFrame(block[2:], columns=block[0]))
            block = []
    return tables


def _rounded(note: str) -> str:
    """``note`` with its decimal numbers to 3 significant digits (a value quoted from rounded points)."""
    import re

    return re.sub(r"\d+\.\d+", lambda m: f"{float(m.group()):.3g}", note)


def test_learned_coco_mini_report_bd_table_follows_from_its_rd_points() -> None:
    """docs/learned_coco-mini_report.md: the BD table recomputed from the doc's own RD points (rebuilt by
    benchmarks/learned_report_bd.py) is the table the doc prints, value for value (to the rounding of the
    printed points) and reason for reason; its
    learned codecs have 4 rate points each, so no cell is empty for lack of points."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("learned_report_bd", root / "benchmarks" / "learned_report_bd.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    df = module.results_from_doc()
    from vcmbench.report import lower_is_better, with_psnr_rows

    units = df.drop_duplicates(["task", "codec", "quality"])
    points = units[units.codec.isin(["saicm", "objicm", "tlicm", "lic"])].groupby(["task", "codec"]).size()
    assert (points == 4).all() and len(points) == 8
    bd, anchor = bd_table(with_psnr_rows(df), anchor="jpeg", lower=lower_is_better(df))
    printed = _markdown_tables((root / "docs" / "learned_coco-mini_report.md").read_text())[1]
    assert anchor == "jpeg" and len(bd) == len(printed)
    key = ["task", "metric", "codec"]
    merged = printed.merge(bd.astype({"bd_rate": float}), on=key, suffixes=("_doc", ""), validate="1:1")
    for r in merged.itertuples():
        for col in ("bd_rate", "bd_metric"):
            doc, now = getattr(r, f"{col}_doc"), getattr(r, col)
            tol = 0.1 if col == "bd_rate" else 2e-3  # the doc's RD points are rounded to 4 decimals
            assert (doc == "" and pd.isna(now)) or float(doc) == pytest.approx(now, abs=tol), (r, col)
            note = getattr(r, f"{col}_note")
            assert _rounded(getattr(r, f"{col}_note_doc")) == _rounded("" if pd.isna(note) else note), (r, col)
    assert not merged.bd_rate_note_doc.str.contains("points < 4").any()


def test_faces_task_declares_face_recall_lower_is_better() -> None:
    from vcmbench.tasks.base import Task
    from vcmbench.tasks.faces import FacesTask

    assert Task.lower_is_better == frozenset()
    assert FacesTask.lower_is_better == frozenset({"face_recall"}) <= set(FacesTask.metrics)


def test_direction_reaches_the_results_table_from_the_store(tmp_path: Path) -> None:
    from vcmbench.report import direction_note, lower_is_better
    from vcmbench.store import TIDY_COLUMNS, Store

    store = Store(tmp_path)
    try:
        store.put_evaluation({"key": "k", "dataset": "coco", "task": "faces", "codec": "jpeg", "quality": "10",
                              "n_items": 1, "n_failed": 0, "metrics": {"face_recall": 0.5, "faces_ref": 3.0},
                              "headline": ["face_recall"], "lower_is_better": ["face_recall"], "run_id": "r"})  # fmt: skip
        store.link_units("r", ["k"])
        df = pd.DataFrame(store.tidy_rows("r"), columns=TIDY_COLUMNS)
    finally:
        store.close()
    assert lower_is_better(df) == {"face_recall"} and direction_note(df) is None
