"""The BD table of docs/learned_coco-mini_report.md under the BD rules of issue 14, from that doc alone.

The run behind that report is not kept; its RD points are in the doc's first table. This script
rebuilds a results.csv from them (one row per unit and metric, ``face_recall`` marked lower-is-better
as the faces task now declares it), then runs ``vcmbench report --anchor jpeg`` on it, so the printed
BD table shows which cells are now empty and why. Extra arguments go to ``vcmbench report`` (e.g.
``--allow-short`` to see the values the old report printed, now marked). ``--doc`` reads another report
of the same layout (docs/coco-mini_report.md, docs/learned_synth_faces_report.md).

    python benchmarks/learned_report_bd.py [--doc DOC] [--out DIR] [vcmbench report options]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

DOC = Path(__file__).resolve().parents[1] / "docs" / "learned_coco-mini_report.md"
RATE_COLUMNS = ("dataset", "task", "codec", "quality", "bpp", "psnr", "kbps", "n_items", "n_failed")
LOWER_IS_BETTER = {"face_recall"}


def first_table(markdown: str) -> pd.DataFrame:
    """The first Markdown table of ``markdown`` as strings (empty cells as "")."""
    lines = [ln.strip() for ln in markdown.splitlines()]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    return pd.DataFrame(block[2:], columns=block[0])


def results_from_doc(doc: Path = DOC) -> pd.DataFrame:
    """A tidy results table (the columns ``vcmbench report`` reads) rebuilt from the doc's RD points."""
    table = first_table(doc.read_text())
    rows = []
    for r in table.itertuples():
        for metric in (c for c in table.columns if c not in RATE_COLUMNS):
            value = getattr(r, metric)
            if value == "":
                continue
            rows.append({
                "dataset": r.dataset, "task": r.task, "codec": r.codec, "quality": r.quality, "metric": metric,
                "headline": True, "lower_is_better": metric in LOWER_IS_BETTER, "value": float(value),
                "bpp": float(r.bpp) if r.bpp else None, "psnr": float(r.psnr) if r.psnr else None,
                "n_items": int(r.n_items), "n_failed": int(r.n_failed),
            })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    from vcmbench.cli import main as vcmbench

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default=None, help="folder for results.csv, bd_rate.csv, report.md [a temp folder]"
    )
    p.add_argument(
        "--doc", type=Path, default=DOC, help="a report whose first table is RD points [%(default)s]"
    )
    args, rest = p.parse_known_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="learned_bd_"))
    out.mkdir(parents=True, exist_ok=True)
    results_from_doc(args.doc).to_csv(out / "results.csv", index=False)
    return vcmbench(["report", str(out / "results.csv"), "--anchor", "jpeg", *rest])


if __name__ == "__main__":
    sys.exit(main())
