"""``vcmbench COMMAND --help`` opens with what the command does: the summary ``vcmbench --help`` lists for it."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from vcmbench.cli import main


def help_text(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stop:
        main([*argv, "--help"])
    assert stop.value.code == 0
    return out.getvalue()


def words(text: str) -> str:
    """The text with its line wrapping undone (argparse also wraps after a hyphen)."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


def test_every_command_help_opens_with_its_summary() -> None:
    top = help_text()
    listed = top.split("COMMAND\n", 1)[1].split("\n\n", 1)[0]
    names = re.findall(r"^    ([a-z][a-z-]*)", listed, flags=re.MULTILINE)
    assert {"run", "estimate", "plot", "report", "compare", "masks", "train"} <= set(names)
    for name in names:
        text = help_text(name)
        after_usage = text.split("\n\n", 1)[1]  # the usage block ends at the first blank line
        summary = after_usage.split("\n\n", 1)[0]
        assert not summary.lstrip().startswith(("options:", "positional arguments:")), f"{name}: no summary"
        assert words(summary) in words(top), f"{name}: its --help opens with {summary!r}, not its listed summary"
