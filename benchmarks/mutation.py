"""The mutation lane: mutmut on the core modules, each with the fast tests that cover it.

Run on demand (not in the default test run or CI): ``benchmarks/mutation.sh [NAME ...]``. The modules and
their test files are in ``benchmarks/mutation.toml``. Each module is mutated in its own working folder
``.mutation/NAME/`` (git-ignored): mutmut copies the package into ``.mutation/NAME/mutants/`` and changes
the copy only, so the working tree is never modified and the normal test run never sees a mutant.

Prints, per module, the mutants killed / total (the score; a timeout counts as killed, a mutant no test
reaches as survived), the target, the time per mutant, and the names of the surviving mutants (with
``--diffs``, each one's diff). Exit status 1 when a module is under its target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "benchmarks" / "mutation.toml"
#: mutmut exit codes per mutant that mean "the tests noticed": a failing test (1, 3) or a timeout
KILLED_STATUSES = {"killed", "timeout", "caught by type check"}
#: folders some tests read beside the package (besides tests/, which mutmut copies anyway)
COPIED = ["benchmarks", "docs", "results"]


def read_config(path: Path = CONFIG) -> dict:
    with path.open("rb") as f:
        return tomllib.load(f)


def setup_cfg(module: dict, settings: dict) -> str:
    """mutmut's configuration of one module (a ``[mutmut]`` section of setup.cfg)."""

    def lines(values: list[str]) -> str:
        return "\n    ".join(values)

    return (
        "[mutmut]\n"
        "source_paths = vcmbench\n"
        f"only_mutate = {lines(module['mutate'])}\n"
        f"pytest_add_cli_args_test_selection = {lines(module['tests'])}\n"
        f"pytest_add_cli_args = {lines(pytest_args(module))}\n"
        f"timeout_multiplier = {settings.get('timeout_multiplier', 5.0)}\n"
        f"timeout_constant = {settings.get('timeout_constant', 2.0)}\n"
        "use_git_change_detection = false\n"
        f"also_copy = {lines(COPIED)}\n"
    )


def pytest_args(module: dict) -> list[str]:
    """pytest's options for a module's runs: no cache, and each ``deselect`` node id (a prefix: a slow test
    that the default test run keeps but the lane leaves out) deselected."""
    args = ["-p", "no:cacheprovider"]
    for node in module.get("deselect", []):
        args += ["--deselect", node]
    return args


def prepare(work: Path, module: dict, settings: dict, keep: bool) -> None:
    """A working folder holding links to the package, the tests and pyproject.toml, and mutmut's config."""
    if work.exists() and not keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("vcmbench", "tests", "pyproject.toml", *COPIED):
        link = work / name
        if not link.is_symlink():
            link.symlink_to(REPO / name)
    missing = [t for t in module["tests"] if not (REPO / t).exists()]
    if missing:
        raise SystemExit(f"{module['config']}: test file(s) {missing} do not exist; fix the module's tests =")
    (work / "setup.cfg").write_text(setup_cfg(module, settings))


def run_mutmut(work: Path, workers: int, log: Path) -> float:
    """Run mutmut in ``work``; its output goes to ``log``. Returns the wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", VCMBENCH_CARDS_ROOT=str(REPO))
    env.setdefault("VCMBENCH_SHARED", str(REPO.parent / "shared"))
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers)],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"mutmut failed in {work} (exit {proc.returncode}); log {log}:\n{tail}")
    return elapsed


def results(work: Path, module: dict) -> dict[str, str]:
    """Each mutant's status (mutmut's words: killed, survived, no tests, timeout, ...)."""
    from mutmut.stats import status_by_exit_code

    out: dict[str, str] = {}
    for path in module["mutate"]:
        meta = work / "mutants" / (path + ".meta")
        if not meta.exists():
            raise SystemExit(f"{meta} missing: mutmut made no mutants of {path}")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out.update({name: status_by_exit_code[code] for name, code in codes.items()})
    return out


def show(work: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True)
    return proc.stdout


def report(name: str, module: dict, statuses: dict[str, str], elapsed: float) -> dict:
    killed = sum(s in KILLED_STATUSES for s in statuses.values())
    total = len(statuses)
    score = 100.0 * killed / total if total else 100.0
    survivors = sorted(m for m, s in statuses.items() if s not in KILLED_STATUSES)
    return {
        "module": name, "killed": killed, "total": total, "score": round(score, 1), "target": module["target"],
        "seconds": round(elapsed, 1), "seconds_per_mutant": round(elapsed / max(total, 1), 2),
        "survivors": {m: statuses[m] for m in survivors},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=CONFIG)
    config_path = pre.parse_known_args(argv)[0].config
    config = read_config(config_path)
    modules, settings = config["modules"], config.get("settings", {})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=CONFIG, help="modules and tests [benchmarks/mutation.toml]")
    p.add_argument("names", nargs="*", help=f"modules to mutate [all]: {', '.join(modules)}")
    p.add_argument("--workers", type=int, default=settings.get("workers", 1), help="mutmut workers [1]")
    p.add_argument("--work", type=Path, default=REPO / ".mutation", help="working folders [.mutation/]")
    p.add_argument("--keep", action="store_true", help="reuse a module's mutants and results from the last run")
    p.add_argument("--diffs", action="store_true", help="print the diff of each surviving mutant")
    p.add_argument("--list", action="store_true", help="list the modules and their tests, run nothing")
    args = p.parse_args(argv)
    unknown = set(args.names) - set(modules)
    if unknown:
        p.error(f"unknown module(s) {sorted(unknown)}; known: {', '.join(modules)}")
    names = args.names or list(modules)
    for n in names:
        modules[n]["config"] = config_path
    if args.list:
        for n in names:
            print(f"{n:<18} mutate {' '.join(modules[n]['mutate'])}\n{'':<18} tests  {' '.join(modules[n]['tests'])}")
        return 0
    summary = []
    for n in names:
        work = args.work / n
        prepare(work, modules[n], settings, args.keep)
        print(f"== {n}: mutating {', '.join(modules[n]['mutate'])} (log {work / 'mutmut.log'})", flush=True)
        elapsed = run_mutmut(work, args.workers, work / "mutmut.log")
        row = report(n, modules[n], results(work, modules[n]), elapsed)
        summary.append(row)
        print(f"   {row['killed']}/{row['total']} killed = {row['score']} % (target {row['target']} %), "
              f"{row['seconds']} s, {row['seconds_per_mutant']} s per mutant", flush=True)  # fmt: skip
        for m, status in row["survivors"].items():
            print(f"   {status:>9}: {m}")
            if args.diffs:
                print("      " + show(work, m).replace("\n", "\n      "))
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    print("\nmodule              killed/total   score  target")
    for row in summary:
        flag = "" if row["score"] >= row["target"] else "  BELOW TARGET"
        print(f"{row['module']:<18} {row['killed']:>6}/{row['total']:<6} {row['score']:>6.1f} {row['target']:>6}{flag}")
    return 0 if all(r["score"] >= r["target"] for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
