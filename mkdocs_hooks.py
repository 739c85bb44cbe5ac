"""MkDocs hook (mkdocs.yml ``hooks:``): the README is the site's home page.

The README links into ``docs/`` (``docs/synth.md``, ``docs/rd_coco-mini_yolov5n_map.png``) so that it reads
well on its own; as ``index.md`` of the site those links are made relative to ``docs/``. Any other relative
link of the README then points outside the site, which ``mkdocs build --strict`` reports as an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

README = "README.md"
DOCS_LINK = re.compile(r"\]\(docs/")


def readme_as_index(readme: str) -> str:
    """The README's text with its ``](docs/...)`` links rewritten to ``](...)``."""
    return DOCS_LINK.sub("](", readme)


def on_files(files: Files, config: Any) -> Files:
    """Add the README as ``index.md``; a ``docs/index.md`` would be a second home page, so it is refused."""
    if files.get_file_from_path("index.md") is not None:
        raise ValueError(f"docs/index.md exists: the site's home page is {README} (mkdocs_hooks.py); "
                         "move its text into README.md or another page")  # fmt: skip
    readme = Path(config.config_file_path).parent / README
    files.append(
        File.generated(config, "index.md", content=readme_as_index(readme.read_text(encoding="utf-8")))
    )
    return files
