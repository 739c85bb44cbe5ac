"""CTC tables in and out (issue 17, item 4): ``export --format ctc``, ``report/plot --import``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vcmbench.cli import main
from vcmbench.errors import VcmbenchError
from vcmbench.metrics.bd import compare_curves
from vcmbench.report.external import CTC_COLUMNS, ImportSpec, imported_rows, read_ctc_csv
from vcmbench.run import RunConfig, run

QPS = [27, 32, 37, 42]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x265 (low delay, ultrafast) at 4 QPs x the synth detector x the two 8-frame synth clips: the cheapest
    clip run with curves long enough for BD-rate."""
    out = tmp_path_factory.mktemp("clips") / "o"
    cfg = RunConfig(codecs=["x265"], tasks=["synth_det"], datasets=["synth_clips"], qualities={"x265": QPS},
                    out=str(out), progress=False,
                    overrides={"x265": {"video_config": "ld", "preset": "ultrafast"}, "synth_clips": {"num_frames": 8}})  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    return report.run_dir


@pytest.fixture(scope="module")
def jpeg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("images") / "o"
    cfg = RunConfig(codecs=["jpeg"], tasks=["synth_det"], datasets=["synth"], qualities={"jpeg": [20, 40, 60, 80]},
                    out=str(out), progress=False, limit=4)  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    return report.run_dir


def test_export_ctc_writes_the_template_layout(clip_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(clip_run), "--format", "ctc", "--dest", str(tmp_path)]) == 0
    written = sorted(Path(p).name for p in capsys.readouterr().out.split())
    assert written == ["ctc_synth_clips_synth_det_map.csv", "ctc_synth_clips_synth_det_map50.csv"]  # the headlines
    table = pd.read_csv(tmp_path / "ctc_synth_clips_synth_det_map50.csv", dtype={"qp": str})
    assert list(table.columns) == CTC_COLUMNS
    # one row per sequence x QP, then the class, then the whole dataset
    assert list(table.Dataset) == [n for n in ("Synth00", "Synth01", "CLASS-S", "Overall") for _ in QPS]
    assert list(table.qp) == [str(q) for q in QPS] * 4
    assert set(table["class"].fillna("")) == {"S", ""}
    results = pd.read_csv(clip_run / "results.csv", dtype={"quality": str})
    coded = results[results.codec == "x265"].set_index(["metric", "quality"])
    for _, row in table.iterrows():
        metric = {"Overall": "map50", "CLASS-S": "map50/ClassS"}.get(row.Dataset, f"map50/{row.Dataset}")
        own = coded.loc[(metric, row.qp)]
        assert row.end_accuracy == pytest.approx(100 * own.value, rel=1e-12)  # percent, as the template
        assert row["bitrate (kbps)"] == own.kbps and row.avg_bpp == own.bpp  # the sequence's own rate, exactly
    assert table[table.Dataset == "Synth00"]["bitrate (kbps)"].iloc[0] != table[table.Dataset == "Synth01"]["bitrate (kbps)"].iloc[0]


def test_exported_table_reimported_gives_bd_rate_zero(clip_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The round trip of the closing note: export, re-import as codec "back", BD-rate of x265 against it."""
    assert main(["export", str(clip_run), "--format", "ctc", "--dest", str(tmp_path)]) == 0
    ctc = tmp_path / "ctc_synth_clips_synth_det_map50.csv"
    metrics = "map50,map50/Synth00,map50/Synth01,map50/ClassS"
    assert main(["report", str(clip_run), "--import", f"back={ctc}", "--anchor", "back", "--metric", metrics]) == 0
    out = capsys.readouterr().out
    assert "back (imported)" in out
    bd = pd.read_csv(clip_run / "bd_rate.csv")
    assert sorted(bd.metric) == sorted(metrics.split(","))
    assert set(bd.anchor) == {"back (imported)"} and set(bd.codec) == {"x265"}
    assert bd.bd_rate.notna().all() and (bd.bd_rate.abs() < 1e-9).all(), bd[["metric", "bd_rate"]]
    assert (bd.bd_metric.abs() < 1e-9).all()
    assert bd.bd_rate_note.str.contains("imported curve").all()
    # plot takes the same import; one figure per metric, the imported curve among them
    plots = tmp_path / "plots"
    assert main(["plot", str(clip_run), "--import", f"back={ctc}", "--anchor", "back", "--metric", "map50",
                 "--out-dir", str(plots)]) == 0  # fmt: skip
    assert (plots / "rd_synth_clips_synth_det_map50.png").is_file()


def _jpeg_curve(run_dir: Path) -> tuple[list[float], list[float]]:
    t = pd.read_csv(run_dir / "results.csv")
    pts = t[t.codec == "jpeg"].drop_duplicates("quality").sort_values("bpp")
    return list(pts.bpp), list(pts.psnr)


def test_compressai_json_bd_rate_equals_the_direct_computation(jpeg_run: Path, tmp_path: Path) -> None:
    bpp, psnr = _jpeg_curve(jpeg_run)
    other_bpp = [0.85 * b for b in bpp]
    other_psnr = [p + 0.2 * i for i, p in enumerate(psnr)]
    path = tmp_path / "bmshj2018-factorized-mse.json"  # as compressai.utils.eval_model writes it
    path.write_text(json.dumps({"name": "bmshj2018-factorized-mse", "description": "Inference (ans)",
                                "results": {"psnr-rgb": other_psnr, "ms-ssim-rgb": [0.9, 0.92, 0.94, 0.96],
                                            "bpp": other_bpp, "encoding_time": [0.1] * 4, "decoding_time": [0.1] * 4}}))  # fmt: skip
    assert main(["report", str(jpeg_run), "--import", str(path), "--anchor", "jpeg"]) == 0
    bd = pd.read_csv(jpeg_run / "bd_rate.csv")
    row = bd[(bd.metric == "psnr") & (bd.codec == "bmshj2018-factorized-mse (imported)")]
    assert len(row) == 1
    direct = compare_curves(bpp, psnr, other_bpp, other_psnr, method="pchip")
    assert direct.bd_rate < -5  # a real difference, not a trivial zero
    assert row.bd_rate.iloc[0] == pytest.approx(direct.bd_rate, rel=1e-12, abs=1e-12)
    assert row.bd_metric.iloc[0] == pytest.approx(direct.bd_metric, rel=1e-12, abs=1e-12)
    # the imported curve as the anchor
    assert main(["report", str(jpeg_run), "--import", f"ca={path}", "--anchor", "ca"]) == 0
    bd = pd.read_csv(jpeg_run / "bd_rate.csv")
    row = bd[(bd.metric == "psnr") & (bd.codec == "jpeg")]
    assert list(row.anchor) == ["ca (imported)"]
    back = compare_curves(other_bpp, other_psnr, bpp, psnr, method="pchip")
    assert row.bd_rate.iloc[0] == pytest.approx(back.bd_rate, rel=1e-12, abs=1e-12)


def test_compressai_vision_final_csv_is_read(tmp_path: Path) -> None:
    """CompressAI-Vision's final_SFU.csv: index column, ``Name_WxH_fps`` names, class rows without avg_bpp."""
    path = tmp_path / "final_SFU.csv"
    path.write_text(",Dataset,qp,bitrate (kbps),end_accuracy,enc_time\n"
                    "0,BQMall_832x480_60,22,1000.0,40.5,1.0\n1,RaceHorses_416x240_30,22,300.0,30.0,1.0\n"
                    "2,CLASS-C,0,650.0,35.0,1.0\n")  # fmt: skip
    pts = read_ctc_csv(path, "map")
    assert [p["metric"] for p in pts.points] == ["map/BQMall", "map/RaceHorsesD"]
    assert pts.points[0]["bpp"] == pytest.approx(1000.0 * 1000 / (832 * 480 * 60), rel=1e-12)
    assert pts.points[1]["value"] == pytest.approx(0.30)
    assert "CLASS-C" in pts.notes[0] and str(path) in pts.notes[0]


BAD_FILES = {
    "no_accuracy.csv": ("Dataset,qp,bitrate (kbps)\nBQMall_832x480_60,22,1000\n", r"no_accuracy.csv: line 1 \(header\).*'end_accuracy'"),
    "bad_rate.csv": ("Dataset,qp,bitrate (kbps),end_accuracy\nBQMall_832x480_60,22,1000,40\nBQMall_832x480_60,27,fast,35\n",
                     r"bad_rate.csv: line 3: column 'bitrate \(kbps\)' is not a number: 'fast'"),
    "no_size.csv": ("Dataset,qp,bitrate (kbps),end_accuracy\nMySeq,22,1000,40\n", r"no_size.csv: line 2: sequence 'MySeq'"),
    "broken.json": ('{"name": "x",\n "results": {"bpp": [0.1, 0.2],}}', r"broken.json: not valid JSON: line 2, column"),
    "short.json": ('{"results": {"bpp": [0.1, 0.2], "psnr-rgb": [30]}}', r"short.json: key results.psnr-rgb has 1 values"),
    "text.json": ('{"results": {"bpp": [0.1, "a lot"], "psnr-rgb": [30, 31]}}', r"text.json: key results.bpp\[1\]"),
    "no_bpp.json": ('{"results": {"psnr-rgb": [30, 31]}}', r"no_bpp.json: no key results.bpp"),
    "table.txt": ("bpp psnr\n", r"table.txt: unknown kind of file"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_malformed_files_name_the_file_and_the_line_or_key(name: str, tmp_path: Path) -> None:
    text, message = BAD_FILES[name]
    (tmp_path / name).write_text(text)
    df = pd.DataFrame({"dataset": ["sfu_hw"], "task": ["yolov7"], "codec": ["vtm"], "quality": ["22"],
                       "metric": ["map"], "value": [0.5], "bpp": [0.1]})  # fmt: skip
    with pytest.raises(VcmbenchError, match=message):
        imported_rows(df, [ImportSpec(tmp_path / name)])


def test_cli_import_errors_exit_2_naming_the_file(jpeg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "jpeg.json"
    path.write_text('{"name": "jpeg", "results": {"bpp": [0.1, 0.2, 0.3, 0.4], "psnr-rgb": [30, 31, 32, 33]}}')
    assert main(["report", str(jpeg_run), "--import", str(path)]) == 2  # the name is the run's codec's
    assert f"--import {path}: codec name 'jpeg' is taken" in capsys.readouterr().err
    assert main(["plot", str(jpeg_run), "--import", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such file" in capsys.readouterr().err
