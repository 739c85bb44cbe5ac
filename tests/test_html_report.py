"""``vcmbench report --html``: a real run on synth, the page written, checked offline and rendered in a real
headless browser (Debian's ``chromium``): every plot, table and thumbnail present, no script error."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from vcmbench.cli import main
from vcmbench.report import headline, with_psnr_rows
from vcmbench.report.decoded import decoded_views, draw_view
from vcmbench.run import RunConfig, run
from vcmbench.store import Store

QUALITIES = [10, 30, 50, 80]  # 4 points per curve: enough for a BD value
LIMIT = 2


def chromium() -> str:
    """The headless browser; missing is a failure under CI (which installs it), a visible skip elsewhere."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium is not installed: apt-get install -y chromium (Debian), as .ci/run does"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):  # as tests/ray_support.py reads CI
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """Output folder with two runs: A (jpeg and a 4:4:4 jpeg card), B (jpeg at other qualities)."""
    root = tmp_path_factory.mktemp("html")
    cards = root / "cards" / "codecs"
    cards.mkdir(parents=True)
    (cards / "jpeg444.yaml").write_text(yaml.safe_dump({"adapter": "jpeg", "version": 1, "qualities": QUALITIES,
                                                         "settings": {"subsampling": "4:4:4"}}))  # fmt: skip
    out = root / "out"
    common = dict(tasks=["synth_det"], datasets=["synth"], limit=LIMIT, progress=False, out=str(out),
                  cards_dirs=[str(root / "cards")])  # fmt: skip
    a = run(RunConfig(codecs=["jpeg", "jpeg444"], qualities={"*": QUALITIES}, **common))
    b = run(RunConfig(codecs=["jpeg"], qualities={"jpeg": [15, 35, 60, 90]}, **common))
    assert a.ok and b.ok, (a.failures, b.failures)
    return out, a.run_id, b.run_id


class Dom(HTMLParser):
    """Elements (tag, attributes, text inside) of a dumped DOM, enough to count and read them."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self.open: list[dict[str, Any]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = {"tag": tag, "attrs": dict(attrs), "text": "", "children": []}
        if self.open:
            self.open[-1]["children"].append(el)
        self.elements.append(el)
        if tag not in ("img", "meta", "br", "input", "link"):
            self.open.append(el)

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            el = self.open.pop()
            if el["tag"] == tag:
                break

    def handle_data(self, data: str) -> None:
        for el in self.open:
            el["text"] += data

    def find(self, tag: str, cls: str | None = None, **attrs: str) -> list[dict[str, Any]]:
        out = []
        for el in self.elements:
            classes = (el["attrs"].get("class") or "").split()
            if el["tag"] == tag and (cls is None or cls in classes) and all(el["attrs"].get(k) == v for k, v in attrs.items()):
                out.append(el)
        return out


def descendants(el: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    found = []
    for c in el["children"]:
        if c["tag"] == tag:
            found.append(c)
        found += descendants(c, tag)
    return found


def render(page: Path, tmp_path: Path) -> tuple[Dom, str, Path]:
    """The DOM after scripts ran, chromium's log (console messages included) and a screenshot."""
    exe = chromium()
    flags = [exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--enable-logging=stderr",
             "--v=0", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    snap = subprocess.run([*flags, "--window-size=1400,2000", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=180)  # fmt: skip
    assert snap.returncode == 0, snap.stderr[-2000:]
    return Dom(dom.stdout), dom.stderr + snap.stderr, shot


def console_problems(log: str) -> list[str]:
    """Console messages and uncaught errors in chromium's log (its own D-Bus/GPU noise is not the page's)."""
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def assert_no_external_reference(text: str) -> None:
    assert not re.findall(r"https?://", text), "the page names an external URL"
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*//""", text), "protocol-relative URL"
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", text):
        assert ref.startswith(("data:", "#")), f"reference to something outside the page: {ref[:80]}"


def expected_plots(results: pd.DataFrame) -> set[tuple[str, str, str]]:
    df = headline(with_psnr_rows(results))
    return set(zip(df.dataset, df.task, df.metric, strict=True))


def png_of(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def test_page_of_one_run_renders_every_plot_table_and_thumbnail(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    out, run_a, _ = runs
    run_dir = out / "runs" / run_a
    page = tmp_path / "report.html"
    assert main(["report", "--html", str(run_dir), "--out", str(page)]) == 0
    text = page.read_text()
    assert_no_external_reference(text)

    dom, log, shot = render(page, tmp_path)
    body = dom.find("body")[0]
    assert body["attrs"].get("data-js") == "ok", "the page's script did not run to its end"
    assert dom.find("pre", id="js-errors")[0]["text"].strip() == ""
    assert console_problems(log) == []

    results = pd.read_csv(run_dir / "results.csv", dtype={"quality": "string"})
    plots = dom.find("figure", "rd-plot")
    assert {(p["attrs"]["data-dataset"], p["attrs"]["data-task"], p["attrs"]["data-metric"]) for p in plots} == expected_plots(results)
    assert len(plots) == len(expected_plots(results))
    for p in plots:
        (img,) = descendants(p, "img")
        svg = base64.b64decode(img["attrs"]["src"].removeprefix("data:image/svg+xml;base64,"))
        assert svg.startswith(b"<svg") and b"<path" in svg
        if p["attrs"]["data-metric"] != "psnr":  # the uncompressed score: a dashed line (PSNR has none)
            assert b"stroke-dasharray" in svg

    (bd,) = dom.find("table", "bd")
    rows = descendants(bd, "tr")[1:]
    metrics = {m for _, _, m in expected_plots(results)}
    assert len(rows) == len(metrics)  # jpeg444 against the jpeg anchor, per metric
    header = [th["text"] for th in descendants(descendants(bd, "tr")[0], "th")]
    for tr in rows:
        cells = dict(zip(header, (td["text"] for td in descendants(tr, "td")), strict=True))
        assert cells["anchor"] == "jpeg" and cells["codec"] == "jpeg444"
        if not cells["bd_rate"]:
            assert cells["bd_rate_note"], f"empty BD-rate without its reason: {cells}"
    assert dom.find("p", "caption") and "BD-rate against jpeg" in dom.find("p", "caption")[0]["text"]

    (points,) = dom.find("table", "points")
    assert len(descendants(points, "tr")) - 1 == 1 + 2 * len(QUALITIES)

    thumbs = dom.find("figure", "thumb")
    assert len(thumbs) == LIMIT * (1 + 2 * len(QUALITIES))
    items = sorted({t["attrs"]["data-item"] for t in thumbs})
    assert len(items) == LIMIT
    for t in thumbs:
        (img,) = descendants(t, "img")
        assert png_of(img["attrs"]["src"]).shape[1] <= 320
        if t["attrs"]["data-codec"] != "uncompressed":
            assert re.search(r"\d+ bits · [\d.]+ bpp · PSNR [\d.]+ dB", t["text"]), t["text"]
    assert all(int(t["attrs"]["data-boxes"]) > 0 for t in thumbs if t["attrs"]["data-codec"] == "uncompressed")

    info = json.loads((run_dir / "run.json").read_text())
    (prov,) = dom.find("div", "prov")
    assert prov["attrs"]["data-run"] == run_a
    if info["provenance"]["git"]["commit"]:
        assert info["provenance"]["git"]["commit"] in prov["text"]
    assert info["provenance"]["packages"]["torch"] in prov["text"]
    assert "jpeg444" in prov["text"] and "4:4:4" in prov["text"]  # the cards, with their settings

    shot_px = np.asarray(Image.open(shot).convert("RGB"))
    assert shot_px.shape[:2] == (2000, 1400)
    assert len(np.unique(shot_px.reshape(-1, 3), axis=0)) > 500  # plots and pictures, not a blank page


def test_thumbnails_are_decoded_from_the_bitstreams_with_boxes_drawn(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    out, run_a, _ = runs
    views = decoded_views(out, run_a, ["1"])
    assert {v.item_id for v in views} == {"1"} and len(views) == 1 + 2 * len(QUALITIES)
    ref = next(v for v in views if v.codec == "uncompressed")
    for v in views:
        assert v.image is not None and v.image.shape == ref.image.shape and v.error == ""
        if v.codec != "uncompressed":
            assert v.bpp == pytest.approx(8 * v.nbytes / (v.image.shape[0] * v.image.shape[1]))
            assert 15 < v.psnr < 60 and not np.array_equal(v.image, ref.image)
    drawn, plain = draw_view(ref, 320, 0.25), draw_view(ref, 320, 2.0)  # no score reaches 2: nothing drawn
    assert np.array_equal(plain, ref.image) and not np.array_equal(drawn, plain)

    # a lost bitstream leaves that point's picture out, with the reason; the others still decode
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    store = Store(copy)
    try:
        (key,) = [r["encode_key"] for r in store.conn.execute(
            "SELECT encode_key FROM predictions WHERE codec='jpeg' AND quality='10' AND item_id='1'")]
        store.blob_path(store.encode_records([key])[key].blob).unlink()  # type: ignore[arg-type]
    finally:
        store.close()
    again = {(v.codec, v.quality): v for v in decoded_views(copy, run_a, ["1"])}
    assert again[("jpeg", "10")].image is None and "cannot decode" in again[("jpeg", "10")].error
    assert again[("jpeg", "30")].image is not None and again[("jpeg444", "10")].image is not None


def test_several_runs_overlay_in_one_page(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    out, run_a, run_b = runs
    page = tmp_path / "both.html"
    assert main(["report", "--html", str(out / "runs" / run_a), run_b, "--items", "2", "--out", str(page)]) == 0
    assert_no_external_reference(page.read_text())
    dom, log, _ = render(page, tmp_path)
    assert dom.find("body")[0]["attrs"].get("data-js") == "ok" and console_problems(log) == []
    assert dom.find("body")[0]["attrs"]["data-runs"] == "2"
    codecs = {t["attrs"]["data-codec"] for t in dom.find("figure", "thumb")}
    assert codecs == {"uncompressed", f"jpeg [{run_a}]", f"jpeg444 [{run_a}]", f"jpeg [{run_b}]"}
    assert {t["attrs"]["data-item"] for t in dom.find("figure", "thumb")} == {"2"}
    assert len(dom.find("figure", "thumb")) == 1 + 3 * len(QUALITIES)
    (bd,) = dom.find("table", "bd")
    n_metrics = len(dom.find("figure", "rd-plot"))
    assert len(descendants(bd, "tr")) - 1 == 2 * n_metrics  # two labelled codecs against the anchor
    assert {p["attrs"]["data-run"] for p in dom.find("div", "prov")} == {run_a, run_b}


def test_the_console_check_catches_a_script_error(runs: tuple[Path, str, str], tmp_path: Path) -> None:
    """The checks above could fail: a page whose script throws is caught by both the DOM hook and the log."""
    out, run_a, _ = runs
    page = tmp_path / "report.html"
    assert main(["report", "--html", str(out / "runs" / run_a), "--out", str(page), "--first", "1"]) == 0
    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("</main>", "<script>console.error('boom');undefinedCall();</script></main>"))
    dom, log, _ = render(broken, tmp_path)
    assert "undefinedCall" in dom.find("pre", id="js-errors")[0]["text"]
    assert "boom" in dom.find("pre", id="js-errors")[0]["text"]
    assert console_problems(log)
