"""Learned image codecs (TCM, CompressAI zoo) as vcmbench codecs: ``lic``, ``objicm``, ``tlicm``, ``saicm``.

One checkpoint per rate point. A card maps each quality value (a rate-point key:
an index, or a λ) to a checkpoint file (path, or URL + sha256)::

    qualities: [1, 2]
    settings:
      arch: mbt2018-mean
      arch_kwargs: {N: 64, M: 96}
      rate_points:
        1: {lambda: 0.0035, checkpoint: checkpoints/saicm/q1.pt, sha256: 5b1e...}
        2: {lambda: 0.0130, url: https://example.org/q2.pt, sha256: 77aa...}

A rate point may also state what its checkpoint was trained with; each is checked against
the checkpoint's training record (``meta``) when it has one (foreign checkpoints carry none
and are accepted), a mismatch is an error naming both:

- ``lambda``, ``lambda2``: the loss weights (``meta.lambda``, ``meta.lambda2``);
- ``alpha`` (``saicm`` only): SA-ICM's SAM threshold α, the mask folder's ``alpha``
  (``meta.masks_params.params.alpha``, from ``vcmbench masks --source sam --alpha``). The
  paper's rate points differ by α at one λ (0.98 / 0.93 / 0.48 at λ = 0.05); the
  authors' released models are α 0.78 and 0.93 at λ 0.05. vcmbench reads α as SAM's
  ``pred_iou_thresh`` (see :mod:`vcmbench.masks` for why);
- ``tl_objective`` (``tlicm`` only): ``task`` (YOLOv5's detection loss) or ``features``
  (MSE of early YOLOv5 features) (``meta.tl_objective``; a tlicm checkpoint without it
  predates the task loss and was trained on features).

``download_page`` (informational) says where a checkpoint that must be fetched by hand comes
from; a missing file's error names it.

Where a publisher gives only the first hex digits of a file's sha256 (CompressAI's zoo names each
file ``<model>-<quality>-<8 hex digits>.pth.tar``), a rate point says ``sha256_prefix:`` instead of
``sha256:`` (checked by :func:`vcmbench.weights.resolve_weights`). A rate point's own ``arch_kwargs``
(merged over the card's) give models whose size differs per rate point, as the zoo's do (``N``/``M``
from CompressAI's ``cfgs``)::

    rate_points:
      1: {url: .../bmshj2018-hyperprior-1-7eb97409.pth.tar, sha256_prefix: 7eb97409, arch_kwargs: {N: 128, M: 192}}

Card settings of the entropy coder and padding (both change the bits; the defaults are
vcmbench's, the official SA-ICM card sets the release's, see :mod:`vcmbench.models.lic`):
``scale_levels`` (Gaussian scale-table size, default 256), ``pad_multiple`` (default:
the model's, 64, or 128 for TCM) and ``pad_mode`` (``edge`` default, or ``centre-zeros``).

The four adapter names share this class and differ in the training objective
their checkpoints must carry (``meta.loss`` of a vcmbench checkpoint; foreign
checkpoints carry none and are accepted):

- ``lic``: rate + λ·255²·MSE (Ballé et al., ICLR 2017 onwards);
- ``objicm``: Object-ICM, rate + λ·255²·MSE inside ground-truth object masks;
- ``saicm``: SA-ICM (T. Shindo, K. Yamada, T. Watanabe, H. Watanabe, "Image Coding
  for Machines with Edge Information Learning Using Segment Anything", IEEE ICIP
  2024, arXiv:2403.04173): MSE on the edges of Segment Anything masks only;
- ``tlicm``: task-loss ICM, rate + λ1·MSE + λ2·‖F(x) − F(x̂)‖², F an early part of
  the evaluation detector (Le et al., ICASSP 2021; Fischer et al., 2022).

Bitstreams are real: the input is padded (``pad_mode``, edge replication by default) to ``pad_multiple``,
``model.compress()`` runs CompressAI's rANS coder, and the bytes are a small header
followed by the entropy-coded strings. Rate = all of those bytes. Header (varints
are unsigned LEB128)::

    u8 format (1) | u8 rate-point position | varint height | varint width
    varint ndim, ndim x varint (hyper-latent shape)
    varint groups, per group: varint strings, per string: varint length
    payload: every string, in order

Format 1 (vcmbench before implementation version 2) is refused: its entropy parameters were float32
computations whose last bits depend on the number of threads, so it decoded to noise in another process.

Decoding recomputes the entropy model's parameters, so encoder and decoder must compute them alike,
bit for bit (:mod:`vcmbench.models.exact_prior`):

- hyperprior models (``mbt2018-mean``, the shipped checkpoints, and ``bmshj2018-hyperprior``): the
  hyper-synthesis runs in exact integer arithmetic, so the symbols decode identically on every machine,
  thread count and device (CPU or CUDA); the rate never depends on where a stream is decoded;
- every model: encode and decode run under :func:`~vcmbench.models.exact_prior.fixed_arithmetic` (one
  intra-op CPU thread, cuDNN deterministic). That makes the pixels identical across processes and thread
  counts for one PyTorch build on one CPU instruction set (and, for the models without an exact prior,
  ``mbt2018``, ``cheng2020-*``, ``tcm``, it is what keeps the entropy decoder in sync). Pixels are not
  guaranteed identical between CPU instruction sets or between CPU and CUDA (a few may differ by one
  level; with a float prior a stream may even fail to decode there), so the device type enters the
  codec's version and cache key: decode on the kind of device you encoded on.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..cards import Card
from ..errors import CodecError, QualityError, WeightsError
from ..media.devices import resolve_device
from ..media.hashing import stable_hash
from ..registry import register
from .base import Bitstream, Codec, Complexity, TrainingSet

#: bump when the bitstream layout, the entropy parameters' arithmetic or the pre/post-processing changes
#: (2: exact integer hyperprior, fixed one-thread arithmetic; the shipped checkpoints' bitstreams changed)
IMPL_VERSION = "2"
FORMAT = 2
LOSSES = ("lic", "objicm", "saicm", "tlicm")
RATE_POINT_KEYS = {"lambda", "lambda2", "alpha", "tl_objective", "checkpoint", "url", "sha256", "sha256_prefix",
                   "random_seed", "description", "download_page", "arch_kwargs"}
TL_OBJECTIVES = ("task", "features")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA_PREFIX_RE = re.compile(r"^[0-9a-fA-F]{8,63}$")


# ---- header --------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"varint of a negative number {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CodecError("learned codec: truncated bitstream header")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CodecError("learned codec: corrupt bitstream header (varint too long)")


def pack_bitstream(position: int, height: int, width: int, shape: tuple[int, ...], strings: list[list[bytes]]) -> bytes:
    """Header + concatenated strings (see the module docstring)."""
    head = bytearray([FORMAT, position])
    head += _varint(height) + _varint(width) + _varint(len(shape))
    for d in shape:
        head += _varint(int(d))
    head += _varint(len(strings))
    for group in strings:
        head += _varint(len(group))
        for s in group:
            head += _varint(len(s))
    return bytes(head) + b"".join(s for group in strings for s in group)


@dataclass(frozen=True)
class Unpacked:
    position: int
    height: int
    width: int
    shape: tuple[int, ...]
    strings: list[list[bytes]]
    header_bytes: int


def unpack_bitstream(data: bytes) -> Unpacked:
    """Inverse of :func:`pack_bitstream`; a malformed stream is a :class:`CodecError`."""
    if len(data) < 2:
        raise CodecError("learned codec: bitstream shorter than its header")
    if data[0] == 1:
        raise CodecError("learned codec: bitstream format 1 was written by an older vcmbench whose entropy "
                         "parameters depended on the thread count (it may decode to noise); encode again")
    if data[0] != FORMAT:
        raise CodecError(f"learned codec: unknown bitstream format {data[0]} (this version writes {FORMAT})")
    position = data[1]
    pos = 2
    height, pos = _read_varint(data, pos)
    width, pos = _read_varint(data, pos)
    ndim, pos = _read_varint(data, pos)
    shape = []
    for _ in range(ndim):
        d, pos = _read_varint(data, pos)
        shape.append(d)
    ngroups, pos = _read_varint(data, pos)
    lengths: list[list[int]] = []
    for _ in range(ngroups):
        count, pos = _read_varint(data, pos)
        group = []
        for _ in range(count):
            n, pos = _read_varint(data, pos)
            group.append(n)
        lengths.append(group)
    header = pos
    strings = []
    for group in lengths:
        out = []
        for n in group:
            if pos + n > len(data):
                raise CodecError("learned codec: truncated bitstream payload")
            out.append(data[pos : pos + n])
            pos += n
        strings.append(out)
    if pos != len(data):
        raise CodecError(f"learned codec: {len(data) - pos} unexpected bytes after the payload")
    return Unpacked(position, height, width, tuple(shape), strings, header)


# ---- rate points ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatePoint:
    """One trained model of a learned codec: its key (the card's quality value) and where its weights are."""

    key: int | float
    lmbda: float | None
    checkpoint: str | None
    url: str | None
    sha256: str | None
    lambda2: float | None = None
    #: no checkpoint: random initial weights from this seed (pipeline checks and timing only)
    random_seed: int | None = None
    #: SA-ICM: the SAM threshold α of the masks the checkpoint was trained on
    alpha: float | None = None
    #: TL-ICM: ``task`` or ``features``
    tl_objective: str | None = None
    #: where a checkpoint fetched by hand comes from (named in the error when it is missing)
    download_page: str | None = None
    #: the first hex digits of the checkpoint's sha256, where only those are published (CompressAI's zoo)
    sha256_prefix: str | None = None
    #: this rate point's model settings, over the card's ``arch_kwargs`` (the zoo's N / M per quality)
    arch_kwargs: Mapping[str, Any] | None = None


def parse_rate_points(raw: Any, where: str) -> dict[int | float, RatePoint]:
    """Validate the card's ``rate_points`` mapping; every problem is a :class:`CodecError` naming the key."""
    if not isinstance(raw, Mapping) or not raw:
        raise CodecError(f"{where}: settings.rate_points must be a non-empty mapping of quality -> checkpoint")
    points: dict[int | float, RatePoint] = {}
    for key, spec in raw.items():
        try:
            k = float(key)
        except (TypeError, ValueError):
            raise CodecError(f"{where}: rate point key {key!r} is not a number") from None
        knum: int | float = int(k) if k == int(k) else k
        if isinstance(spec, str):
            spec = {"checkpoint": spec}
        if not isinstance(spec, Mapping):
            raise CodecError(f"{where}: rate point {key!r} must be a mapping (checkpoint/url/sha256/lambda)")
        unknown = set(spec) - RATE_POINT_KEYS
        if unknown:
            raise CodecError(f"{where}: rate point {key!r}: unknown key(s) {sorted(unknown)}; allowed: "
                             f"{sorted(RATE_POINT_KEYS)}")  # fmt: skip
        ckpt, url, sha = spec.get("checkpoint"), spec.get("url"), spec.get("sha256")
        seed = spec.get("random_seed")
        if seed is not None and (ckpt or url or not isinstance(seed, int)):
            raise CodecError(f"{where}: rate point {key!r}: random_seed (an integer) excludes checkpoint:/url:")
        if not ckpt and not url and seed is None:
            raise CodecError(f"{where}: rate point {key!r} needs checkpoint: (a path) or url: (+ sha256:), "
                             "or random_seed: for untrained weights")
        prefix = _sha256_prefix(spec, key, where)
        if url and not sha and not prefix:
            raise CodecError(f"{where}: rate point {key!r} downloads from {url} but has no sha256:; add it")
        if sha is not None and not _SHA_RE.match(str(sha)):
            raise CodecError(f"{where}: rate point {key!r}: sha256 {sha!r} is not 64 hex digits")
        kwargs = spec.get("arch_kwargs")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise CodecError(f"{where}: rate point {key!r}: arch_kwargs must be a mapping (e.g. {{N: 128, M: 192}})")
        _check_training_keys(spec, key, where)
        lmbda, alpha = spec.get("lambda"), spec.get("alpha")
        if knum in points:
            raise CodecError(f"{where}: rate point {key!r} is listed twice")
        points[knum] = RatePoint(knum, None if lmbda is None else float(lmbda), ckpt, url, sha,
                                 spec.get("lambda2"), seed, None if alpha is None else float(alpha),
                                 spec.get("tl_objective"), spec.get("download_page"), prefix,
                                 None if kwargs is None else dict(kwargs))  # fmt: skip
    if len(points) > 255:
        raise CodecError(f"{where}: at most 255 rate points")
    return points


def _sha256_prefix(spec: Mapping[str, Any], key: Any, where: str) -> str | None:
    """The rate point's ``sha256_prefix`` (8 to 63 hex digits, lower case; not with ``sha256``), or None."""
    prefix = spec.get("sha256_prefix")
    if prefix is None:
        return None
    if spec.get("sha256") is not None:
        raise CodecError(f"{where}: rate point {key!r} has both sha256: and sha256_prefix:; keep the whole sha256")
    if not isinstance(prefix, str) or not _SHA_PREFIX_RE.match(prefix):
        raise CodecError(f"{where}: rate point {key!r}: sha256_prefix {prefix!r} is not a string of 8 to 63 hex "
                         "digits (quote it in YAML: '23852949')")  # fmt: skip
    return prefix.lower()


def _check_training_keys(spec: Mapping[str, Any], key: Any, where: str) -> None:
    """lambda / lambda2 numbers >= 0, alpha in [0, 1], tl_objective one of :data:`TL_OBJECTIVES`."""
    for name in ("lambda", "lambda2"):
        value = spec.get(name)
        if value is not None and not (isinstance(value, int | float) and value >= 0):
            raise CodecError(f"{where}: rate point {key!r}: {name} must be a number >= 0, got {value!r}")
    alpha = spec.get("alpha")
    if alpha is not None and not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
        raise CodecError(f"{where}: rate point {key!r}: alpha (SAM pred_iou_thresh) must lie in [0, 1], got {alpha!r}")
    tl = spec.get("tl_objective")
    if tl is not None and tl not in TL_OBJECTIVES:
        raise CodecError(f"{where}: rate point {key!r}: tl_objective must be one of {', '.join(TL_OBJECTIVES)}, "
                         f"got {tl!r}")  # fmt: skip


def card_root(card: Card) -> Path:
    """The folder relative checkpoint paths of a card are resolved against (the repository for built-ins)."""
    if card.path is None:
        return Path.cwd()
    parent = card.path.resolve().parent
    return parent.parent if parent.name == "codecs" else parent


# ---- the codec ----------------------------------------------------------------------------------
class LearnedCodec(Codec):
    """A learned image codec with one checkpoint per rate point (see the module docstring)."""

    quality_name = "rate point"
    integer_quality = False
    location_settings = ("device", "base_dir")
    #: the training objective this adapter's checkpoints must have been trained with (None: any)
    expected_loss: ClassVar[str | None] = None
    #: rate-point keys only this adapter's objective gives meaning to
    objective_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        arch: str,
        rate_points: Mapping[Any, Any],
        arch_kwargs: Mapping[str, Any] | None = None,
        device: str = "auto",
        base_dir: str | None = None,
        scale_levels: int | None = None,
        pad_multiple: int | None = None,
        pad_mode: str = "edge",
    ) -> None:
        from ..models.lic import ARCHITECTURES

        if arch not in ARCHITECTURES:
            raise CodecError(f"learned codec: unknown arch {arch!r}; known: {', '.join(ARCHITECTURES)}")
        self.arch = arch
        self.arch_kwargs = dict(arch_kwargs or {})
        self.points = parse_rate_points(rate_points, f"codec {self.name}")
        self._check_objective_keys()
        self.keys = sorted(self.points)
        self.scale_levels, self.pad_multiple, self.pad_mode = _coder_settings(self.name, scale_levels, pad_multiple,
                                                                              pad_mode)  # fmt: skip
        self.device = device
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self._models: dict[int | float, Any] = {}
        self._paths: dict[int | float, Path] = {}
        self._lock = threading.Lock()
        self._torch_device: Any = None

    def _check_objective_keys(self) -> None:
        for key, point in self.points.items():
            for name in ("alpha", "tl_objective"):
                if getattr(point, name) is not None and name not in self.objective_keys:
                    raise CodecError(f"codec {self.name}: rate point {key}: {name} belongs to "
                                     f"{'saicm' if name == 'alpha' else 'tlicm'} checkpoints, not to adapter "
                                     f"{self.expected_loss or 'lic'}; remove it")  # fmt: skip

    @classmethod
    def card_kwargs(cls, card: Card) -> dict[str, Any]:
        settings = dict(card.settings)
        settings.setdefault("base_dir", str(card_root(card)))  # checkpoint paths are relative to the card's repo
        return settings

    # ---- identity ------------------------------------------------------------------------------
    def torch_device(self) -> Any:
        if self._torch_device is None:
            self._torch_device = resolve_device(self.device, self.name, CodecError)
        return self._torch_device

    def version(self) -> str:
        import compressai
        import torch

        return (f"learned-{IMPL_VERSION}/compressai-{compressai.__version__}/torch-{torch.__version__}"
                f"/{self.torch_device().type}")  # fmt: skip

    def identity(self) -> str:
        """Architecture + every rate point's λ and checkpoint sha256 + implementation versions."""
        points = {
            str(k): {"lambda": p.lmbda, "sha256": self.checkpoint_sha256(k),
                     **({"arch_kwargs": dict(p.arch_kwargs)} if p.arch_kwargs else {})}
            for k, p in self.points.items()
        }  # fmt: skip
        ident = {"class": type(self).__qualname__, "arch": self.arch, "arch_kwargs": self.arch_kwargs,
                 "points": points, "version": self.version()}  # fmt: skip
        return stable_hash({**ident, **self._coder_identity()})

    def _coder_identity(self) -> dict[str, Any]:
        """The coder settings that differ from vcmbench's defaults (the defaults leave the identity as it was)."""
        from ..models.lic import SCALE_LEVELS

        out: dict[str, Any] = {}
        if self.scale_levels != SCALE_LEVELS:
            out["scale_levels"] = self.scale_levels
        if self.pad_multiple is not None:
            out["pad_multiple"] = self.pad_multiple
        if self.pad_mode != "edge":
            out["pad_mode"] = self.pad_mode
        return out

    def validate_quality(self, quality: Any) -> int | float:
        try:
            q = float(quality)
        except (TypeError, ValueError):
            raise QualityError(f"{self.name}: rate point {quality!r} is not a number") from None
        key: int | float = int(q) if q == int(q) else q
        if key not in self.points:
            raise QualityError(
                f"{self.name}: rate point {quality!r} has no checkpoint; this card defines "
                f"{', '.join(str(k) for k in self.keys)} (settings.rate_points)"
            )
        return key

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint_path(self, key: int | float) -> Path:
        """The verified checkpoint file of a rate point (path, ``$VCMBENCH_WEIGHTS_DIR``, cache, download)."""
        if key in self._paths:
            return self._paths[key]
        from ..media.hashing import file_sha256
        from ..weights import checksum_problem, resolve_weights

        p = self.points[key]
        path: Path | None = None
        if p.checkpoint:
            path = self._local_checkpoint(key)
        if path is None:
            path = resolve_weights(None, p.url, p.sha256, self.download_name(key), f"codec {self.name}",
                                   sha256_prefix=p.sha256_prefix)  # fmt: skip
        if p.sha256 or p.sha256_prefix:
            problem = checksum_problem(file_sha256(path), p.sha256, p.sha256_prefix)
            if problem:
                fresh = f"delete it to download it again from {p.url}" if p.url else "restore the file"
                raise WeightsError(
                    f"codec {self.name}: checkpoint {path} of rate point {key} fails its checksum: {problem}. "
                    f"Fix: {fresh}, or update sha256{'_prefix' if p.sha256_prefix else ''}: in the card"
                )
        self._paths[key] = path
        return path

    def download_name(self, key: int | float) -> str:
        """File name of a rate point's downloaded checkpoint (in ``$VCMBENCH_WEIGHTS_DIR`` or the cache)."""
        from urllib.parse import urlparse

        return Path(urlparse(self.points[key].url or "").path).name or f"{self.name}-{key}.pt"

    def local_checkpoint(self, key: int | float) -> Path | None:
        """The rate point's checkpoint file where it is on this machine already (the card's path,
        ``$VCMBENCH_WEIGHTS_DIR``, the cache; not verified), None where only a download would bring it."""
        from ..weights import local_candidates

        p = self.points[key]
        found = next((c for c in self._checkpoint_candidates(key) if c.is_file()), None)
        if found is not None:
            return found
        if p.url:
            return next((c for c in local_candidates(self.download_name(key)) if c.is_file()), None)
        return None

    def training_set(self, quality: Any) -> TrainingSet:
        """What the rate point's checkpoint records of its training images (see
        :mod:`~vcmbench.codecs.training_record`); untrained (``random_seed``) weights learned from none."""
        from .training_record import read_record

        key = self.validate_quality(quality)
        seed = self.points[key].random_seed
        if seed is not None:
            return TrainingSet(f"random weights (seed {seed})", frozenset())
        path = self.checkpoint_path(key)
        return TrainingSet(str(path), read_record(path).training_images)

    def _checkpoint_candidates(self, key: int | float) -> list[Path]:
        """Where a ``checkpoint:`` path may be: as given (relative to the card's repository), then the same file
        name in ``$VCMBENCH_WEIGHTS_DIR`` (for files fetched by hand)."""
        import os

        checkpoint = self.points[key].checkpoint
        if not checkpoint:
            return []
        cand = Path(checkpoint).expanduser()
        cand = cand if cand.is_absolute() else self.base_dir / cand
        env = os.environ.get("VCMBENCH_WEIGHTS_DIR")
        return [cand, *([Path(env).expanduser() / cand.name] if env else [])]

    def _local_checkpoint(self, key: int | float) -> Path | None:
        """The rate point's ``checkpoint:`` file (:meth:`_checkpoint_candidates`); None when it is nowhere and a url:
        can fetch it, else a WeightsError naming the file and where it comes from."""
        p = self.points[key]
        candidates = self._checkpoint_candidates(key)
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None or p.url:
            return found
        cand = candidates[0]
        where = f"download {cand.name} from {p.download_page} and place it there" if p.download_page else (
            "train it with `vcmbench train` (the card's header comment gives its recipe)")
        raise WeightsError(
            f"codec {self.name}: checkpoint {cand} of rate point {key} not found (nor in $VCMBENCH_WEIGHTS_DIR). "
            f"Fix: {where}, correct rate_points.{key}.checkpoint in the card, or give a url: + sha256:"
        )

    def checkpoint_sha256(self, key: int | float) -> str:
        """sha256 of the rate point's checkpoint file (``random-seed-<n>`` for untrained weights)."""
        from ..media.hashing import file_sha256

        seed = self.points[key].random_seed
        if seed is not None:
            return f"random-seed-{seed}"
        return file_sha256(self.checkpoint_path(key))

    def prepare(self, quality: Any) -> None:
        """Load the model of the rate point ``quality`` (once per process; :meth:`model`)."""
        self.model(self.validate_quality(quality))

    def model(self, key: int | float) -> Any:
        """The model of a rate point, loaded once (thread-safe), checked against the card."""
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            model = self._models.get(key)
            if model is None:
                from ..models.exact_prior import exact_prior

                model = self._load(key)
                exact_prior(model)  # built now, once, from the loaded weights
                self._models[key] = model
        return model

    def _load(self, key: int | float) -> Any:
        import torch

        from ..models.lic import ModelError, build_model, load_checkpoint, scale_table

        seed = self.points[key].random_seed
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                try:
                    model = build_model(self.arch, **self.point_arch_kwargs(key))
                except ModelError as exc:
                    raise CodecError(f"codec {self.name}: {exc}") from None
            model.eval().update(scale_table=scale_table(self.scale_levels), force=True)
            return model.to(self.torch_device())
        path = self.checkpoint_path(key)
        try:
            ck = load_checkpoint(path, self.arch, self.point_arch_kwargs(key), self.scale_levels)
        except ModelError as exc:
            raise CodecError(f"codec {self.name}, rate point {key}: {exc}") from None
        self._check_training(key, path, ck.meta)
        return ck.model.to(self.torch_device()).eval()

    def point_arch_kwargs(self, key: int | float) -> dict[str, Any]:
        """The model settings of a rate point: the card's ``arch_kwargs`` with the rate point's own over them."""
        return {**self.arch_kwargs, **(self.points[key].arch_kwargs or {})}

    def _check_training(self, key: int | float, path: Path, meta: Mapping[str, Any]) -> None:
        """The card's objective, λ, λ2, α and TL objective against the checkpoint's training record (absent
        values are not checked: foreign checkpoints have none)."""
        point = self.points[key]
        loss = meta.get("loss")
        if self.expected_loss and loss and loss != self.expected_loss:
            raise CodecError(
                f"codec {self.name}: checkpoint {path} (rate point {key}) was trained with the {loss!r} objective, "
                f"but adapter {self.expected_loss!r} expects {self.expected_loss!r} checkpoints; fix the card"
            )
        trained_alpha, alpha_source = _trained_alpha(meta)
        if point.alpha is not None and alpha_source is not None and trained_alpha is None:
            raise CodecError(f"codec {self.name}: rate point {key} says alpha {point.alpha} but checkpoint {path} was "
                             f"trained on {alpha_source!r} masks, which have no alpha; remove rate_points.{key}.alpha")  # fmt: skip
        said_trained = (("lambda", point.lmbda, meta.get("lambda")), ("lambda2", point.lambda2, meta.get("lambda2")),
                        ("alpha", point.alpha, trained_alpha))  # fmt: skip
        for name, said, trained in said_trained:
            if said is not None and trained is not None and not math.isclose(float(said), float(trained), rel_tol=1e-6):
                raise CodecError(
                    f"codec {self.name}: rate point {key} says {name} {said} but checkpoint {path} was trained "
                    f"with {name} {trained}; fix rate_points.{key}.{name}"
                )
        trained_tl = meta.get("tl_objective") or ("features" if loss == "tlicm" else None)
        if point.tl_objective is not None and trained_tl is not None and point.tl_objective != trained_tl:
            raise CodecError(f"codec {self.name}: rate point {key} says tl_objective {point.tl_objective} but checkpoint "
                             f"{path} was trained with the {trained_tl} objective; fix rate_points.{key}.tl_objective")  # fmt: skip

    # ---- coding ------------------------------------------------------------------------------------
    def _multiple(self, model: Any) -> int:
        """What the input is padded to: the card's ``pad_multiple`` (checked against the model's stride) or the
        model's own."""
        from ..models.lic import pad_multiple

        own = pad_multiple(model)
        if self.pad_multiple is None:
            return own
        stride = int(getattr(model, "downsampling_factor", 0) or own)
        if self.pad_multiple % stride:
            raise CodecError(f"codec {self.name}: pad_multiple {self.pad_multiple} is not a multiple of the model's "
                             f"stride {stride}; use {stride} or a multiple of it")  # fmt: skip
        return self.pad_multiple

    def _to_tensor(self, image: np.ndarray, multiple: int) -> Any:
        import torch

        from ..models.lic import pad_tensor

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise CodecError(f"{self.name}: expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div_(255.0)  # writable copy
        return pad_tensor(x, multiple, self.pad_mode).to(self.torch_device())

    def _crop(self, x_hat: Any, model: Any, height: int, width: int) -> np.ndarray:
        """The decoded image of the original size, cut out of the padded reconstruction."""
        from ..models.lic import pad_box

        top, _, left, _ = pad_box(height, width, self._multiple(model), self.pad_mode)
        return to_image(x_hat[:, :, top:, left:], height, width)

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        import torch

        from ..models.exact_prior import exact_compress, exact_prior, fixed_arithmetic

        key = self.validate_quality(quality)
        model = self.model(key)
        h, w = image.shape[:2]
        x = self._to_tensor(image, self._multiple(model))
        with torch.no_grad(), fixed_arithmetic(self.torch_device()):
            out = exact_compress(model, x) if exact_prior(model) else model.compress(x)
        strings = [[bytes(s) for s in group] for group in out["strings"]]
        shape = tuple(int(d) for d in out["shape"])
        data = pack_bitstream(self.keys.index(key), h, w, shape, strings)
        return Bitstream(data, width=w, height=h, meta={"rate_point": key})

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        import torch

        from ..models.exact_prior import exact_decompress, exact_prior, fixed_arithmetic

        u = unpack_bitstream(bitstream.data)
        if u.position >= len(self.keys):
            raise CodecError(f"{self.name}: bitstream names rate point #{u.position}, the card has {len(self.keys)}")
        key = self.keys[u.position]
        model = self.model(key)
        with torch.no_grad(), fixed_arithmetic(self.torch_device()):
            if exact_prior(model):
                x_hat = exact_decompress(model, u.strings, u.shape)["x_hat"]
            else:
                x_hat = model.decompress(u.strings, u.shape)["x_hat"]
        return self._crop(x_hat, model, u.height, u.width)

    def estimate(self, image: np.ndarray, quality: Any) -> dict[str, Any]:
        """The model's forward pass (no entropy coding): likelihood bpp and the quantized reconstruction,
        with the arithmetic of :meth:`encode` and :meth:`decode` (the image is the decoded one)."""
        import torch

        from ..models.exact_prior import exact_forward, exact_prior, fixed_arithmetic

        key = self.validate_quality(quality)
        model = self.model(key)
        h, w = image.shape[:2]
        x = self._to_tensor(image, self._multiple(model))
        with torch.no_grad(), fixed_arithmetic(self.torch_device()):
            out = exact_forward(model, x) if exact_prior(model) else model(x)
        bits = sum(float(-torch.log2(lik).sum()) for lik in out["likelihoods"].values())
        return {"bpp": bits / (h * w), "bits": bits, "image": self._crop(out["x_hat"].clamp(0, 1), model, h, w),
                "x_hat": out["x_hat"]}  # fmt: skip

    def complexity(self, quality: Any, width: int, height: int) -> Complexity:
        """Parameters of the rate point's model and MACs of its encoder (analysis ``g_a`` + ``h_a``) and decoder
        (synthesis ``h_s`` + ``g_s``) on a ``width`` x ``height`` image padded as :meth:`encode` pads it, counted
        by :func:`vcmbench.models.complexity.codec_macs`."""
        import torch

        from ..models.complexity import COUNTER, codec_macs
        from ..models.lic import count_parameters, pad_tensor

        key = self.validate_quality(quality)
        model = self.model(key)
        x = torch.zeros(1, 3, height, width, device=self.torch_device())
        x = pad_tensor(x, self._multiple(model), self.pad_mode)
        try:
            macs = codec_macs(model, x)
        except ValueError as exc:
            raise CodecError(f"codec {self.name}, rate point {key}: {exc}") from None
        counted = f"encoder {'+'.join(macs.encoder_parts)}, decoder {'+'.join(macs.decoder_parts)}"
        return Complexity(count_parameters(model), macs.encoder, macs.decoder, width, height, counted,
                          macs.not_counted, COUNTER)  # fmt: skip


def _trained_alpha(meta: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """(α, mask source) of the masks a checkpoint was trained on; (None, None) without a mask record."""
    record = meta.get("masks_params")
    params = (record.get("params") or {}) if isinstance(record, Mapping) else {}
    source = params.get("source")
    alpha = params.get("alpha") if source == "sam" else None
    return (None if alpha is None else float(alpha)), source


def _coder_settings(name: str, scale_levels: Any, pad_multiple: Any, pad_mode: Any) -> tuple[int, int | None, str]:
    """The card's ``scale_levels`` (None: vcmbench's default), ``pad_multiple`` and ``pad_mode``, checked."""
    from ..models.lic import PAD_MODES, SCALE_LEVELS

    levels = SCALE_LEVELS if scale_levels is None else scale_levels
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
        raise CodecError(f"codec {name}: scale_levels must be an integer >= 2 (CompressAI / TCM: 64), got {scale_levels!r}")
    if pad_multiple is not None and (not isinstance(pad_multiple, int) or isinstance(pad_multiple, bool)
                                     or pad_multiple < 1):  # fmt: skip
        raise CodecError(f"codec {name}: pad_multiple must be a positive integer (or null: the model's), got "
                         f"{pad_multiple!r}")  # fmt: skip
    if pad_mode not in PAD_MODES:
        raise CodecError(f"codec {name}: pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")
    return levels, pad_multiple, pad_mode


def to_image(x_hat: Any, height: int, width: int) -> np.ndarray:
    """(1, 3, H', W') tensor in [0, 1] -> cropped HxWx3 uint8 (the top-left ``height`` x ``width``)."""
    import torch

    x = x_hat[0, :, :height, :width].clamp(0, 1).mul(255).round().to("cpu")
    return x.permute(1, 2, 0).to(torch.uint8).numpy().copy()


@register("codec", "lic")
class LicCodec(LearnedCodec):
    """Plain learned image codec (rate + λ·255²·MSE)."""

    expected_loss = "lic"


@register("codec", "objicm")
class ObjectICMCodec(LearnedCodec):
    """Object-ICM: trained on MSE inside ground-truth object masks."""

    expected_loss = "objicm"


@register("codec", "saicm")
class SAICMCodec(LearnedCodec):
    """SA-ICM (Shindo et al., ICIP 2024): trained on MSE on Segment Anything mask edges; a rate point may say
    its SAM threshold ``alpha``."""

    expected_loss = "saicm"
    objective_keys = ("alpha",)


@register("codec", "tlicm")
class TLICMCodec(LearnedCodec):
    """Task-loss ICM: trained on MSE plus YOLOv5's detection loss of the decoded image (``tl_objective: task``)
    or an MSE of its early features (``features``)."""

    expected_loss = "tlicm"
    objective_keys = ("tl_objective",)
