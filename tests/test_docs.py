"""The docs site (mkdocs.yml, docs/, the README as home page): the strict build passes and is strict, and the
code blocks the docs mark as runnable offline run.

Convention (docs/testing.md, "The docs"): a fenced ``bash`` block directly preceded by the line
``<!-- run-offline -->`` (or ``<!-- run-offline expect="TEXT" -->``) is run with ``bash -e -o pipefail`` from
the repository root, in this test's environment (its caches in a temporary folder, ``$TMPDIR`` a fresh
folder), and must exit 0 (and print TEXT).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r'^<!-- run-offline(?: expect="(?P<expect>[^"]+)")? -->$')


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the marker
    code: str
    expect: str | None


def doc_pages(root: Path = ROOT) -> list[Path]:
    """The README and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def marked_blocks(page: Path, root: Path = ROOT) -> list[Block]:
    """The runnable blocks of ``page``; a marker not followed by a bash block is an error naming the line."""
    lines = page.read_text(encoding="utf-8").split("\n")
    blocks = []
    for i, line in enumerate(lines):
        if not line.strip().startswith("<!-- run-offline"):
            continue
        where = f"{page.relative_to(root)}:{i + 1}"
        m = MARKER.match(line.strip())
        if m is None:
            raise ValueError(f'{where}: malformed marker {line!r}; write <!-- run-offline --> or '
                             '<!-- run-offline expect="TEXT" -->')  # fmt: skip
        if i + 1 >= len(lines) or lines[i + 1].strip() != "```bash":
            raise ValueError(f"{where}: the marker must be followed directly by a ```bash fenced block")
        try:
            end = lines.index("```", i + 2)
        except ValueError:
            raise ValueError(f"{where}: the ```bash block after the marker is not closed") from None
        blocks.append(Block(str(page.relative_to(root)), i + 1, "\n".join(lines[i + 2 : end]), m["expect"]))
    return blocks


BLOCKS = [b for page in doc_pages() for b in marked_blocks(page)]


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300)  # fmt: skip


def test_docs_build_strict(tmp_path: Path) -> None:
    """``mkdocs build --strict`` passes, and the home page is the README with its picture."""
    done = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stdout + done.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    readme_title = (ROOT / "README.md").read_text(encoding="utf-8").split("\n", 1)[0].lstrip("# ")
    assert readme_title in home and 'src="rd_coco-mini_yolov5n_map.png"' in home
    assert (tmp_path / "site" / "rd_coco-mini_yolov5n_map.png").is_file()
    pages = {p.relative_to(ROOT / "docs").with_suffix("") for p in (ROOT / "docs").rglob("*.md")}
    assert {p for p in pages if not (tmp_path / "site" / p / "index.html").is_file()} == set()


def _copy_site_sources(dst: Path) -> Path:
    for name in ("mkdocs.yml", "mkdocs_hooks.py", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    shutil.copytree(ROOT / "docs", dst / "docs")
    return dst / "mkdocs.yml"


def _break_readme_anchor(root: Path) -> str:
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[\w.-]+\.md)#[\w-]+\)", text)
    assert links, "the README links to no anchor of a docs page: pick another breakage for this test"
    readme.write_text(re.sub(r"(\]\(docs/[\w.-]+\.md)#[\w-]+\)", r"\1#no-such-heading)", text, count=1))
    return "no-such-heading"


def _readme_link_outside_docs(root: Path) -> str:
    with (root / "README.md").open("a", encoding="utf-8") as f:
        f.write("\nSee [the project file](pyproject.toml).\n")
    return "pyproject.toml"


def _page_left_out_of_nav(root: Path) -> str:
    (root / "docs" / "orphan-page.md").write_text("# Orphan\n", encoding="utf-8")
    return "orphan-page.md"


@pytest.mark.parametrize("breakage", [_break_readme_anchor, _readme_link_outside_docs, _page_left_out_of_nav])
def test_docs_build_fails_on(breakage: Callable[[Path], str], tmp_path: Path) -> None:
    """The build is strict: a broken anchor, a README link out of docs/, a page left out of the nav."""
    (tmp_path / "src").mkdir()
    config = _copy_site_sources(tmp_path / "src")
    named = breakage(config.parent)
    done = mkdocs_build(config, tmp_path / "site")
    assert done.returncode != 0 and named in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_docs_mark_runnable_blocks() -> None:
    """The convention is in use (the test below would pass vacuously otherwise) in more than one page."""
    assert len({b.page for b in BLOCKS}) >= 2, BLOCKS


def test_a_malformed_marker_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- run-offline -->\n```\nvcmbench ls\n```\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"page.md:2: the marker must be followed directly by a ```bash"):
        marked_blocks(page, tmp_path)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}:{b.line}" for b in BLOCKS])
def test_runnable_block(block: Block, tmp_path: Path) -> None:
    """Each marked block exits 0 from the repository root (with this interpreter's scripts first on PATH)."""
    env = dict(
        os.environ,
        TMPDIR=str(tmp_path),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.page}:{block.line} exited {done.returncode}:\n{output[-4000:]}"
    if block.expect is not None:
        assert block.expect in output, f"{block.page}:{block.line}: {block.expect!r} not in its output"
