"""The install is lean and honest: one OpenCV, no two distributions writing the same file, and the core
(no extras) imports the CLI and the default benchmark's adapters (see docs/install.md)."""

import importlib.metadata as md
import json
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the OpenCV builds on PyPI; each installs the same cv2/ folder, so at most one may be present
OPENCV_DISTS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")

#: top-level modules of the optional extras and --no-deps packages (docs/install.md)
OPTIONAL_MODULES = ("ray", "pyarrow", "compressai", "segment_anything", "skimage", "pytorch_msssim", "yolov5",
                    "yolov7_package", "seaborn", "pkg_resources", "facenet_pytorch")  # fmt: skip


def installed_names() -> set[str]:
    return {(d.metadata["Name"] or "").lower().replace("_", "-") for d in md.distributions()}


def test_exactly_one_opencv_is_installed():
    present = sorted(installed_names() & set(OPENCV_DISTS))
    assert len(present) == 1, f"OpenCV distributions installed: {present}; exactly one may be (docs/install.md)"


def file_owners() -> dict[str, set[str]]:
    """Installed file (relative to site-packages) -> the distributions whose RECORD lists it."""
    owners: dict[str, set[str]] = defaultdict(set)
    for dist in md.distributions():
        name = dist.metadata["Name"]
        for f in dist.files or ():
            path = str(f)
            if "__pycache__" not in path and ".dist-info/" not in path and not path.startswith(".."):
                owners[path].add(name)
    return owners


def test_no_two_distributions_write_the_same_file():
    """Two distributions listing one file overwrite each other (as both OpenCV builds did in cv2/, and thop
    and ultralytics-thop in thop/): the one installed last wins, whatever the versions."""
    clashes = {p: sorted(o) for p, o in file_owners().items() if len(o) > 1}
    assert not clashes, f"files installed by more than one distribution: {dict(list(clashes.items())[:10])}"


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not in the core)", name=name)
        return None
sys.meta_path.insert(0, Block())
"""


def run_core_only(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where every optional module fails to import, as in a core-only venv."""
    script = tmp_path / "core_only.py"
    script.write_text(BLOCKER + code)
    return subprocess.run([sys.executable, str(script), ",".join(OPTIONAL_MODULES)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_core_runs_the_cli_and_resolves_the_default_benchmark_without_extras(tmp_path):
    code = """
import json, sys
from contextlib import redirect_stdout
from io import StringIO
from vcmbench.adapters import adapter_class
from vcmbench.cards import CardSet
from vcmbench.cli import main
from vcmbench.run import DEFAULT_CODECS, DEFAULT_DATASETS, DEFAULT_TASKS
out = {}
for argv in (["--help"], ["ls"]):
    buf = StringIO()
    try:
        with redirect_stdout(buf):
            rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out[argv[0]] = [rc, buf.getvalue()]
cards = CardSet([])
grid = [("codec", n) for n in DEFAULT_CODECS] + [("task", n) for n in DEFAULT_TASKS]
grid += [("dataset", n) for n in DEFAULT_DATASETS]
out["adapters"] = [adapter_class(cards.get(k, n)).__module__ for k, n in grid]
import vcmbench.tasks.ultralytics_yolo  # the synth detector's model code
out["optional_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1].split(","))
print(json.dumps(out))
"""
    proc = run_core_only(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["--help"][0] == 0 and "usage: vcmbench" in out["--help"][1]
    assert out["ls"][0] == 0 and "synth_det" in out["ls"][1] and "vvenc" in out["ls"][1]
    assert len(out["adapters"]) == 4 and all(m.startswith("vcmbench.") for m in out["adapters"])
    assert out["optional_loaded"] == []


def test_yolov5_task_without_the_package_names_the_install(tmp_path):
    code = """
from vcmbench.errors import VcmbenchError
from vcmbench.tasks.yolov5 import load_yolov5_checkpoint
try:
    load_yolov5_checkpoint("missing.pt")
except VcmbenchError as exc:
    print(exc)
"""
    proc = run_core_only(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task yolov5 cannot import" in proc.stdout and "--no-deps yolov5==" in proc.stdout
    assert "vcmbench[yolo]" in proc.stdout


def test_parquet_export_without_pyarrow_names_the_extra(tmp_path):
    code = """
from vcmbench.cli import main
print("rc", main(["export", "nowhere", "--format", "parquet"]))
"""
    proc = run_core_only(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rc 2" in proc.stdout
    assert "vcmbench[parquet]" in proc.stderr


@pytest.mark.parametrize("extra", ["ray", "parquet", "yolo", "learned"])
def test_the_test_extra_pulls_every_optional_extra(extra):
    """README's set-up installs ``.[test]``: it must bring every optional feature."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pulled = [r.split("[", 1)[1].rstrip("]").split(",") for r in extras["test"] if r.startswith("vcmbench[")]
    assert extra in extras, f"no extra {extra!r} in pyproject.toml"
    assert pulled and extra in pulled[0], f"the test extra does not pull vcmbench[{extra}]: {extras['test']}"
