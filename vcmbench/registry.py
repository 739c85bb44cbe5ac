"""One generic name -> class registry per adapter kind (codec, task, dataset).

An adapter registers itself where it is defined::

    @register("codec", "jpeg")
    class JpegCodec(Codec): ...

so a new adapter is one module (plus one card) and touches no other file. Three sources of names:

1. **built-in modules**: every module of the kind's package (``vcmbench.codecs`` ...) is *read*, not
   imported, for ``@register(kind, "name")`` decorators, so listing names (``vcmbench ls``, card
   validation) imports nothing heavy (no torch); the module is imported when its adapter is first used;
2. **entry points** of installed packages, in the groups ``vcmbench.codecs``, ``vcmbench.tasks`` and
   ``vcmbench.datasets`` (``name = "package.module:Class"``): third-party adapters by ``pip install``;
3. a card may also name ``adapter: package.module:Class`` directly (see :mod:`vcmbench.cards`).

The pattern follows lm-evaluation-harness' registry; unlike it, a duplicate name is an error rather than
a silent override.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.metadata
import importlib.util
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", bound=type)

#: adapter kinds, the package holding the built-in adapters of each, and the entry-point group of each
KINDS = ("codec", "task", "dataset")
PACKAGES = {"codec": "vcmbench.codecs", "task": "vcmbench.tasks", "dataset": "vcmbench.datasets"}
ENTRY_POINT_GROUPS = {"codec": "vcmbench.codecs", "task": "vcmbench.tasks", "dataset": "vcmbench.datasets"}


class RegistryError(KeyError):
    """An unknown or duplicate name; the message says what is available."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want plain text
        return str(self.args[0]) if self.args else ""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return a ' (did you mean 'x'?)' suffix for the closest choices, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def import_string(target: str) -> object:
    """Import ``package.module:attr`` and return the attribute."""
    if ":" not in target:
        raise ValueError(f"expected 'module:attr', got {target!r}")
    module_name, attr = target.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r} (from {target!r})") from exc
    return obj


def declared_adapters(path: Path, module: str) -> list[tuple[str, str, str]]:
    """``(kind, name, "module:Class")`` of every ``@register(kind, name)`` class in a source file, read
    without importing it (names and kinds must be string literals)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if not (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name) and deco.func.id == "register"):
                continue
            args = deco.args
            if len(args) == 2 and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args):
                found.append((args[0].value, args[1].value, f"{module}:{node.name}"))  # type: ignore[attr-defined]
    return found


class Registry:
    """Maps the names of one kind of adapter to lazily imported classes."""

    def __init__(self, kind: str, package: str | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self._targets: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._loaded: dict[str, type] = {}
        self._discovered = package is None and group is None
        self._lock = threading.RLock()

    # ---- registration ----------------------------------------------------------------------------
    def add(self, name: str, target: str, origin: str = "") -> None:
        """Register ``name`` -> ``"module:attr"``; another target under the same name is rejected."""
        if ":" not in target:
            raise ValueError(f"{self.kind} adapter {name!r}: target must be 'module:attr', got {target!r}")
        with self._lock:
            old = self._targets.get(name)
            if old is not None and old != target:
                raise RegistryError(
                    f"{self.kind} adapter {name!r} is registered twice: {old!r} ({self._origin[name]}) and "
                    f"{target!r} ({origin or 'registered in code'}); rename one"
                )
            self._targets[name] = target
            self._origin.setdefault(name, origin or "registered in code")

    def bind(self, name: str, cls: type) -> None:
        """Record a class that registered itself on import (the ``@register`` decorator)."""
        self._discover()
        self.add(name, f"{cls.__module__}:{cls.__qualname__}")
        self._loaded[name] = cls

    # ---- discovery ---------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            if self.package:
                self._scan_package(self.package)
            if self.group:
                for ep in importlib.metadata.entry_points(group=self.group):
                    self.add(ep.name, ep.value, f"entry point of {ep.dist.name if ep.dist else '?'}")

    def _scan_package(self, package: str) -> None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return
        for folder in spec.submodule_search_locations:
            for path in sorted(Path(folder).glob("*.py")):
                module = package if path.stem == "__init__" else f"{package}.{path.stem}"
                for kind, name, target in declared_adapters(path, module):
                    if kind == self.kind:
                        self.add(name, target, str(path))

    # ---- lookup ------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._targets)

    def target(self, name: str) -> str:
        self._check(name)
        return self._targets[name]

    def get(self, name: str) -> type:
        """Import (once) and return the class registered as ``name``."""
        self._check(name)
        if name not in self._loaded:
            obj = import_string(self._targets[name])
            if not isinstance(obj, type):
                raise RegistryError(f"{self.kind} adapter {name!r} ({self._targets[name]}) is not a class")
            self._loaded[name] = obj
        return self._loaded[name]

    def _check(self, name: str) -> None:
        if name not in self:
            raise RegistryError(
                f"unknown {self.kind} adapter {name!r}{did_you_mean(name, self.names())}; "
                f"available: {', '.join(self.names()) or '(none)'}"
            )


REGISTRIES: dict[str, Registry] = {kind: Registry(kind, PACKAGES[kind], ENTRY_POINT_GROUPS[kind]) for kind in KINDS}
CODECS, TASKS, DATASETS = REGISTRIES["codec"], REGISTRIES["task"], REGISTRIES["dataset"]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: register an adapter class of ``kind`` ("codec", "task", "dataset") as ``name``.

    Use string literals: built-in adapters are found by reading their source for this decorator."""
    if kind not in REGISTRIES:
        raise ValueError(f"unknown adapter kind {kind!r}; one of {', '.join(KINDS)}")

    def decorate(cls: T) -> T:
        REGISTRIES[kind].bind(name, cls)
        return cls

    return decorate
