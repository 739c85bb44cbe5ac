"""Loading pickled model checkpoints without running code they were not meant to hold.

Official YOLOv5, YOLOv7 and Ultralytics ``.pt`` files are ``torch.save`` pickles of whole model objects,
so ``torch.load(weights_only=True)`` refuses them, and a plain ``weights_only=False`` load runs whatever
the file asks for: a pickle may name any importable function (``os.system``, ``builtins.exec``, ...) and
have it called. :func:`load_checkpoint` unpickles through :class:`RestrictedUnpickler` instead, which
resolves only what such checkpoints hold and refuses anything else, whether or not the file's sha256 is
known:

- **callables** (pickle ``REDUCE``): the tensor and parameter rebuild functions of ``torch._utils``,
  ``torch.Size``, ``torch.device``, numpy's scalar / array / dtype reconstruction, ``collections.OrderedDict``,
  the builtin containers and scalars, ``pathlib`` paths, ``_codecs.encode`` (protocol-2 bytes, latin-1 only),
  and ``getattr`` restricted to public attributes of ``torch.nn`` modules (Ultralytics pickles a head's
  ``forward`` that way);
- **values**: torch dtypes, layouts and memory formats;
- **classes rebuilt from their data only** (``NEWOBJ`` + state, their ``__init__`` never runs):
  ``torch.nn`` modules, ``argparse.Namespace`` / ``types.SimpleNamespace``, and the ``nn.Module`` classes of
  the model package of the checkpoint's family (:class:`Family`), with the upstream module names remapped
  (``models.yolo`` -> ``yolov5.models.yolo``), plus the few plain classes a family lists.

A model class may not be *called* while unpickling (its constructor may parse a config with ``eval``,
as YOLOv5's and YOLOv7's ``parse_model`` do), and an object's state may not be set on a class, function or
module. A refused name is an :class:`UnsafeCheckpointError` naming the file and the global; the module is
not even imported. Loading runs on the pure-Python unpickler (``pickle._Unpickler``), whose opcodes can be
checked one by one; checkpoints of model objects are small pickles (tensor data is stored beside them),
so this costs little.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import builtins
import collections
import functools
import importlib
import pathlib
import pickle
import types
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WeightsError

__all__ = ["FAMILIES", "Family", "RestrictedUnpickler", "UnsafeCheckpointError", "load_checkpoint", "pickle_module"]


class UnsafeCheckpointError(WeightsError):
    """A checkpoint references a global that a checkpoint of its family never holds: it was refused."""


@dataclass(frozen=True)
class Family:
    """The model code a family of checkpoints may reference."""

    name: str
    #: top-level upstream package -> where it lives here (``{"models": "yolov5.models"}``)
    remap: Mapping[str, str] = field(default_factory=dict)
    #: packages whose ``nn.Module`` classes may be rebuilt from their data
    packages: tuple[str, ...] = ()
    #: other plain classes (``module.qualname``) its checkpoints hold, rebuilt from their data
    classes: tuple[str, ...] = ()

    def resolve(self, module: str) -> str:
        """The module name with an upstream top-level package replaced by its home here."""
        top, dot, rest = module.partition(".")
        return self.remap[top] + dot + rest if top in self.remap else module

    def holds(self, module: str) -> bool:
        """Whether ``module`` lies in one of the family's packages."""
        return any(module == p or module.startswith(p + ".") for p in self.packages)

    def lists(self, module: str, name: str) -> bool:
        """Whether ``module.name`` is one of the family's plain classes (``module.*``: any class of ``module``)."""
        return f"{module}.{name}" in self.classes or f"{module}.*" in self.classes


#: the checkpoint families vcmbench loads
FAMILIES: dict[str, Family] = {
    "yolov5": Family("yolov5", {"models": "yolov5.models", "utils": "yolov5.utils"}, ("yolov5.models", "yolov5.utils")),
    "yolov7": Family(
        "yolov7", {"models": "yolov7_package.models", "utils": "yolov7_package.utils"},
        ("yolov7_package.models", "yolov7_package.utils"),
    ),  # fmt: skip
    "ultralytics": Family(
        "ultralytics", {}, ("ultralytics.nn",),
        ("ultralytics.utils.IterableSimpleNamespace", "ultralytics.utils.loss.*", "ultralytics.utils.tal.*"),
    ),  # fmt: skip
}


# ---- what every family may reference ---------------------------------------------------------------------
def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
    if not isinstance(obj, str) or encoding.replace("-", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not bytes data")
    return obj.encode("latin1")


_BUILTIN_CALLABLES = ("set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes",
                      "bytearray", "slice", "range")  # fmt: skip
_TORCH_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                   "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy")  # fmt: skip
_NUMPY_CALLABLES = (("numpy", "dtype"), ("numpy", "ndarray"))
_NUMPY_CORE_CALLABLES = ("scalar", "_reconstruct")
_PATHS = ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path")
_TENSOR_CLASSES = (("torch", "Tensor"), ("torch._tensor", "Tensor"), ("torch.nn.parameter", "Parameter"),
                   ("torch.nn.parameter", "Buffer"))  # fmt: skip


@functools.cache
def _callables() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, for every function or data class a checkpoint may call while loading."""
    import numpy as np
    import torch

    out: dict[tuple[str, str], Any] = {("builtins", n): getattr(builtins, n) for n in _BUILTIN_CALLABLES}
    out[("collections", "OrderedDict")] = collections.OrderedDict
    out[("_codecs", "encode")] = _latin1_encode
    out[("builtins", "getattr")] = _module_getattr
    out.update({("torch._utils", n): getattr(torch._utils, n) for n in _TORCH_REBUILDS if hasattr(torch._utils, n)})
    out[("torch._tensor", "_rebuild_from_type_v2")] = _rebuild_from_type_v2
    out[("torch", "Size")] = torch.Size
    out[("torch", "device")] = torch.device
    out.update({key: getattr(np, key[1]) for key in _NUMPY_CALLABLES})
    for core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy 2 warns on the numpy.core alias
            try:
                mod = importlib.import_module(core)
            except ImportError:
                continue
        out.update({(core, n): getattr(mod, n) for n in _NUMPY_CORE_CALLABLES})
    for mod in ("pathlib", "pathlib._local"):
        out.update({(mod, n): getattr(pathlib, n) for n in _PATHS})
    return out


@functools.cache
def _callable_ids() -> frozenset[int]:
    return frozenset(id(v) for v in _callables().values())


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """``torch._tensor._rebuild_from_type_v2`` whose inner call is checked like any other."""
    import torch

    if id(func) not in _callable_ids() or not (isinstance(new_type, type) and issubclass(new_type, torch.Tensor)):
        raise pickle.UnpicklingError(f"refused tensor rebuild through {func!r} as {new_type!r}")
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


def _module_getattr(obj: Any, name: str) -> Any:
    """``builtins.getattr`` as Ultralytics checkpoints use it (e.g. a head's ``forward``): public attributes
    of ``torch.nn`` modules and module classes only. What it returns is data to the unpickler: only the
    allowed callables can ever be called."""
    import torch

    module_like = isinstance(obj, torch.nn.Module) or _is_module_class(obj)
    if not module_like or not isinstance(name, str) or name.startswith("_"):
        raise pickle.UnpicklingError(f"refused getattr({type(obj).__name__}, {name!r})")
    return getattr(obj, name)


def _is_value(obj: Any) -> bool:
    """Torch constants referenced by name (``torch.float16``, ``torch.strided``, ...)."""
    import torch

    return isinstance(obj, (torch.dtype, torch.layout, torch.memory_format))


def _import(module: str) -> types.ModuleType | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError:
        return None


def _lookup(module: str, name: str) -> Any:
    """``module.name`` (a dotted qualname walks attributes), or None."""
    obj: Any = _import(module)
    for part in name.split("."):
        obj = getattr(obj, part, None)
    return obj


def _is_module_class(obj: Any) -> bool:
    import torch

    return isinstance(obj, type) and issubclass(obj, torch.nn.Module)


# ---- the unpickler -----------------------------------------------------------------------------------------
class RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """A pure-Python unpickler that resolves only the globals of this module's allow-list for ``family`` and
    calls only its callables (see the module docstring); ``source`` names the file in its errors."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: Any, *, family: Family, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.family = family
        self.source = source
        self._plain_classes: list[type] = []

    # -- names ------------------------------------------------------------------------------------------------
    def _refuse(self, what: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"refused to load checkpoint {self.source}: it references {what}, which a checkpoint of the "
            f"{self.family.name} family never holds (allowed: tensors, torch/numpy data, builtin containers, torch.nn modules and the model "
            f"classes of {', '.join(self.family.packages) or 'no package'}). Unpickling it could run code; use "
            "the official file, or re-save your model's state_dict from code you trust"
        )

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object ``module.name`` (upstream names remapped), else an :class:`UnsafeCheckpointError`;
        a refused module is never imported."""
        if self.proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif self.proto < 3 and module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        module = self.family.resolve(module)
        key = (module, name)
        if key in _callables():
            return _callables()[key]
        if key in _TENSOR_CLASSES:  # the type argument of a tensor rebuild
            return _lookup(module, name)
        if key in (("argparse", "Namespace"), ("types", "SimpleNamespace")):
            return self._plain(argparse.Namespace if module == "argparse" else types.SimpleNamespace)
        found = self._torch_global(module, name)
        if found is None and "." not in name and (self.family.holds(module) or self.family.lists(module, name)):
            found = self._family_global(module, name)
        if found is None:
            raise self._refuse(f"the global {module}.{name}")
        return found

    @staticmethod
    def _torch_global(module: str, name: str) -> Any:
        """A torch constant (``torch.float16``) or a ``torch.nn`` module class, else None."""
        if module not in ("torch", "torch.nn.modules") and not module.startswith("torch.nn.modules."):
            return None
        obj = _lookup(module, name)
        return obj if _is_value(obj) or (module != "torch" and _is_module_class(obj)) else None

    def _family_global(self, module: str, name: str) -> Any:
        """An ``nn.Module`` class of the family's packages or one of its listed plain classes, else None."""
        obj = _lookup(module, name)
        if obj is None:  # a name of the model code that this version lacks: a foreign file, not a threat
            raise pickle.UnpicklingError(f"{module}.{name} does not exist in the installed {self.family.name} "
                                         "model code")  # fmt: skip
        if self.family.holds(module) and _is_module_class(obj):
            return obj
        if self.family.lists(module, name) and isinstance(obj, type):
            return self._plain(obj)
        return None

    def _plain(self, cls: type) -> type:
        """A plain data class (a namespace): it may be called without arguments, as its pickle does."""
        self._plain_classes.append(cls)
        return cls

    # -- opcodes that call or mutate ------------------------------------------------------------------------
    def _check_call(self, func: Any, args: Any) -> None:
        """Only the allowed callables, and plain classes without arguments, may be called (compared by identity:
        whatever a pickle puts on its stack is never asked to compare itself)."""
        if id(func) in _callable_ids() or (not args and any(func is c for c in self._plain_classes)):
            return
        name = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', type(func).__name__)}"
        raise self._refuse(f"a call of {name} (classes of the model code are rebuilt from their data, never called)")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        self._check_call(func, args)
        self.stack[-1] = func(*args)

    def _instantiate(self, klass: Any, args: Any) -> None:
        if args or not isinstance(klass, type) or hasattr(klass, "__getinitargs__"):
            self._check_call(klass, args)
            self.append(klass(*args))
        else:
            self.append(klass.__new__(klass))

    def load_build(self) -> None:
        inst = self.stack[-2]  # (the state is on top)
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.ModuleType, functools.partial)):
            raise self._refuse(f"state set on {inst!r}")
        super().load_build()

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.BUILD[0]] = load_build


def pickle_module(family: Family, source: str) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` that unpickles through :class:`RestrictedUnpickler`."""

    class Unpickler(RestrictedUnpickler):
        def __init__(self, file: Any, **kwargs: Any) -> None:
            super().__init__(file, family=family, source=source, **kwargs)

    return types.SimpleNamespace(
        __name__=f"vcmbench_{family.name}_safe_pickle",
        Unpickler=Unpickler,
        load=lambda f, **kw: Unpickler(f, **kw).load(),
    )


def load_checkpoint(path: str | Path, family: str | Family, mmap: bool = False) -> Any:
    """``torch.load`` of a pickled checkpoint of ``family`` (a key of :data:`FAMILIES`), on the CPU, through
    the restricted unpickler. Raises :class:`UnsafeCheckpointError` for a refused global; any other failure
    (a corrupt or foreign file) propagates as it is, for the caller to word."""
    import torch

    fam = FAMILIES[family] if isinstance(family, str) else family
    module = pickle_module(fam, str(path))
    mmap = mmap and zipfile.is_zipfile(path)  # the legacy (pre-1.6) format cannot be memory-mapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=module, mmap=mmap)


def is_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) is a refusal of the restricted unpickler."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, UnsafeCheckpointError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False

