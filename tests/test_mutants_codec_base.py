"""Behaviour tests for vcmbench.codecs.base written against the mutation lane's survivors (issue 20).

The codec contract's small parts, each with its exact message: the rate of a bitstream, quality checks,
the cache identity (what enters it and what does not), card errors, and the child-process helpers
(exit codes, signals, timeouts, missing or empty output).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vcmbench.cards import Card
from vcmbench.codecs.base import (
    Bitstream,
    Codec,
    Uncompressed,
    find_executable,
    read_output,
    run_process,
    stderr_tail,
)
from vcmbench.errors import CodecError, QualityError
from vcmbench.media.hashing import stable_hash


class Toy(Codec):
    quality_range = (1, 51)
    quality_name = "QP"
    location_settings = ("binary",)

    def __init__(self, preset: str = "fast", binary: str = "", fail: bool = False) -> None:
        if fail:
            raise CodecError("codec codec: the preset 'x' is unknown")
        self.preset = preset

    def encode(self, image: Any, quality: Any) -> Bitstream:
        return Bitstream(b"", 1, 1)

    def decode(self, bitstream: Bitstream) -> Any:
        return None


class RealQuality(Toy):
    integer_quality = False
    quality_range = (0.5, 2.5)


def card(**settings: Any) -> Card:
    return Card("codec", "toy-card", "toy", "1", settings, path=Path("/cards/toy.yaml"))


def test_bitstream_rate() -> None:
    b = Bitstream(b"x" * 30, width=4, height=5, frames=3)
    assert (b.nbytes, b.pixels, b.bpp) == (30, 60, 4.0)
    assert Bitstream(b"abc", 2, 3).frames == 1 and Bitstream(b"abc", 2, 3).bpp == 4.0
    assert dict(Bitstream(b"", 1, 1).meta) == {}


def test_from_card_names_the_card_and_keeps_its_settings() -> None:
    codec = Toy.from_card(card(preset="slow", binary="/opt/x"))
    assert codec.name == "toy-card" and codec.preset == "slow"
    assert dict(codec.card_settings) == {"preset": "slow", "binary": "/opt/x"}
    with pytest.raises(CodecError) as err:
        Toy.from_card(card(fail=True))
    assert str(err.value) == "/cards/toy.yaml: codec toy-card: the preset 'x' is unknown"
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_identity_covers_class_settings_and_version_but_not_locations() -> None:
    a = Toy.from_card(card(preset="slow", binary="/opt/a"))
    assert a.version() == "1"
    assert a.identity() == Toy.from_card(card(preset="slow", binary="/elsewhere/b")).identity()
    assert a.identity() != Toy.from_card(card(preset="fast", binary="/opt/a")).identity()
    assert a.identity() != RealQuality.from_card(card(preset="slow", binary="/opt/a")).identity()

    class NewVersion(Toy):
        def version(self) -> str:
            return "2"

    NewVersion.__qualname__ = Toy.__qualname__
    assert a.identity() != NewVersion.from_card(card(preset="slow", binary="/opt/a")).identity()
    # the cache key's form: caches written by earlier runs stay valid only while it stays the same
    assert a.identity() == stable_hash({"class": "Toy", "settings": {"preset": "slow"}, "version": "1"})


def test_quality_checks_and_messages() -> None:
    codec = Toy.from_card(card())
    assert codec.validate_quality("7") == 7 and isinstance(codec.validate_quality(7.0), int)
    assert codec.validate_quality(1) == 1 and codec.validate_quality(51) == 51
    with pytest.raises(QualityError, match=r"^toy-card: QP 'high' is not a number$"):
        codec.validate_quality("high")
    with pytest.raises(QualityError, match=r"^toy-card: QP None is not a number$"):
        codec.validate_quality(None)
    with pytest.raises(QualityError, match=r"^toy-card: QP must be an integer, got 7.5$"):
        codec.validate_quality(7.5)
    with pytest.raises(QualityError) as err:
        codec.validate_quality(52)
    assert str(err.value) == (
        "toy-card: QP 52 is outside the allowed range 1..51; pick values in that range (card ladder: "
        "--quality or qualities:)"
    )
    with pytest.raises(QualityError, match="outside the allowed range"):
        codec.validate_quality(0)
    real = RealQuality.from_card(card())
    assert real.validate_quality("1.25") == 1.25 and real.validate_quality(0.5) == 0.5
    with pytest.raises(QualityError, match=r"range 0.5..2.5;"):
        real.validate_quality(2.6)


def test_defaults_of_the_contract() -> None:
    assert Toy().training_set(30) is None
    assert Codec.quality_range == (0, 100) and Codec.integer_quality and Codec.media == ("image",)
    assert Codec.quality_name == "quality" and Codec.location_settings == ()
    none = Uncompressed()
    with pytest.raises(CodecError, match="^the uncompressed reference point is never encoded$"):
        none.encode(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(CodecError, match="^the uncompressed reference point is never decoded$"):
        none.decode(Bitstream(b"x", 1, 1))
    assert none.validate_quality(0) == 0


def test_stderr_tail() -> None:
    text = "\n".join(f"line {i}" for i in range(20)) + "\n\n  \n"
    assert stderr_tail(text) == "\n    ".join(f"line {i}" for i in range(5, 20))
    assert stderr_tail(text, lines=2) == "line 18\n    line 19"
    assert stderr_tail(" \n") == "(no output on stderr)"


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_process_success_keeps_stderr_and_stdout_tail() -> None:
    res = run_process(py("import sys; sys.stderr.write('warn'); print('x' * 3000)"), "toy encode")
    assert res.returncode == 0 and 0 < res.seconds < 60
    assert res.stderr == "warn\n" + ("x" * 3000 + "\n")[-2000:]


def test_run_process_failures() -> None:
    with pytest.raises(CodecError) as err:
        run_process(py("import sys; sys.stderr.write('bad QP\\n'); sys.exit(3)"), "toy encode")
    name = Path(sys.executable).name
    assert str(err.value) == f"toy encode: {name} exited with code 3. stderr tail:\n    bad QP"
    with pytest.raises(CodecError) as err:
        run_process(py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)"), "toy decode")
    assert str(err.value).startswith(f"toy decode: {name} was killed by signal 15. stderr tail:")
    with pytest.raises(CodecError, match=r"^toy encode: cannot start '/no/such/encoder': "):
        run_process(["/no/such/encoder", "-q"], "toy encode")
    with pytest.raises(CodecError, match=rf"^toy encode: {name} timed out after 0.5 s$"):
        run_process(py("import time; time.sleep(5)"), "toy encode", timeout=0.5)


def test_run_process_runs_in_the_given_folder(tmp_path: Path) -> None:
    run_process(py("open('out.bin', 'wb').write(b'ok')"), "toy", cwd=tmp_path)
    assert (tmp_path / "out.bin").read_bytes() == b"ok"


def test_read_output(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    with pytest.raises(CodecError) as err:
        read_output(path, "toy encode", "line 1\nline 2")
    assert str(err.value) == (
        f"toy encode: the child process exited 0 but wrote no file {path}. stderr tail:\n    line 1\n    line 2"
    )
    path.write_bytes(b"")
    with pytest.raises(CodecError) as err:
        read_output(path, "toy encode")
    assert str(err.value) == (
        f"toy encode: the child process wrote an empty file {path}. stderr tail:\n    (no output on stderr)"
    )
    path.write_bytes(b"\x01\x02")
    assert read_output(path, "toy encode") == b"\x01\x02"


def test_find_executable(tmp_path: Path) -> None:
    plain, tool = tmp_path / "plain", tmp_path / "tool"
    plain.write_text("")
    tool.write_text("#!/bin/sh\n")
    os.chmod(tool, 0o755)
    assert find_executable([tmp_path / "missing", tmp_path, plain, tool]) == tool
    assert find_executable([str(plain)]) is None


def test_run_process_replaces_undecodable_output() -> None:
    code = "import sys; sys.stderr.buffer.write(b'bad \\xff'); sys.stdout.buffer.write(b'out \\xfe')"
    res = run_process(py(code), "toy encode")
    assert res.stderr == "bad \ufffd\nout \ufffd"
