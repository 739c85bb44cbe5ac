"""The mutation lane: mutmut on the core modules, each with the fast tests that cover it.

Run on demand (not in the default test run or CI): ``benchmarks/mutation.sh [NAME ...]``. The modules and
their test files are in ``benchmarks/mutation.toml``. Each module is mutated in its own working folder
``.mutation/NAME/`` (git-ignored): mutmut copies the package into ``.mutation/NAME/mutants/`` and changes
the copy only, so the working tree is never modified and the normal test run never sees a mutant.

With ``--sample N``, each module runs a random sample of N of its mutants (``--seed``) instead of all of
them, for modules whose covering tests are slow: the score is then the sample's, printed with its 95 %
Wilson interval.

Prints, per module, the mutants killed / total (the score; a timeout counts as killed, a mutant no test
reaches as survived), the target, the time per mutant, and the names of the surviving mutants (with
``--diffs``, each one's diff). Exit status 1 when a module is under its target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
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


def mutmut_env() -> dict[str, str]:
    """mutmut's environment: one thread, the built-in cards of this repository, the shared data folder."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", VCMBENCH_CARDS_ROOT=str(REPO))
    env.setdefault("VCMBENCH_SHARED", str(REPO.parent / "shared"))
    return env


def run_mutmut(work: Path, workers: int, log: Path, names: list[str] | None = None) -> float:
    """Run mutmut in ``work`` (only the mutants ``names``, where given); its output goes to ``log``.
    Returns the wall time in seconds."""
    env = mutmut_env()
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *(names or [])],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"mutmut failed in {work} (exit {proc.returncode}); log {log}:\n{tail}")
    return elapsed


#: a mutant name that matches no mutant: ``mutmut run`` with it generates the mutants and records which test
#: calls which function, then stops before running any mutant (mutmut says "nothing matches")
NO_MUTANT = "vcmbench.no_such_function__mutmut_0"


def generate_only(work: Path, log: Path) -> None:
    """Generate a module's mutants and mutmut's test statistics without running a mutant."""
    env = mutmut_env()
    with log.open("w") as out:
        subprocess.run([sys.executable, "-m", "mutmut", "run", NO_MUTANT], cwd=work, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=False)  # fmt: skip
    if "nothing matches" not in log.read_text(errors="replace"):
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"mutmut could not generate the mutants in {work}; log {log}:\n{tail}")


def draw_sample(names: list[str], size: int, seed: int) -> list[str]:
    """``size`` of the mutant ``names`` drawn at random (all of them when there are no more)."""
    names = sorted(names)
    return names if size >= len(names) else sorted(random.Random(seed).sample(names, size))


def wilson_interval(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval (in %) of a share ``killed / total`` measured on a sample."""
    if total == 0:
        return (0.0, 100.0)
    p = killed / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1))


def run_sample(work: Path, module: dict, workers: int, size: int, seed: int) -> tuple[list[str], float]:
    """Generate the mutants, then run ``size`` of them drawn at random. Returns the sample and the wall time."""
    start = time.monotonic()
    if not (work / "mutants").exists():
        generate_only(work, work / "mutmut-generate.log")
    sample = draw_sample(list(results(work, module)), size, seed)
    run_mutmut(work, workers, work / "mutmut.log", sample)
    return sample, time.monotonic() - start


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


def report(name: str, module: dict, statuses: dict[str, str], elapsed: float, population: int | None = None) -> dict:
    """A module's score; ``population`` (the module's number of mutants) when ``statuses`` is a sample."""
    killed = sum(s in KILLED_STATUSES for s in statuses.values())
    total = len(statuses)
    score = 100.0 * killed / total if total else 100.0
    survivors = sorted(m for m, s in statuses.items() if s not in KILLED_STATUSES)
    row = {
        "module": name, "killed": killed, "total": total, "score": round(score, 1), "target": module["target"],
        "seconds": round(elapsed, 1), "seconds_per_mutant": round(elapsed / max(total, 1), 2),
        "survivors": {m: statuses[m] for m in survivors},
    }  # fmt: skip
    if population is not None:
        row.update(sampled_from=population, interval=wilson_interval(killed, total))
    return row


def run_module(name: str, module: dict, work: Path, args: argparse.Namespace) -> dict:
    """Run one module's mutants (all, or ``args.sample`` of them) and score them."""
    if args.sample is None:
        elapsed = run_mutmut(work, args.workers, work / "mutmut.log")
        return report(name, module, results(work, module), elapsed)
    sample, elapsed = run_sample(work, module, args.workers, args.sample, args.seed)
    statuses = results(work, module)
    gone = [m for m in sample if m not in statuses]
    if gone:  # mutmut made the mutants again: a mutated file changed while the sample ran
        raise SystemExit(f"{name}: {len(gone)} sampled mutant(s) (e.g. {gone[0]}) no longer exist: a file of "
                         f"{', '.join(module['mutate'])} changed during the run; run the module again")  # fmt: skip
    return report(name, module, {m: statuses[m] for m in sample}, elapsed, population=len(statuses))


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
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="run N mutants per module drawn at random, not all (for modules with slow tests)")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample's draw [0]")
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
        row = run_module(n, modules[n], work, args)
        summary.append(row)
        sampled = f" (a sample of {row['sampled_from']}: 95 % interval {row['interval']})" if "interval" in row else ""
        print(f"   {row['killed']}/{row['total']} killed = {row['score']} %{sampled} (target {row['target']} %), "
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
