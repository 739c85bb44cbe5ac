"""What a run writes besides the store: ``runs/<run_id>/results.csv`` (tidy), ``items.csv`` (per item)
and ``run.json`` (config, resolved cards, units, work, failures, provenance); ``run.log`` next to them is
written while the run works (:mod:`.runlog`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..plan import WorkUnit
from ..store import TIDY_COLUMNS, Store
from .config import RunConfig
from .context import Failure
from .cost import COST_COLUMNS
from .resolve import ResolvedRun


def config_record(cfg: RunConfig, res: ResolvedRun, units: Sequence[WorkUnit]) -> dict[str, Any]:
    """The run's configuration as stored: the config, every resolved card, every unit."""
    record = asdict(cfg)
    record["cards"] = {
        n: {"path": str(c.path), "digest": c.digest(), "adapter": c.adapter, "version": c.version,
            "settings": dict(c.settings)}
        for n, c in res.cards.items()
    }  # fmt: skip
    record["units"] = [{"label": u.label(), "key": u.key, "codec_id": u.codec_id, "task_id": u.task_id} for u in units]
    return record


def write_outputs(store: Store, run_dir: Path, run_id: str, status: str, rows: list[dict[str, Any]],
                  work: dict[str, int], failures: Sequence[Failure], config: dict[str, Any]) -> None:  # fmt: skip
    import pandas as pd

    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=[*TIDY_COLUMNS, *COST_COLUMNS]).to_csv(run_dir / "results.csv", index=False)
    pd.DataFrame(store.per_item_rows(run_id)).to_csv(run_dir / "items.csv", index=False)
    info = store.run_info(run_id)
    meta = {
        "run_id": run_id, "status": status, "work": work, "failures": [asdict(f) for f in failures],
        "config": config, "provenance": json.loads(info["provenance"]) if info else {},
    }  # fmt: skip
    (run_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str))
