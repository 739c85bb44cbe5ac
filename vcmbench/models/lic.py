"""Learned image codec models: construction by name, checkpoint files, padding.

Architectures (``arch``):

- ``tcm``: TCM, Liu et al., "Learned Image Compression with Mixed Transformer-CNN
  Architectures", CVPR 2023 (:mod:`vcmbench.models.tcm`); settings ``N`` (64 / 96 /
  128 for the small / medium / large models), ``M`` (320), ...;
- the CompressAI zoo architectures (Bégaint et al., "CompressAI", arXiv:2011.03029):
  ``bmshj2018-factorized``, ``bmshj2018-hyperprior`` (Ballé et al., ICLR 2018),
  ``mbt2018-mean``, ``mbt2018`` (Minnen et al., "Joint Autoregressive and Hierarchical
  Priors for Learned Image Compression", NeurIPS 2018), ``cheng2020-anchor``,
  ``cheng2020-attn`` (Cheng et al., "Learned Image Compression with Discretized
  Gaussian Mixture Likelihoods and Attention Modules", CVPR 2020); settings ``N``,
  ``M`` or ``quality`` (the zoo's channel configuration for that quality).

Checkpoint files written by ``vcmbench train`` are dictionaries (a name ending in ``.xz`` is
the same file compressed with xz/LZMA, about a quarter smaller; it is decompressed in memory)::

    {"format": "vcmbench-lic", "format_version": 1, "arch": ..., "arch_kwargs": {...},
     "state_dict": {...}, "meta": {"loss": "saicm", "lambda": 0.05, ...}}

holding the entropy coder's tables (``update(force=True)`` was run before saving).
Foreign checkpoints are read too: a ``{"state_dict": ...}`` dictionary (the public
TCM and SA-ICM releases, which also hold their optimizer and scheduler states) or a
bare state dict (CompressAI's zoo files); their architecture comes from the codec
card. Their key names are first brought to this CompressAI's layout the way
CompressAI itself does (a ``module.`` prefix of ``DataParallel`` training dropped, the
entropy bottleneck's older parameter names renamed), then checked against the model
key by key and shape by shape (:func:`check_state_dict`): a missing, unexpected or
wrongly shaped tensor is a :class:`ModelError` naming it. Everything is read with
``torch.load(weights_only=True)``: no pickled code is ever executed.

Entropy-coder settings that change the bits (a codec card can set both):

- the scale table (``scale_levels``): the Gaussian conditional's coding tables are built
  for this many scales, log-spaced from 0.11 to 256. vcmbench's default is
  :data:`SCALE_LEVELS` (256); CompressAI's ``get_scale_table`` and the TCM / SA-ICM
  code use 64 (``SCALES_LEVELS = 64`` in LIC_TCM ``models/tcm.py``). Tables a checkpoint
  file already holds are used as they are (as CompressAI's ``update()`` without
  ``force`` does); their size must then equal ``scale_levels``;
- padding (:func:`pad_box`): ``edge`` repeats the last row / column at the bottom and
  right up to the multiple (vcmbench's default); ``centre-zeros`` adds zeros split
  evenly around the image (the ``pad()`` of LIC_TCM ``eval.py`` and SA-ICM
  ``utils.py``, with ``p = 128``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VcmbenchError

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "PAD_MODES",
    "SCALE_LEVELS",
    "LicCheckpoint",
    "build_model",
    "check_state_dict",
    "load_checkpoint",
    "pad_box",
    "pad_multiple",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "vcmbench-lic"
CHECKPOINT_VERSION = 1
#: Gaussian scales the entropy coder has tables for: log-spaced from 0.11 to 256 like CompressAI's, but 256 of
#: them instead of 64. The coder rounds each predicted scale up to the next table entry; with 64 entries (13 %
#: apart) that alone cost 2-6 % more bytes than the likelihoods promise on our low-rate models, with 256 it is
#: under 2 %. The tables live in the checkpoint (xz shrinks the larger table to almost nothing).
SCALE_LEVELS = 256


def scale_table(levels: int = SCALE_LEVELS) -> torch.Tensor:
    """The scale table the Gaussian conditional's coding tables are built for."""
    from compressai.models.google import get_scale_table

    return get_scale_table(levels=levels)


def _zoo() -> tuple[dict[str, Any], dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressai.zoo.image import cfgs, model_architectures
    return model_architectures, cfgs


def _zoo_names() -> list[str]:
    return ["bmshj2018-factorized", "bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor",
            "cheng2020-attn"]  # fmt: skip


#: every architecture name a card or ``vcmbench train --arch`` accepts
ARCHITECTURES: tuple[str, ...] = ("tcm", *_zoo_names())


class ModelError(VcmbenchError, ValueError):
    """A model or checkpoint that cannot be built or read; the message names the file and the fix."""


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised model of architecture ``arch`` (see the module docstring for settings)."""
    if arch == "tcm":
        from .tcm import TCM

        try:
            return TCM(**kwargs)
        except TypeError as exc:
            raise ModelError(f"arch tcm: {exc}") from None
    if arch not in ARCHITECTURES:
        from ..registry import did_you_mean

        raise ModelError(
            f"unknown learned-codec architecture {arch!r}{did_you_mean(arch, list(ARCHITECTURES))}; "
            f"known: {', '.join(ARCHITECTURES)}"
        )
    archs, cfgs = _zoo()
    kw = dict(kwargs)
    if "quality" in kw:
        q = int(kw.pop("quality"))
        if q not in cfgs[arch]:
            raise ModelError(f"arch {arch}: zoo quality {q} does not exist; choose from {sorted(cfgs[arch])}")
        names = ("N", "M")[: len(cfgs[arch][q])]
        kw = {**dict(zip(names, cfgs[arch][q], strict=True)), **kw}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return archs[arch](**kw)
    except TypeError as exc:
        raise ModelError(f"arch {arch}: bad settings {kw}: {exc}") from None


def pad_multiple(model: nn.Module) -> int:
    """The multiple the input height and width are padded to before coding.

    The model's own ``pad_multiple`` if it declares one (TCM: 128), else its total
    downsampling (64 for every hyperprior model: 16 in the analysis transform,
    4 more in the hyper-analysis).
    """
    explicit = getattr(model, "pad_multiple", None)
    if explicit:
        return int(explicit)
    factor = getattr(model, "downsampling_factor", None)
    try:
        return int(factor) if factor else 64
    except (TypeError, ValueError):
        return 64


def pad_amounts(height: int, width: int, multiple: int) -> tuple[int, int]:
    """Rows and columns to add at the bottom / right so both sides are multiples of ``multiple``."""
    return (math.ceil(height / multiple) * multiple - height, math.ceil(width / multiple) * multiple - width)


#: how an image is padded to the multiple: ``edge`` (repeat the last row / column at the bottom and right;
#: vcmbench's default) or ``centre-zeros`` (zeros split evenly around the image, the odd one at the bottom /
#: right: LIC_TCM ``eval.py`` and SA-ICM ``utils.py``, ``pad(x, p)``)
PAD_MODES = ("edge", "centre-zeros")


def pad_box(height: int, width: int, multiple: int, mode: str = "edge") -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows / columns added so both sides become multiples of ``multiple``."""
    ph, pw = pad_amounts(height, width, multiple)
    if mode == "edge":
        return 0, ph, 0, pw
    if mode == "centre-zeros":
        return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2
    raise ModelError(f"unknown pad mode {mode!r}; choose one of {', '.join(PAD_MODES)}")


def pad_tensor(x: torch.Tensor, multiple: int, mode: str = "edge") -> torch.Tensor:
    """``x`` (N, C, H, W) padded as :func:`pad_box` says."""
    import torch.nn.functional as F

    top, bottom, left, right = pad_box(x.shape[2], x.shape[3], multiple, mode)
    if not (top or bottom or left or right):
        return x
    if mode == "edge":
        return F.pad(x, (left, right, top, bottom), mode="replicate")
    return F.pad(x, (left, right, top, bottom), mode="constant", value=0.0)


@dataclass
class LicCheckpoint:
    """A loaded checkpoint: the model (on CPU, eval mode, entropy tables ready) and what is known about it."""

    model: nn.Module
    arch: str
    arch_kwargs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    #: True when the file held the entropy coder's tables (else they were rebuilt here)
    had_tables: bool = True


def _float_state(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict with learnable float parameters stored as ``dtype`` and buffers untouched."""
    params = {name for name, _ in model.named_parameters()}
    out = {}
    for k, v in model.state_dict().items():
        out[k] = v.to(dtype) if k in params and v.is_floating_point() else v
    return out


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    arch: str,
    arch_kwargs: Mapping[str, Any],
    meta: Mapping[str, Any] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write a codec checkpoint: entropy tables rebuilt (``update(force=True)``), then the state dict.

    The Gaussian coding tables are built for :data:`SCALE_LEVELS` scales.
    ``dtype="float16"`` stores the learnable parameters in half precision (half the
    file size). The model is rounded to those values *before* the tables are
    rebuilt, so the file describes exactly the model the codec will run (in float32).
    """
    if dtype not in ("float32", "float16"):
        raise ModelError(f"checkpoint dtype must be float32 or float16, got {dtype!r}")
    model = model.to("cpu").eval()
    if dtype == "float16":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.float16).to(p.dtype))
    model.update(scale_table=scale_table(), force=True)  # type: ignore[operator]
    blob = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "param_dtype": dtype,
        "state_dict": _float_state(model, torch.float16 if dtype == "float16" else torch.float32),
        "meta": dict(meta or {}),
    }
    return write_checkpoint_file(blob, path)


XZ_MAGIC = b"\xfd7zXZ\x00"


def write_checkpoint_file(blob: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically; xz-compressed when the name ends in ``.xz``."""
    import io
    import lzma

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(dict(blob), buf)
    data = buf.getvalue()
    if path.name.endswith(".xz"):
        data = lzma.compress(data, preset=9)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` of a checkpoint file, plain or xz-compressed."""
    import io
    import lzma

    data = Path(path).read_bytes()
    if data.startswith(XZ_MAGIC):
        data = lzma.decompress(data)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _strip_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    from compressai.zoo.pretrained import load_pretrained

    return load_pretrained({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})


def canonical_state(model: nn.Module, state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A foreign state dict under this CompressAI's key names, renamed as CompressAI's own loaders do:
    ``module.`` (``DataParallel``) dropped, ``downsample`` -> ``skip``, and the entropy bottleneck's older
    ``_matrix0`` / ``_matrices.0`` (and bias / factor) names -> ``matrices.0``."""
    from compressai.entropy_models import EntropyBottleneck
    from compressai.models.utils import remap_old_keys

    out = _strip_prefix(state)
    for name, module in model.named_modules():
        if isinstance(module, EntropyBottleneck):
            out = dict(remap_old_keys(name, out))
    return out


#: entropy-coder buffers whose size follows the tables built by ``update()`` (empty before): not shape-checked
TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def _listing(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Every tensor of ``model`` present in ``state`` with its shape, and nothing else; a :class:`ModelError`
    naming the missing, unexpected and wrongly shaped keys otherwise (the coder's table buffers may have any
    size)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state and k.rsplit(".", 1)[-1] not in TABLE_BUFFERS and state[k].shape != expected[k].shape
    ]
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]  # fmt: skip
    if problems:
        raise ModelError(f"{where}: the weights do not fit the model ({'; '.join(problems)}); check arch / "
                         "arch_kwargs in the card, or the file is not a checkpoint of this architecture")  # fmt: skip


def _has_tables(state: Mapping[str, Any]) -> bool:
    return any(k.endswith("_quantized_cdf") and v.numel() > 0 for k, v in state.items())


def table_levels(state: Mapping[str, torch.Tensor]) -> int | None:
    """How many scales the Gaussian coding tables held by ``state`` were built for (None: no such tables)."""
    sizes = {
        int(v.numel()) for k, v in state.items()
        if k.endswith(".scale_table") and v.numel() and state.get(k[: -len("scale_table")] + "_offset", torch.empty(0)).numel()
    }  # fmt: skip
    return sizes.pop() if len(sizes) == 1 else None


def _read_blob(path: Path) -> dict[str, Any]:
    try:
        blob = read_checkpoint_file(path)
    except Exception as exc:
        raise ModelError(
            f"cannot read learned-codec checkpoint {path} ({type(exc).__name__}: {exc}); it is not a "
            "PyTorch checkpoint of tensors, or it is corrupt"
        ) from None
    if not isinstance(blob, dict):
        raise ModelError(f"{path}: expected a dictionary checkpoint, got {type(blob).__name__}")
    return blob


def _ours(blob: Mapping[str, Any], path: Path, arch: str | None,
          arch_kwargs: Mapping[str, Any] | None) -> tuple[nn.Module, str, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(model, arch, arch settings, state) of a vcmbench checkpoint, checked against the card's arch."""
    if int(blob.get("format_version", 0)) > CHECKPOINT_VERSION:
        raise ModelError(f"{path}: checkpoint format version {blob['format_version']} is newer than this "
                         f"vcmbench reads ({CHECKPOINT_VERSION}); update vcmbench")  # fmt: skip
    file_arch = str(blob["arch"])
    file_kwargs = dict(blob.get("arch_kwargs") or {})
    if arch is not None and arch != file_arch:
        raise ModelError(f"{path} holds a {file_arch!r} model but the card says arch: {arch!r}; fix the card")
    if arch_kwargs:
        differ = {k: (v, file_kwargs.get(k)) for k, v in arch_kwargs.items() if file_kwargs.get(k) != v}
        if differ:
            shown = ", ".join(f"{k}: card {a!r} vs file {b!r}" for k, (a, b) in differ.items())
            raise ModelError(f"{path}: arch settings differ from the card ({shown}); fix arch_kwargs")
    return build_model(file_arch, **file_kwargs), file_arch, file_kwargs, dict(blob["state_dict"])


def _foreign(blob: Mapping[str, Any], path: Path, arch: str | None,
             arch_kwargs: Mapping[str, Any] | None) -> tuple[nn.Module, str, dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(model, arch, arch settings, state) of a foreign checkpoint, its keys renamed (:func:`canonical_state`)."""
    if arch is None:
        raise ModelError(f"{path} is not a vcmbench checkpoint: the card must name its arch:")
    raw = blob.get("state_dict", blob)
    if not isinstance(raw, Mapping):
        raise ModelError(f"{path}: its state_dict is a {type(raw).__name__}, not a mapping of tensors")
    kwargs = dict(arch_kwargs or {})
    model = build_model(arch, **kwargs) if kwargs else _from_foreign_state(arch, _strip_prefix(raw))
    return model, arch, kwargs, canonical_state(model, raw)


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    scale_levels: int = SCALE_LEVELS,
) -> LicCheckpoint:
    """Read a checkpoint (ours or a foreign one, see the module docstring) into a ready-to-code model.

    ``arch`` / ``arch_kwargs`` (from the card) are required for foreign files and
    checked against ours: a mismatch is a :class:`ModelError` naming both. Tensors are
    checked key by key (:func:`check_state_dict`). The coder's tables are the file's
    when it holds them (built for ``scale_levels`` scales, else a :class:`ModelError`),
    else built here for ``scale_levels`` scales.
    """
    path = Path(path)
    blob = _read_blob(path)
    ours = blob.get("format") == CHECKPOINT_FORMAT
    model, arch, kwargs, state = (_ours if ours else _foreign)(blob, path, arch, arch_kwargs)
    meta = dict(blob.get("meta") or {}) if ours else {}
    state = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in state.items()}
    check_state_dict(model, state, f"{path} (arch {arch} {kwargs})")
    tables = _has_tables(state)
    levels = table_levels(state) if tables else None
    if levels is not None and levels != scale_levels:
        raise ModelError(f"{path} holds entropy-coder tables for {levels} scales, but the card says scale_levels: "
                         f"{scale_levels}; set scale_levels: {levels} (the tables the file was made with)")  # fmt: skip
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(
            f"{path}: weights do not fit arch {arch!r} with {kwargs} ({' '.join(str(exc).split())[:500]}); "
            "check arch / arch_kwargs in the card"
        ) from None
    model.eval()
    if not tables:
        model.update(scale_table=scale_table(scale_levels), force=True)  # type: ignore[operator]
    return LicCheckpoint(model, arch, kwargs, meta, tables)


def _from_foreign_state(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """Infer the channel counts of a foreign checkpoint from its tensors (CompressAI's ``from_state_dict``)."""
    try:
        if arch == "tcm":
            n = state["g_a.0.conv1.weight"].shape[0] // 2
            m = state["g_a.9.weight"].shape[0]
            return build_model("tcm", N=n, M=m)
        archs, _ = _zoo()
        cls: Callable[..., nn.Module] = archs[arch]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_state_dict(state)  # type: ignore[attr-defined]
    except (KeyError, IndexError, RuntimeError) as exc:
        raise ModelError(
            f"cannot infer the {arch} model size from the checkpoint ({type(exc).__name__}: {exc}); "
            "give N / M in the card's arch_kwargs"
        ) from None


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())
