"""Locate, download and verify model weights.

:func:`resolve_weights` looks, in order, at an explicit path, at
``$VCMBENCH_WEIGHTS_DIR/<filename>``, at the cache ``$VCMBENCH_CACHE/weights/<filename>``
(``VCMBENCH_CACHE`` defaults to ``~/.cache/vcmbench``) and finally downloads the
file from its URL into the cache. Every file is checked against its sha256
when one is given; every failure is a :class:`~vcmbench.errors.WeightsError`
that names the file and how to fix it.

Where a publisher gives only the first hex digits of the sha256 (CompressAI's zoo and
``torch.hub`` name each file ``<name>-<first 8 hex digits of its sha256>.pth.tar`` and compare
those digits, see ``torch.hub.check_hash``), ``sha256_prefix`` is checked instead: the file's
sha256 must start with it. A prefix is weaker than the whole digest (8 hex digits are 32 bits:
enough against a corrupt or wrong file, not against a forged one); give the whole sha256 where
it is known.
"""

from __future__ import annotations

import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import WeightsError
from .media.hashing import file_sha256
from .media.paths import cache_root

__all__ = ["WeightsNotDownloaded", "cache_dir", "checksum_problem", "local_candidates", "resolve_weights"]

_PREFIX_RE = re.compile(r"^[0-9a-f]{8,64}$")


class WeightsNotDownloaded(WeightsError):
    """A weights file that would be downloaded, while ``$VCMBENCH_OFFLINE`` forbids downloads (dry runs and
    checklists report it instead of fetching it)."""

    def __init__(self, what: str, url: str, dest: Path, sha256: str | None) -> None:
        self.what, self.url, self.dest, self.sha256 = what, url, dest, sha256
        checksum = f" (sha256 {sha256})" if sha256 else ""
        super().__init__(f"weights for {what} are not downloaded yet: {dest.name} comes from {url}{checksum}. Fix: "
                         f"download it to {dest} (or into $VCMBENCH_WEIGHTS_DIR), or unset VCMBENCH_OFFLINE to let "
                         "the run fetch it")  # fmt: skip


def cache_dir() -> Path:
    """The folder downloaded weights go to: ``$VCMBENCH_CACHE/weights`` (default ``~/.cache/vcmbench/weights``)."""
    return cache_root() / "weights"


def checksum_problem(actual: str, sha256: str | None, sha256_prefix: str | None = None) -> str | None:
    """How a file whose sha256 is ``actual`` fails the expected ``sha256`` (whole) or ``sha256_prefix`` (its
    first hex digits, as published); None when it passes or nothing is expected."""
    actual = actual.lower()
    if sha256 and actual != sha256.strip().lower():
        return f"expected sha256 {sha256.strip().lower()}, actual {actual}"
    if sha256_prefix and not actual.startswith(sha256_prefix.strip().lower()):
        return (f"its sha256 {actual} does not start with {sha256_prefix.strip().lower()}, the sha256 prefix its "
                "publisher gives (in the file name)")  # fmt: skip
    return None


def _verify(path: Path, sha256: str | None, what: str, fix: str, shown: str | None = None,
            sha256_prefix: str | None = None) -> Path:  # fmt: skip
    if sha256 or sha256_prefix:
        problem = checksum_problem(file_sha256(path), sha256, sha256_prefix)
        if problem:
            raise WeightsError(f"weights file {shown or path} for {what} fails its checksum: {problem}. {fix}")
    return path


def _check_prefix(sha256_prefix: str | None, what: str) -> None:
    if sha256_prefix is not None and not _PREFIX_RE.match(sha256_prefix.strip().lower()):
        raise WeightsError(f"{what}: sha256 prefix {sha256_prefix!r} is not 8 to 64 hex digits; fix it in the card")


def resolve_weights(
    path: str | os.PathLike[str] | None,
    url: str | None,
    sha256: str | None,
    filename: str,
    what: str,
    sha256_prefix: str | None = None,
) -> Path:
    """Return the path of a verified weights file.

    ``path``: an explicit file (must exist); ``url``: where to download it from
    when neither ``$VCMBENCH_WEIGHTS_DIR`` nor the cache holds ``filename``;
    ``sha256``: expected checksum (``None`` skips the check); ``sha256_prefix``:
    the first hex digits of the sha256 where only those are published (checked
    as well, see the module docstring); ``what``: the owner named in error
    messages, e.g. ``"task yolov5"``.
    """
    card = what.split()[-1] if what else "the task"
    _check_prefix(sha256_prefix, what)
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not p.is_file():
            alt = f", or remove it to download from {url}" if url else ""
            raise WeightsError(
                f"weights file {p} not found for {what}: fix `weights:` in tasks/{card}.yaml, "
                f"pass --set {card}.weights=PATH{alt}"
            )
        return _verify(
            p,
            sha256,
            what,
            f"Fix: point `weights:` at the right file or correct `sha256:` in tasks/{card}.yaml "
            f"(set it to null to skip the check)",
            sha256_prefix=sha256_prefix,
        )

    cached = cache_dir() / filename
    candidates = local_candidates(filename)
    for cand in candidates:
        if cand.is_file():
            return _verify(
                cand,
                sha256,
                what,
                f"Fix: delete or replace {cand} (a fresh copy comes from {url or 'the official release'})",
                sha256_prefix=sha256_prefix,
            )

    if not url:
        where = " or ".join(str(c) for c in candidates)
        raise WeightsError(
            f"no weights for {what}: {filename} is not in {where} and no `url:` is set. Fix: place the file "
            f"there, set VCMBENCH_WEIGHTS_DIR, or pass --set {card}.weights=PATH"
        )
    _download(url, cached, sha256, what, sha256_prefix)
    return cached


def local_candidates(filename: str) -> list[Path]:
    """Where :func:`resolve_weights` looks for ``filename`` before downloading it, in order:
    ``$VCMBENCH_WEIGHTS_DIR`` (when set), then the cache."""
    env_dir = os.environ.get("VCMBENCH_WEIGHTS_DIR")
    return ([Path(os.path.expanduser(env_dir)) / filename] if env_dir else []) + [cache_dir() / filename]


def _download(url: str, dest: Path, sha256: str | None, what: str, sha256_prefix: str | None = None) -> None:
    """Fetch ``url`` to a temporary file next to ``dest``, verify it, then rename it into place."""
    if os.environ.get("VCMBENCH_OFFLINE"):
        raise WeightsNotDownloaded(what, url, dest, sha256 or sha256_prefix)
    from tqdm.auto import tqdm

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise WeightsError(
            f"cannot write to the weights cache {dest.parent} ({exc}) to download {url} for {what}. Fix: set "
            "VCMBENCH_CACHE to a writable folder, or place the file in a folder named by VCMBENCH_WEIGHTS_DIR"
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            req = urllib.request.Request(url, headers={"User-Agent": "vcmbench"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                total = resp.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=f"downloading {dest.name}",
                    leave=False,
                ) as bar:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        raise WeightsError(
            f"cannot download weights for {what} from {url} ({reason}). Fix: download it by hand and place it "
            f"at {dest}, or put it in a folder named by VCMBENCH_WEIGHTS_DIR, or give its path with "
            f"`weights:` (--set {what.split()[-1]}.weights=PATH)"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:
        _verify(
            tmp,
            sha256,
            what,
            f"The download was discarded. Fix: check `url:` and `sha256:`, or place the right file at {dest} "
            "by hand",
            shown=f"downloaded from {url}",
            sha256_prefix=sha256_prefix,
        )
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
