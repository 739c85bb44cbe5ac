"""The run's log file, ``runs/<run_id>/run.log``: what the terminal showed, plus what scrolls away.

Each line has the time of day in front (continuation lines are indented). The file holds:

- every message the run logs, and everything else written to ``sys.stdout`` / ``sys.stderr`` while it works
  (a library's own messages, the Ultralytics banner); a progress bar is kept as its last state (the text after
  its last carriage return), not every refresh. What child processes write straight to the terminal (an
  encoder binary's stderr) is not in it: it never passes through this process's Python streams;
- ``FAILED [stage] unit item <id>: error`` for every per-item failure, with its whole error text;
- ``warning: Category: message (file:line)`` for every Python warning raised while the run works (the
  terminal shows it as before), and ``log: LEVEL logger: message`` for every ``logging`` record of level
  WARNING or above that reaches the root logger;
- ``stage <name>: ...`` after each stage: the work it did, its failures and its time;
- the closing line (``run <id> finished: status ...``, or ``run <id> stopped by ...`` with the traceback when
  an exception or Ctrl-C ended it), then the table and summary ``vcmbench run`` printed (:class:`Tee`).

The file is opened as soon as the run has its id, so an interrupted or crashed run leaves what happened until
then. A rerun of the same command (a resume) is a new run with its own id and folder, so it writes its own
``run.log``; the earlier run's log is left as it was, and the new one names the run before it in the same
output root.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

LOG_NAME = "run.log"


def stamp_lines(text: str) -> str:
    """``text`` as log lines: the first prefixed with the time of day, the rest indented under it."""
    lines = text.splitlines() or [""]
    now = datetime.now().strftime("%H:%M:%S")
    return "".join(f"{now} {line}\n" if i == 0 else f"         {line}\n" for i, line in enumerate(lines))


class _Records(logging.Handler):
    """Logging records of level WARNING or above, into the run log."""

    def __init__(self, write: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self.write = write

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write(f"log: {record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # a bad format string must not end the run
            self.handleError(record)


class _StreamCopy:
    """``sys.stdout`` / ``sys.stderr`` while a run works: everything goes to the real stream, and each finished
    line (after its last carriage return: a progress bar's final state) to the run log as well, unless the
    writing thread is muted (a line the log has already). Left in place by a library that kept a reference, it
    only forwards once the run is over."""

    def __init__(self, stream: TextIO, log: RunLog) -> None:
        self.stream = stream
        self._log: RunLog | None = log
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        n = self.stream.write(text)
        log = self._log
        if log is not None and not log.muted():
            with self._lock:
                *done, self._partial = (self._partial + text).split("\n")
            for line in done:
                shown = line.rsplit("\r", 1)[-1].rstrip()
                if shown:
                    log.write(shown)
        return len(text) if n is None else n

    def flush(self) -> None:
        self.stream.flush()

    def detach_log(self) -> None:
        """Stop copying (an unfinished line is written as it stands)."""
        log, self._log = self._log, None
        shown = self._partial.rsplit("\r", 1)[-1].rstrip()
        if log is not None and shown:
            log.write(shown)
        self._partial = ""

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the real stream
        return getattr(self.stream, name)


class RunLog:
    """The run's log function: each message goes to ``echo`` (the terminal) and to ``run.log``.

    Lines logged before :meth:`open` (the run has no folder yet) are kept and written first."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.path: Path | None = None
        self._pending: list[str] = []
        self._file: TextIO | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def __call__(self, message: str) -> None:
        self.write(message)
        with self.muting():
            self.echo(message)

    def muted(self) -> bool:
        """Whether this thread is writing something the log has already (not copied from the streams)."""
        return bool(getattr(self._local, "muted", False))

    @contextmanager
    def muting(self) -> Iterator[None]:
        before = self.muted()
        self._local.muted = True
        try:
            yield
        finally:
            self._local.muted = before

    def write(self, message: str) -> None:
        """A line into the log file only (not the terminal)."""
        text = stamp_lines(message)
        with self._lock:
            if self._file is None:
                self._pending.append(text)
            else:
                self._file.write(text)
                self._file.flush()

    def open(self, path: Path, header: str) -> None:
        """Start writing to ``path`` (appending): the header, then the lines logged so far."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self.path = path
            self._file = open(path, "a", encoding="utf-8")
            self._file.write(stamp_lines(header) + "".join(self._pending))
            self._file.flush()
            self._pending.clear()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._pending.clear()

    def failure(self, stage: str, unit: str, item: str, error: str) -> None:
        self.write(f"FAILED [{stage}] {unit} item {item}: {error}")

    def stopped(self, run_id: str | None, exc: BaseException) -> None:
        """The closing line of a run an exception (or Ctrl-C) ended, with the traceback."""
        trace = "".join(traceback.format_exception(exc)).rstrip()
        self.write(f"run {run_id or '(no id yet)'} stopped by {type(exc).__name__}: {exc}\n{trace}")

    def _showwarning(self, previous: Callable[..., Any]) -> Callable[..., None]:
        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:  # fmt: skip
            self.write(f"warning: {category.__name__}: {message} ({filename}:{lineno})")
            with self.muting():
                previous(message, category, filename, lineno, file, line)

        return show

    @contextmanager
    def capture(self) -> Iterator[None]:
        """While the block runs: what is written to ``sys.stdout`` / ``sys.stderr``, Python warnings and WARNING+
        logging records are also written to the log (the terminal shows all of it as before). Warnings shown
        once before in this process are shown again."""
        handler = _Records(self.write)
        root = logging.getLogger()
        copies = _StreamCopy(sys.stdout, self), _StreamCopy(sys.stderr, self)
        with warnings.catch_warnings():
            warnings.showwarning = self._showwarning(warnings.showwarning)
            root.addHandler(handler)
            sys.stdout, sys.stderr = copies  # type: ignore[assignment]
            try:
                yield
            finally:
                for copy in copies:
                    copy.detach_log()
                if sys.stdout is copies[0]:
                    sys.stdout = copies[0].stream
                if sys.stderr is copies[1]:
                    sys.stderr = copies[1].stream
                root.removeHandler(handler)


class Tee:
    """Print to the terminal and append the same lines to a run's ``run.log`` (what ``vcmbench run`` prints after
    the run: its table and summary)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, text: str = "", file: TextIO | None = None) -> None:
        print(text, file=file or sys.stdout)
        if self.path.parent.is_dir():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(stamp_lines(text))
