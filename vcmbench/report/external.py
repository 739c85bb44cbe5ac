"""CTC tables in and out: the per-sequence table of the MPEG FCM/VCM reporting template, and external RD points.

Out (``vcmbench export --format ctc``): one CSV per dataset x task x headline metric, one row per sequence
(clip datasets; then each class, then the whole dataset) x codec x QP, in the layout of the ``final_<DATASET>.csv``
that CompressAI-Vision's ``scripts/metrics/gen_mpeg_cttc_csv.py`` writes for the MPEG template (followed at
commit 31165daf62af4e7fff02b39ba23b39e8c24278b1 of InterDigitalInc/CompressAI-Vision, with the per-sequence
``summary.csv`` columns of ``compressai_vision/run/eval_split_inference.py``): ``Dataset`` (the sequence), ``qp``,
``bitrate (kbps)`` (clips) or ``avg_bpp`` (images), ``end_accuracy`` (the metric in percent, as the template
has it: one metric per file, like that script's ``--metric AP`` / ``AP50``). vcmbench adds ``class``,
``avg_bpp`` for clips too (the exact rate its BD-rates use), ``codec``, ``dataset``, ``task`` and ``metric``.
Class rows are named ``CLASS-<X>`` as in that script, the whole dataset ``Overall``; their rates and
accuracies are vcmbench's (see docs/ctc.md), not recomputed the template's way.

In (``vcmbench report/plot --import [NAME=]FILE``): such a CSV (vcmbench's, or CompressAI-Vision's
``final_SFU.csv``), or a CompressAI results JSON (``python -m compressai.utils.eval_model ... -o out.json``,
the input of ``compressai.utils.plot``: ``{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...], ...}}``),
become rows of the tidy results table under their own codec name, marked ``imported``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets.sfu_hw import SEQUENCES
from ..errors import VcmbenchError
from ..plan import REFERENCE
from .items import ItemSets, Unit
from .plot import slug

#: the exported columns: the template's first (Dataset, qp, bitrate (kbps), end_accuracy), then vcmbench's
CTC_COLUMNS = ["Dataset", "class", "qp", "bitrate (kbps)", "avg_bpp", "end_accuracy", "codec", "dataset", "task",
               "metric"]  # fmt: skip
#: the whole dataset's row, and the prefix of class rows (CompressAI-Vision's ``CLASS-C``)
OVERALL = "Overall"
CLASS_PREFIX = "CLASS-"
#: CompressAI results keys -> vcmbench metric names (``compressai.utils.eval_model`` writes the ``-rgb`` ones)
COMPRESSAI_METRICS = {"psnr-rgb": "psnr", "psnr": "psnr", "ms-ssim-rgb": "ms_ssim", "ms-ssim": "ms_ssim"}
#: CompressAI results keys that are not quality metrics
COMPRESSAI_SKIP = {"bpp", "encoding_time", "decoding_time", "bpp_y", "bpp_uv"}
IMPORTED_MARK = " (imported)"
_SIZED_NAME = re.compile(r"^(?P<name>.+?)_(?P<w>\d+)x(?P<h>\d+)_(?P<fps>\d+(?:\.\d+)?)$")


# ---- out -----------------------------------------------------------------------------------------
def _class_of(sequence: str, classes: Sequence[str]) -> str:
    """The class letter of a sequence: the dataset's table, else the only class group of the run."""
    if sequence in SEQUENCES:
        return SEQUENCES[sequence][0]
    return classes[0].removeprefix("Class") if len(classes) == 1 else ""


def _class_cell(group: str | None, classes: Sequence[str]) -> str:
    """The ``class`` cell of a row: the class's letter, a sequence's class, empty for the whole dataset."""
    if group is None:
        return ""
    return group.removeprefix("Class") if group.startswith("Class") else _class_of(group, classes)


def _ctc_name(group: str | None) -> str:
    if group is None:
        return OVERALL
    return CLASS_PREFIX + group.removeprefix("Class") if group.startswith("Class") else group


def _percent(value: Any) -> float:
    return float("nan") if value is None or pd.isna(value) else 100.0 * float(value)


def _qp_order(quality: Any) -> tuple[int, float, str]:
    try:
        return (0, float(quality), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(quality))


def ctc_rows(tidy: pd.DataFrame, dataset: str, task: str, metric: str) -> pd.DataFrame:
    """The CTC table of one dataset x task x base metric (see the module docstring)."""
    rows = tidy[(tidy.dataset == dataset) & (tidy.task == task) & (tidy.codec != REFERENCE)]
    names = rows.metric.astype(str)
    rows = rows[(names == metric) | names.str.startswith(metric + "/")]
    group = [m.split("/", 1)[1] if "/" in m else None for m in rows.metric.astype(str)]
    classes = sorted({g for g in group if g is not None and g.startswith("Class")})
    clips = "kbps" in rows.columns and rows.kbps.notna().any()
    out = pd.DataFrame({
        "Dataset": [_ctc_name(g) for g in group],
        "class": [_class_cell(g, classes) for g in group],
        "qp": rows.quality.astype(str).to_numpy(), "bitrate (kbps)": rows.kbps.to_numpy() if clips else float("nan"),
        "avg_bpp": rows.bpp.to_numpy(), "end_accuracy": [_percent(v) for v in rows.value], "codec": rows.codec.to_numpy(),
        "dataset": dataset, "task": task, "metric": metric,
    }, columns=CTC_COLUMNS)  # fmt: skip
    kind = [2 if g is None else 1 if g.startswith("Class") else 0 for g in group]
    order = sorted(range(len(out)), key=lambda i: (str(out.codec[i]), kind[i], str(out.Dataset[i]), _qp_order(out.qp[i])))
    return out.loc[order].reset_index(drop=True)


def headline_metrics(tidy: pd.DataFrame, dataset: str, task: str) -> list[str]:
    """The base metrics a dataset x task reports as its headline (every metric when none is marked)."""
    rows = tidy[(tidy.dataset == dataset) & (tidy.task == task)]
    if "headline" in rows.columns:
        marked = rows[rows.headline.astype(str).str.lower().isin(["true", "1"])]
        rows = marked if not marked.empty else rows
    return sorted({str(m).split("/", 1)[0] for m in rows.metric})


def write_ctc_tables(tidy: pd.DataFrame, dest: Path) -> list[Path]:
    """One ``ctc_<dataset>_<task>_<metric>.csv`` per dataset x task x headline metric of a run; the paths."""
    written = []
    for (ds, task), _ in tidy.groupby(["dataset", "task"], sort=False):
        for metric in headline_metrics(tidy, str(ds), str(task)):
            table = ctc_rows(tidy, str(ds), str(task), metric)
            if table.empty:
                continue
            path = dest / f"{slug(f'ctc_{ds}_{task}_{metric}')}.csv"
            table.to_csv(path, index=False)
            written.append(path)
    return written


# ---- in ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportSpec:
    """One ``--import [NAME=]FILE``: the file, and the codec name its curve gets (None: from the file)."""

    path: Path
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> ImportSpec:
        name, sep, path = text.partition("=")
        if sep and name and "/" not in name and not Path(text).exists():
            return cls(Path(path), name)
        return cls(Path(text))


@dataclass
class ImportedPoints:
    """Points read from one file: (codec, quality, metric, bpp, kbps, value, Dataset, dataset, task)."""

    path: Path
    points: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _number(path: Path, where: str, what: str, text: Any) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise VcmbenchError(f"{path}: {where}: {what} is not a number: {text!r}") from None
    if math.isinf(value):
        raise VcmbenchError(f"{path}: {where}: {what} is infinite: {text!r}")
    return value


def _pixel_rate(dataset_name: str) -> float | None:
    """Pixels per second of a sequence: from a ``Name_WxH_fps`` name (CompressAI-Vision's) or the SFU-HW table."""
    m = _SIZED_NAME.match(dataset_name)
    if m:
        return int(m["w"]) * int(m["h"]) * float(m["fps"])
    if dataset_name in SEQUENCES:
        _, w, h, fps, _ = SEQUENCES[dataset_name]
        return float(w * h * fps)
    return None


def sequence_name(dataset_name: str) -> str:
    """vcmbench's item id of a CTC ``Dataset`` cell: ``BQMall_832x480_60`` -> ``BQMall``, ``RaceHorses_416x240_30``
    -> ``RaceHorsesD`` (the SFU-HW name of that size); other names as they are."""
    m = _SIZED_NAME.match(dataset_name)
    if not m:
        return dataset_name
    size = (int(m["w"]), int(m["h"]))
    for key, (_, w, h, _, _) in SEQUENCES.items():
        if (key == m["name"] or key.rstrip("ABCDE") == m["name"]) and (w, h) == size:
            return key
    return m["name"]


def _ctc_metric(base: str, name: str, image_table: bool) -> str:
    if image_table or name == OVERALL:
        return base
    if name.startswith(CLASS_PREFIX):
        return f"{base}/Class{name.removeprefix(CLASS_PREFIX)}"
    return f"{base}/{sequence_name(name)}"


def _ctc_bpp(path: Path, line: int, row: dict[str, str], kbps: float | None) -> float | None:
    """The row's bpp: ``avg_bpp``, else its kbps over the sequence's pixel rate (None for a class row without it)."""
    text = (row.get("avg_bpp") or "").strip()
    if text:
        return _number(path, f"line {line}", "column 'avg_bpp'", text)
    rate = _pixel_rate(row["Dataset"].strip())
    if kbps is None or rate is None:
        return None
    return kbps * 1000.0 / rate


def read_ctc_csv(path: Path, default_metric: str) -> ImportedPoints:
    """The points of a CTC table (vcmbench's ``export --format ctc``, or CompressAI-Vision's ``final_*.csv``)."""
    out = ImportedPoints(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h for h in (reader.fieldnames or []) if h]
            missing = [c for c in ("Dataset", "qp", "end_accuracy") if c not in header]
            if not {"bitrate (kbps)", "avg_bpp"} & set(header):
                missing.append("bitrate (kbps) or avg_bpp")
            if missing:
                raise VcmbenchError(f"{path}: line 1 (header): missing column(s) {', '.join(map(repr, missing))}; "
                                    f"a CTC table has {', '.join(CTC_COLUMNS[:6])} (see docs/ctc.md)")  # fmt: skip
            image_table = "bitrate (kbps)" not in header
            skipped = []
            for line, row in enumerate(reader, start=2):
                point = _ctc_point(path, line, row, default_metric, image_table)
                if point is None:
                    skipped.append(row["Dataset"].strip())
                else:
                    out.points.append(point)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VcmbenchError(f"cannot read CTC table {path}: {exc}") from None
    if skipped:
        out.notes.append(f"{path}: rows of {', '.join(sorted(set(skipped)))} have no avg_bpp and no known pixel "
                         "rate (a class row of a template file): left out")  # fmt: skip
    if not out.points:
        raise VcmbenchError(f"{path}: no RD point with a rate and an accuracy")
    return out


def _ctc_point(path: Path, line: int, row: dict[str, str], default_metric: str, image_table: bool) -> dict[str, Any] | None:
    name = (row.get("Dataset") or "").strip()
    if not name:
        raise VcmbenchError(f"{path}: line {line}: column 'Dataset' is empty")
    if None in row:
        raise VcmbenchError(f"{path}: line {line}: more cells than the header has columns")
    kbps_text = (row.get("bitrate (kbps)") or "").strip()
    kbps = _number(path, f"line {line}", "column 'bitrate (kbps)'", kbps_text) if kbps_text else None
    value = _number(path, f"line {line}", "column 'end_accuracy'", (row.get("end_accuracy") or "").strip()) / 100.0
    bpp = _ctc_bpp(path, line, row, kbps)
    if bpp is None:
        if not name.startswith(CLASS_PREFIX) and name != OVERALL:
            raise VcmbenchError(f"{path}: line {line}: sequence {name!r} has no avg_bpp, and its pixel rate is not "
                                "known (name it Name_WxH_fps, or add an avg_bpp column)")  # fmt: skip
        return None
    base = (row.get("metric") or "").strip() or default_metric
    return {"codec": (row.get("codec") or "").strip() or None, "quality": (row.get("qp") or "").strip(),
            "metric": _ctc_metric(base, name, image_table), "bpp": bpp, "kbps": kbps, "value": value,
            "dataset": (row.get("dataset") or "").strip() or None, "task": (row.get("task") or "").strip() or None}  # fmt: skip


def _json_list(path: Path, key: str, values: Any) -> list[float]:
    if not isinstance(values, list):
        raise VcmbenchError(f"{path}: key results.{key} is not a list of numbers (got {type(values).__name__})")
    return [_number(path, f"key results.{key}[{i}]", "the value", v) for i, v in enumerate(values)]


def read_compressai_json(path: Path) -> ImportedPoints:
    """The points of a CompressAI results JSON (see the module docstring): one point per rate, metrics by key."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VcmbenchError(f"{path}: not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VcmbenchError(f"cannot read {path}: {exc}") from None
    results = data.get("results", data) if isinstance(data, dict) else None
    if not isinstance(results, dict) or "bpp" not in results:
        raise VcmbenchError(f"{path}: no key results.bpp; a CompressAI results file is "
                            '{"name": ..., "results": {"bpp": [...], "psnr-rgb": [...]}}')  # fmt: skip
    bpp = _json_list(path, "bpp", results["bpp"])
    name = data.get("name") if isinstance(data.get("name"), str) else path.stem
    out = ImportedPoints(path)
    psnr = next((results[k] for k in ("psnr-rgb", "psnr") if k in results), None)  # the points' psnr column
    for key, values in results.items():
        if key in COMPRESSAI_SKIP:
            continue
        metric_values = _json_list(path, key, values)
        if len(metric_values) != len(bpp):
            raise VcmbenchError(f"{path}: key results.{key} has {len(metric_values)} values, results.bpp {len(bpp)}")
        metric = COMPRESSAI_METRICS.get(key, key)
        for i, (rate, value) in enumerate(zip(bpp, metric_values, strict=True)):
            out.points.append({"codec": name, "quality": str(i + 1), "metric": metric, "bpp": rate, "kbps": None,
                               "value": value, "dataset": None, "task": None,
                               "psnr": float(psnr[i]) if psnr is not None else None})  # fmt: skip
    if not out.points:
        raise VcmbenchError(f"{path}: results hold bpp but no metric key (e.g. psnr-rgb)")
    return out


def read_external(spec: ImportSpec, default_metric: str) -> ImportedPoints:
    """The points of one ``--import`` file, by its suffix: ``.json`` CompressAI results, ``.csv`` a CTC table."""
    suffix = spec.path.suffix.lower()
    if not spec.path.is_file():
        raise VcmbenchError(f"--import {spec.path}: no such file")
    if suffix == ".json":
        return read_compressai_json(spec.path)
    if suffix == ".csv":
        return read_ctc_csv(spec.path, default_metric)
    raise VcmbenchError(f"--import {spec.path}: unknown kind of file; give a .csv CTC table or a .json CompressAI results file")


def _codec_names(spec: ImportSpec, pts: ImportedPoints, taken: set[str]) -> dict[str | None, str]:
    """File codec -> the curve's codec name: NAME (NAME-<codec> for a file of several codecs), else the file's."""
    own = list(dict.fromkeys(p["codec"] for p in pts.points))
    if spec.name:
        names = {c: spec.name if len(own) == 1 else f"{spec.name}-{c}" for c in own}
    else:
        names = {c: c or spec.path.stem for c in own}
    clash = sorted(set(names.values()) & taken)
    if clash:
        raise VcmbenchError(f"--import {spec.path}: codec name {clash[0]!r} is taken (a codec of the run, or another "
                            f"import); name this one with --import NAME={spec.path}")  # fmt: skip
    return names


def _pairs(df: pd.DataFrame, p: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    """(dataset, task) the point belongs to: its own, else every one of the results table."""
    if p["dataset"] and p["task"]:
        return [(p["dataset"], p["task"])]
    pairs = list(dict.fromkeys(zip(df.dataset.astype(str), df.task.astype(str), strict=True)))
    if not pairs:
        raise VcmbenchError(f"--import {path}: the results table has no dataset x task to put its points in")
    return pairs


def imported_rows(df: pd.DataFrame, specs: Iterable[ImportSpec], default_metric: str = "map") -> tuple[pd.DataFrame, list[str]]:
    """``df`` (a tidy results table) with the points of every import added as rows of their own codecs
    (``imported`` = the file; headline and direction as the table's rows of the same metric), and notes."""
    specs = list(specs)
    if not specs:
        return df, []
    taken = {str(c) for c in df.codec}
    flags = _metric_flags(df)
    rows, notes = [], []
    for spec in specs:
        pts = read_external(spec, default_metric)
        notes += pts.notes
        names = _codec_names(spec, pts, taken)
        taken |= set(names.values())
        for p in pts.points:
            headline, lower = flags.get(p["metric"], (p["metric"] == "psnr", False))
            for ds, task in _pairs(df, p, spec.path):
                rows.append({"dataset": ds, "task": task, "codec": names[p["codec"]], "quality": p["quality"],
                             "metric": p["metric"], "headline": headline, "lower_is_better": lower, "value": p["value"],
                             "bpp": p["bpp"], "kbps": p["kbps"], "psnr": p.get("psnr"), "imported": str(spec.path)})  # fmt: skip
    extra = pd.DataFrame(rows).astype({"quality": "string"})
    extra = extra.iloc[extra.metric.str.contains("/", regex=False).argsort(kind="stable")]  # a unit's own rate first
    return pd.concat([df, extra], ignore_index=True), notes


def _metric_flags(df: pd.DataFrame) -> dict[str, tuple[bool, bool]]:
    """metric -> (headline, lower is better) as the results table marks them."""
    out: dict[str, tuple[bool, bool]] = {}
    for r in df.drop_duplicates("metric").itertuples():
        head = str(getattr(r, "headline", False)).lower() in ("true", "1")
        lower = str(getattr(r, "lower_is_better", False)).lower() in ("true", "1")
        out[str(r.metric)] = (head, lower)
    return out


def imported_codecs(df: pd.DataFrame) -> frozenset[str]:
    """The codecs of a results table that were imported (``--import``)."""
    if "imported" not in df.columns:
        return frozenset()
    return frozenset(str(c) for c in df.codec[df.imported.notna()])


@dataclass(frozen=True)
class ItemSetsWithImports(ItemSets):
    """Item sets of a run, with imported curves (whose items are unknown) left out of the item checks."""

    imported: frozenset[str] = frozenset()

    @classmethod
    def of(cls, items: ItemSets, imported: frozenset[str]) -> ItemSets:
        return cls(sets=items.sets, counts=items.counts, imported=imported) if imported else items

    def mismatch(self, units: Iterable[Unit]) -> str:
        return super().mismatch([u for u in units if u[2] not in self.imported])

    def marks(self, units: Iterable[Unit]) -> dict[Unit, str]:
        return super().marks([u for u in units if u[2] not in self.imported])


def mark_imported(table: pd.DataFrame, names: frozenset[str], columns: Sequence[str] = ("codec", "anchor")) -> pd.DataFrame:
    """``table`` with each imported codec's name marked `` (imported)`` in ``columns`` (for printing and legends)."""
    if not names or table.empty:
        return table
    out = table.copy()
    for col in columns:
        if col in out.columns:
            out[col] = out[col].map(lambda c: f"{c}{IMPORTED_MARK}" if str(c) in names else c)
    return out


def note_imported(bd: pd.DataFrame, names: frozenset[str]) -> pd.DataFrame:
    """A BD table whose values involving an imported curve say so in their notes (its items are unknown)."""
    if not names or bd.empty:
        return bd
    out = bd.copy()
    hit = out.codec.astype(str).isin(names) | out.anchor.astype(str).isin(names)
    note = "imported curve: items not checked"
    for col in ("bd_rate_note", "bd_metric_note"):
        out[col] = out[col].astype(object)
        out.loc[hit, col] = [f"{v}; {note}" if isinstance(v, str) and v else note for v in out.loc[hit, col]]
    return out
