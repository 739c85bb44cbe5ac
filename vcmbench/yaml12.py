"""YAML read with the YAML 1.2 core schema, so that a value means what the user typed.

PyYAML resolves plain scalars with YAML 1.1 rules: ``4:2:0`` is a base-60 integer (14520), ``yes``/``no``/
``on``/``off`` are booleans, ``010`` is octal, ``1_000`` is 1000 and ``2024-01-02`` a date. Cards, ``--set``
values and ``KEY=VALUE`` arguments are read here instead, where the only implicit types are those of the
YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution):

- null: ``null``, ``Null``, ``NULL``, ``~`` and the empty value;
- bool: ``true``, ``True``, ``TRUE``, ``false``, ``False``, ``FALSE``;
- int: decimal ``[-+]?[0-9]+``, octal ``0o[0-7]+``, hexadecimal ``0x[0-9a-fA-F]+``;
- float: ``[-+]?(.[0-9]+|[0-9]+(.[0-9]*)?)([eE][-+]?[0-9]+)?``, ``[-+]?.inf`` and ``.nan`` (with their case
  variants);

and every other plain scalar is a string.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

__all__ = ["Yaml12Loader", "load"]

NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)

TAG = "tag:yaml.org,2002:"
#: (tag, pattern, first characters a matching scalar can start with), in the order they are tried
RESOLVERS = (
    ("null", NULL, ["~", "n", "N", ""]),
    ("bool", BOOL, list("tTfF")),
    ("int", INT, list("-+0123456789")),
    ("float", FLOAT, list("-+.0123456789")),
)


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's implicit types (and nothing else)."""


#: the same loader on libyaml's parser where PyYAML was built with it (the 39 built-in cards load in 0.16 s instead
#: of 0.44 s here); the resolvers and constructors, which decide what a value means, are the Python ones of both
FastLoader: type[yaml.SafeLoader] = Yaml12Loader
if getattr(yaml, "__with_libyaml__", False):

    class Yaml12CLoader(yaml.CSafeLoader):  # type: ignore[misc,name-defined]
        """:class:`Yaml12Loader` on libyaml's parser."""

    FastLoader = Yaml12CLoader  # type: ignore[assignment]


def _scalar_text(loader: Yaml12Loader, node: yaml.Node, pattern: re.Pattern[str], what: str) -> str:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if not pattern.match(text):
        raise yaml.constructor.ConstructorError(
            None, None, f"{text!r} is not a YAML 1.2 {what}", node.start_mark
        )
    return text


def _construct_null(loader: Yaml12Loader, node: yaml.Node) -> None:
    _scalar_text(loader, node, NULL, "null")


def _construct_bool(loader: Yaml12Loader, node: yaml.Node) -> bool:
    return _scalar_text(loader, node, BOOL, "boolean (true or false)").lower() == "true"


def _construct_int(loader: Yaml12Loader, node: yaml.Node) -> int:
    text = _scalar_text(loader, node, INT, "integer")
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)


def _construct_float(loader: Yaml12Loader, node: yaml.Node) -> float:
    text = _scalar_text(loader, node, FLOAT, "float").lower()
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


for _loader in {Yaml12Loader, FastLoader}:
    _loader.yaml_implicit_resolvers = {}  # none of YAML 1.1's: only the core schema's
    for name, pattern, first in RESOLVERS:
        _loader.add_implicit_resolver(TAG + name, pattern, first)
    _loader.add_constructor(TAG + "null", _construct_null)
    _loader.add_constructor(TAG + "bool", _construct_bool)
    _loader.add_constructor(TAG + "int", _construct_int)
    _loader.add_constructor(TAG + "float", _construct_float)


def load(text: str) -> Any:
    """One YAML document (a card file, or a value typed on the command line), read with the YAML 1.2 core
    schema: ``4:2:0``, ``yes`` and ``1_000`` stay strings, ``""`` is None. Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=FastLoader)  # a SafeLoader (or CSafeLoader) subclass: safe
