"""``benchmarks/gpu_payload.sh``: ``slim`` takes the checkpoints no GPU check reads out of the travelling
tree without deleting them, ``size`` counts what a device call would send, ``restore`` leaves the checkout
as it was. Run in a local clone of this repository (``prepare`` downloads wheels: not run here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def sh(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True)


def mib(text: str) -> float:
    m = re.search(r"working tree ([\d.]+) MiB", text)
    assert m is not None, text
    return float(m.group(1))


@pytest.fixture()
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and this repository's history")
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "checkout", "-q", "--detach"], cwd=dest, check=True)
    # the script as it is in this working tree (it may be newer than the last commit)
    shutil.copy(REPO / "benchmarks" / "gpu_payload.sh", dest / "benchmarks" / "gpu_payload.sh")
    subprocess.run(["git", "add", "benchmarks/gpu_payload.sh"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "t"],
                   cwd=dest, check=True)  # fmt: skip
    return dest


def test_slim_leaves_out_only_unread_checkpoints_and_restore_undoes_it(clone: Path) -> None:
    script = "benchmarks/gpu_payload.sh"
    before = sh("bash", script, "size", cwd=clone)
    full = mib(before.stdout)
    on_disk = sorted(p.relative_to(clone).as_posix() for p in (clone / "weights").rglob("*") if p.is_file())

    slim = sh("bash", script, "slim", cwd=clone)
    assert slim.returncode == 0, slim.stderr
    staged = sh("git", "status", "--porcelain", cwd=clone).stdout.splitlines()
    removed = sorted(line[3:] for line in staged if line.startswith("D "))
    assert removed and len(removed) == len(staged)  # only untracked files, nothing else touched
    assert all(r.startswith(("weights/synth/", "weights/learned/")) for r in removed)
    kept = {p for p in on_disk if p.startswith("weights/learned/") and p.endswith(".pt.xz")} - set(removed)
    assert len(kept) == 4  # lic, objicm, tlicm, saicm at their lowest rate point
    assert sorted(p.relative_to(clone).as_posix() for p in (clone / "weights").rglob("*") if p.is_file()) == on_disk
    assert sh("git", "ls-files", "--others", "--exclude-standard", cwd=clone).stdout == ""  # ignored, not untracked
    after = sh("bash", script, "size", cwd=clone)
    assert after.returncode == 0 and "fits" in after.stdout
    gone = sum((clone / r).stat().st_size for r in removed) / 2**20
    assert mib(after.stdout) == pytest.approx(full - gone, abs=0.15)
    assert sh("bash", script, "slim", cwd=clone).returncode == 2  # twice is refused

    (clone / ".gpu" / "whl").mkdir(parents=True)  # what prepare leaves: carried by the call, then deleted
    (clone / ".gpu" / "whl" / "x.whl").write_bytes(b"x" * 1000)
    assert mib(sh("bash", script, "size", cwd=clone).stdout) == mib(after.stdout)  # .gpu counted apart
    restore = sh("bash", script, "restore", cwd=clone)
    assert restore.returncode == 0 and f"restored {len(removed)}" in restore.stdout
    assert sh("git", "status", "--porcelain", cwd=clone).stdout == "" and not (clone / ".gpu").exists()
    assert "gpu_payload" not in (clone / ".git" / "info" / "exclude").read_text()
    assert mib(sh("bash", script, "size", cwd=clone).stdout) == full
