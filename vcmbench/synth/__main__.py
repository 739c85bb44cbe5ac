"""``python -m vcmbench.synth``: generate (or regenerate) synth splits and run the format checks.

Examples::

    python -m vcmbench.synth                      # val, as `vcmbench run` would, then check it
    python -m vcmbench.synth --split train,val --force
    python -m vcmbench.synth --seed 1 --images val=200 --cache /data/synth
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .checks import check_clips, check_instances, check_panoptic
from .generate import SPLITS, config_from_settings, default_cache_root, ensure_split, is_complete, tree_digest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vcmbench.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--split", default="val", help="comma-separated splits [val]")
    p.add_argument("--cache", default=None, help="cache folder [$VCMBENCH_CACHE/synth]")
    p.add_argument("--seed", type=int, default=None, help="override the card's seed")
    p.add_argument("--images", action="append", default=[], metavar="SPLIT=N", help="override an image count")
    p.add_argument("--force", action="store_true", help="delete the splits first and generate them again")
    p.add_argument("--no-check", action="store_true", help="skip the format checks")
    args = p.parse_args(argv)

    from ..cards import CardSet

    settings = dict(CardSet().get("dataset", "synth").settings)
    if args.seed is not None:
        settings["seed"] = args.seed
    images = dict(settings.get("images") or {})
    for text in args.images:
        split, _, n = text.partition("=")
        images[split] = int(n)
    settings["images"] = images
    cfg = config_from_settings(settings)
    cache = Path(args.cache) if args.cache else (Path(settings["root"]) if settings.get("root") else default_cache_root())
    splits = [s.strip() for s in args.split.split(",") if s.strip()]
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        p.error(f"unknown split(s) {bad}; choose from {', '.join(SPLITS)}")
    failed = False
    for split in splits:
        root = cfg.root(cache)
        if args.force and is_complete(root, split):
            (root / f".complete-{split}.json").unlink()
            shutil.rmtree(root / split, ignore_errors=True)
        t0 = time.perf_counter()
        root = ensure_split(cfg, split, cache)
        print(f"{split}: {root} ({time.perf_counter() - t0:.1f} s) sha256 of its files {tree_digest(root, split)}")
        if not args.no_check:
            for check in (check_instances, check_panoptic, check_clips):
                problems = check(root, split)
                print(f"  {check.__name__}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
                for line in problems[:20]:
                    print(f"    {line}")
                failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
