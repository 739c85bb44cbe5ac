"""NeRV and SA-NeRV as vcmbench video codecs: ``nerv`` and ``sanerv``.

NeRV (Chen et al., "NeRV: Neural Representations for Videos", NeurIPS 2021) codes a clip
as the weights of a network trained on that clip: ``encode`` trains it, prunes, fine-tunes,
quantizes and entropy-codes the weights (:mod:`vcmbench.codecs.nerv_pipeline`, which also documents the
bitstream); ``decode`` rebuilds the network from the bitstream's header, runs every frame and
returns a :class:`~vcmbench.media.clip.Clip`. SA-NeRV adds the masked loss term of SA-ICM's
edge objective (Shindo et al., ICIP 2024) on the edges of a segmentation of each frame, made
at encode time from the original frames (:mod:`vcmbench.masks`: the weights-free
``felzenszwalb`` edges by default, Segment Anything when ``sam_checkpoint`` is set).

Quality is a rate-point index (1-based) into the card's ``rate_points`` list; a rate point
says the model size (``size`` S / M / L of the paper, scaled by ``width``, or explicit
``fc_dim`` / ``lower_width`` / ``stem_dim``), the pruned fraction (``prune``) and the
quantization bits (``bits``)::

    qualities: [1, 2, 3]
    settings:
      epochs: 300
      finetune_epochs: 100
      rate_points:
        - {size: S, width: 0.125, prune: 0.4, bits: 8}
        - {size: S, width: 0.25, prune: 0.4, bits: 8}
        - {size: M, prune: 0.4, bits: 8}

``segment: N`` (frames; unset: the whole clip) trains one network per N frames of a clip, so that
training holds one segment (a long sequence does not fit one model or the memory); the bitstream is
the segments' streams in one container (:func:`~vcmbench.codecs.nerv_pipeline.pack_segments`, rate =
all of its bytes), decoding renders a segment at a time as the frames are read. Unset, nothing
changes (bitstreams and identity are those of the whole-clip codec).

Training settings (``epochs``, ``finetune_epochs``, ``lr``, ``warmup``, ``finetune_warmup``,
``batch_size``, ``l1_weight``, ``seed``, ``threads``), the activation, the layout limits and,
for SA-NeRV, every mask setting enter :meth:`NeRVCodec.identity`, as does the kind of device
(``device: auto`` resolves to cuda when present): the weights, and so the bytes, depend on
where they were trained. The bitstream itself is device-independent; decoding on the kind of
device (and thread count) that encoded it reproduces the encoder's reconstruction bit for bit,
elsewhere up to floating-point rounding of the network's output.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import CodecError, QualityError
from ..media.clip import Clip, FrameSource, check_segment
from ..media.devices import resolve_device
from ..media.hashing import stable_hash
from ..registry import register
from .base import Bitstream, Codec

#: bump when training, the pipeline or the bitstream change in a way the settings do not show
IMPL_VERSION = "1"
RATE_POINT_KEYS = {"size", "width", "fc_dim", "lower_width", "stem_dim", "prune", "bits", "description"}


@dataclass(frozen=True)
class RatePoint:
    """One rung of the ladder: a model size, a pruned fraction and a number of quantization bits."""

    key: int
    size: str = "S"
    width: float = 1.0
    fc_dim: int | None = None
    lower_width: int | None = None
    stem_dim: int | None = None
    prune: float = 0.0
    bits: int = 8

    def arch(self) -> dict[str, Any]:
        out: dict[str, Any] = {"size": self.size, "width": self.width}
        for name in ("fc_dim", "lower_width", "stem_dim"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("key")
        return d


def _int(value: Any, what: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise CodecError(f"{what} must be an integer >= {lo}, got {value!r}")
    return value


def parse_rate_points(raw: Any, where: str) -> dict[int, RatePoint]:
    """The card's ``rate_points``: a list (quality i = entry i, 1-based) or a mapping int -> spec."""
    if isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        items = list(enumerate(raw, start=1))
    elif isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        items = []
    if not items:
        raise CodecError(f"{where}: settings.rate_points must be a non-empty list of "
                         "{size, width, prune, bits} rate points")  # fmt: skip
    from ..models.nerv import SIZES

    points: dict[int, RatePoint] = {}
    for key, spec in items:
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise CodecError(f"{where}: rate point key {key!r} is not an integer") from None
        if (k != key and str(k) != str(key)) or k < 1:
            raise CodecError(f"{where}: rate point key {key!r} must be an integer >= 1")
        if k in points:
            raise CodecError(f"{where}: rate point {k} is listed twice")
        if not isinstance(spec, Mapping):
            raise CodecError(f"{where}: rate point {k} must be a mapping like {{size: S, width: 0.25, prune: 0.4, "
                             f"bits: 8}}, got {spec!r}")  # fmt: skip
        unknown = set(spec) - RATE_POINT_KEYS
        if unknown:
            raise CodecError(f"{where}: rate point {k}: unknown key(s) {sorted(unknown)}; allowed: "
                             f"{sorted(RATE_POINT_KEYS)}")  # fmt: skip
        what = f"{where}: rate point {k}"
        size = str(spec.get("size", "S")).upper()
        if size not in SIZES:
            raise CodecError(f"{what}: size {spec.get('size')!r} is not one of {', '.join(SIZES)}")
        width = spec.get("width", 1.0)
        if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
            raise CodecError(f"{what}: width must be a number > 0, got {width!r}")
        dims = {n: (None if spec.get(n) is None else _int(spec.get(n), f"{what}: {n}", 1))
                for n in ("fc_dim", "lower_width", "stem_dim")}  # fmt: skip
        prune = spec.get("prune", 0.0)
        if isinstance(prune, bool) or not isinstance(prune, int | float) or not 0 <= prune < 1:
            raise CodecError(f"{what}: prune must be a fraction in [0, 1), got {prune!r}")
        bits = _int(spec.get("bits", 8), f"{what}: bits", 1)
        if bits > 12:
            raise CodecError(f"{what}: bits must be at most 12, got {bits}")
        points[k] = RatePoint(k, size, float(width), prune=float(prune), bits=bits, **dims)
    return points


@register("codec", "nerv")
class NeRVCodec(Codec):
    """NeRV (Chen et al., NeurIPS 2021): a clip coded as its pruned, quantized, entropy-coded network."""

    quality_name = "rate point"
    integer_quality = True
    location_settings = ("device", "progress")
    #: clips only (an image is refused with a CodecError)
    media = ("video",)
    variant: ClassVar[str] = "nerv"

    def __init__(
        self,
        rate_points: Any,
        epochs: int = 300,
        finetune_epochs: int = 100,
        lr: float = 5e-4,
        warmup: float = 0.2,
        finetune_warmup: float = 0.0,
        batch_size: int = 1,
        l1_weight: float = 0.7,
        seed: int = 0,
        act: str = "gelu",
        max_stages: int = 5,
        max_fc_cells: int = 256,
        device: str = "auto",
        threads: int | None = None,
        progress: bool = False,
        segment: int | None = None,
    ) -> None:
        from ..models.nerv import ACTIVATIONS, NeRVError
        from .nerv_pipeline import TrainSettings

        self.points = parse_rate_points(rate_points, f"codec {self.name}")
        self.keys = sorted(self.points)
        self.quality_range = (min(self.keys), max(self.keys))  # type: ignore[misc]
        if act not in ACTIVATIONS:
            raise CodecError(f"codec {self.name}: unknown activation {act!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.act = act
        self.max_stages = _int(max_stages, f"codec {self.name}: max_stages", 1)
        self.max_fc_cells = _int(max_fc_cells, f"codec {self.name}: max_fc_cells", 1)
        try:
            self.train = TrainSettings(epochs=epochs, finetune_epochs=finetune_epochs, lr=float(lr),
                                       warmup=float(warmup), finetune_warmup=float(finetune_warmup),
                                       batch_size=batch_size, l1_weight=float(l1_weight), seed=seed)  # fmt: skip
        except (NeRVError, TypeError, ValueError) as exc:
            raise CodecError(f"codec {self.name}: {exc}") from None
        self.threads = None if threads in (None, 0) else _int(threads, f"codec {self.name}: threads", 1)
        self.device = device
        self.progress = bool(progress)
        try:
            self.segment = check_segment(segment, f"codec {self.name}: segment")
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        self._torch_device: Any = None

    # ---- identity ------------------------------------------------------------------------------
    def torch_device(self) -> Any:
        if self._torch_device is None:
            self._torch_device = resolve_device(self.device, self.name, CodecError)
        return self._torch_device

    def version(self) -> str:
        """Implementation, bitstream format, torch and compressai (the rANS coder) versions, device type."""
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as pkg_version

        import torch

        from .nerv_pipeline import FORMAT_VERSION

        try:
            cai = pkg_version("compressai")
        except PackageNotFoundError:
            cai = "missing"
        return (f"nerv-{IMPL_VERSION}/format-{FORMAT_VERSION}/torch-{torch.__version__}"
                f"/compressai-{cai}/{self.torch_device().type}")  # fmt: skip

    def identity_fields(self) -> dict[str, Any]:
        """Everything that determines the bytes, besides the quality and the clip (``segment`` only where set,
        so that the whole-clip codec keeps its identity)."""
        out = {
            "class": type(self).__qualname__,
            "variant": self.variant,
            "points": {str(k): p.identity() for k, p in self.points.items()},
            "train": asdict(self.train),
            "act": self.act,
            "layout": {"max_stages": self.max_stages, "max_fc_cells": self.max_fc_cells},
            "threads": self.threads,
            "version": self.version(),
        }
        if self.segment is not None:
            out["segment"] = self.segment
        return out

    def identity(self) -> str:
        return stable_hash(self.identity_fields())

    def validate_quality(self, quality: Any) -> int:
        try:
            q = float(quality)
        except (TypeError, ValueError):
            raise QualityError(f"{self.name}: rate point {quality!r} is not a number") from None
        if q != int(q) or int(q) not in self.points:
            raise QualityError(
                f"{self.name}: rate point {quality!r} does not exist; this card defines "
                f"{', '.join(str(k) for k in self.keys)} (settings.rate_points)"
            )
        return int(q)

    # ---- coding --------------------------------------------------------------------------------
    def _check_clip(self, clip: Any) -> Clip:
        if isinstance(clip, Clip):
            return clip
        shape = getattr(clip, "shape", None)
        raise CodecError(
            f"{self.name}: NeRV codes clips (a vcmbench.media.clip.Clip: T x H x W x 3 frames + fps), got "
            f"{'an image of shape ' + str(tuple(shape)) if shape is not None else type(clip).__name__}; "
            "use an image codec for images, or a clip dataset for this codec"
        )

    def masks(self, clip: Clip) -> np.ndarray | None:
        """Per-frame training masks (T x H x W uint8); None for plain NeRV."""
        return None

    def mask_weight(self) -> float:
        return 0.0

    def encode_result(self, clip: Clip, quality: Any) -> Any:
        """Encode and return the full :class:`~vcmbench.codecs.nerv_pipeline.NeRVEncoding` (bytes, reconstruction, logs)."""
        import logging

        from ..models.nerv import NeRVError
        from .nerv_pipeline import encode_clip, torch_threads

        clip = self._check_clip(clip)
        key = self.validate_quality(quality)
        point = self.points[key]
        logger = logging.getLogger("vcmbench.nerv")
        arch = {**point.arch(), "act": self.act, "max_stages": self.max_stages, "max_fc_cells": self.max_fc_cells}
        try:
            with torch_threads(self.threads):
                masks = self.masks(clip)
                return encode_clip(
                    clip.frames, clip.fps, arch, prune=point.prune, bits=point.bits, train=self.train,
                    masks=masks, mask_weight=self.mask_weight(), device=self.torch_device(),
                    progress=self.progress, log=logger.info,
                )  # fmt: skip
        except NeRVError as exc:
            raise CodecError(f"{self.name}, rate point {key}: {exc}") from None

    def encode(self, image: Any, quality: Any) -> Bitstream:  # type: ignore[override]
        clip = self._check_clip(image)
        key = self.validate_quality(quality)
        if self.segment is not None and clip.num_frames > self.segment:
            return self.encode_segments(clip, key)
        res = self.encode_result(clip, key)
        s = res.stats
        meta = {"rate_point": key, "parameters": s["parameters"], "pruned": s["pruned"],
                "psnr": round(s["psnr"], 4), "train_s": s["train_s"] + s["finetune_s"]}  # fmt: skip
        return Bitstream(res.data, width=clip.width, height=clip.height, frames=clip.num_frames, meta=meta)

    def encode_segments(self, clip: Clip, key: int) -> Bitstream:
        """One network per ``segment`` frames, trained on that segment alone (read from the clip as it comes);
        the bitstream is their container. ``psnr`` is the mean of every frame's, ``parameters`` and ``pruned``
        count over all segments' networks, ``segments`` lists the frames of each."""
        from .nerv_pipeline import pack_segments

        streams, frames, psnrs, params, pruned, train_s = [], [], [], 0, 0, 0.0
        for _, part in clip.segments(self.segment):
            res = self.encode_result(Clip(np.ascontiguousarray(part), clip.fps), key)
            s = res.stats
            streams.append(res.data)
            frames.append(len(part))
            psnrs.append(s["psnr"])
            params, pruned, train_s = params + s["parameters"], pruned + s["pruned"], train_s + s["train_s"] + s["finetune_s"]
        psnr = float(np.average(psnrs, weights=frames))
        meta = {"rate_point": key, "parameters": params, "pruned": pruned, "psnr": round(psnr, 4),
                "train_s": train_s, "segments": frames}  # fmt: skip
        return Bitstream(pack_segments(streams), width=clip.width, height=clip.height, frames=clip.num_frames,
                         meta=meta)  # fmt: skip

    def decode(self, bitstream: Bitstream) -> Clip:  # type: ignore[override]
        from .nerv_pipeline import decode_clip, unpack_segments

        streams = unpack_segments(bitstream.data)
        if streams is not None:
            frames = NeRVSegmentFrames(streams, self.torch_device(), self.name)
            self._check_decoded(frames.num_frames, frames.height, frames.width, bitstream)
            return Clip(frames, frames.fps, segment=max(frames.lengths))
        # torch's thread count is left alone: it is process-wide, and decodes run while a task model predicts
        # in the same process (its predictions depend on the thread count); the decoded frames do not
        out = decode_clip(bitstream.data, self.torch_device())
        h = out.header
        self._check_decoded(h.frames, h.layout.height, h.layout.width, bitstream)
        return Clip(out.frames, out.fps)

    def _check_decoded(self, frames: int, height: int, width: int, bitstream: Bitstream) -> None:
        if (frames, height, width) != (bitstream.frames, bitstream.height, bitstream.width):
            raise CodecError(f"{self.name}: bitstream codes {frames} frames of {width}x{height}, "
                             f"expected {bitstream.frames} of {bitstream.width}x{bitstream.height}")  # fmt: skip


class NeRVSegmentFrames(FrameSource):
    """The frames of a clip coded in segments, rendered a segment at a time as they are read (the segment
    rendered last is kept)."""

    def __init__(self, streams: Sequence[bytes], device: Any, name: str) -> None:
        from .nerv_pipeline import parse_header

        headers = [parse_header(s) for s in streams]
        sizes = {(h.layout.height, h.layout.width) for h in headers}
        if len(sizes) != 1 or len({h.fps for h in headers}) != 1:
            raise CodecError(f"{name}: the segments of the bitstream differ in picture size or frame rate")
        self.streams, self.device = list(streams), device
        self.lengths = [h.frames for h in headers]
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)]).astype(int).tolist()
        self.num_frames = int(self.starts[-1])
        (self.height, self.width), self.fps = sizes.pop(), float(headers[0].fps)
        self._last: tuple[int, np.ndarray] | None = None

    def segment_frames(self, k: int) -> np.ndarray:
        from .nerv_pipeline import decode_clip

        if self._last is None or self._last[0] != k:
            self._last = None
            self._last = (k, decode_clip(self.streams[k], self.device).frames)
        return self._last[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.num_frames)
        parts = []
        for k, (a, b) in enumerate(zip(self.starts[:-1], self.starts[1:], strict=True)):
            if a < stop and start < b:
                parts.append(self.segment_frames(k)[max(start, a) - a : min(stop, b) - a])
        if not parts:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


@register("codec", "sanerv")
class SANeRVCodec(NeRVCodec):
    """SA-NeRV: NeRV trained with an extra loss term on the edge masks of every frame."""

    location_settings = ("device", "progress", "sam_checkpoint")
    variant: ClassVar[str] = "sanerv"

    def __init__(
        self,
        rate_points: Any,
        mask_source: str = "auto",
        mask_weight: float = 1.0,
        sam_checkpoint: str | None = None,
        **settings: Any,
    ) -> None:
        from ..masks import TINY_RANDOM, EdgeParams, MaskError, MaskParams

        edge_names = {f.name for f in fields(EdgeParams)}
        mask_names = {f.name for f in fields(MaskParams)} - {"source", "edges", "include_crowd"}
        base_names = set(inspect.signature(NeRVCodec.__init__).parameters) - {"self", "rate_points"}
        edges = {k: settings.pop(k) for k in list(settings) if k in edge_names}
        mparams = {k: settings.pop(k) for k in list(settings) if k in mask_names}
        unknown = set(settings) - base_names
        if unknown:
            raise TypeError(f"unexpected setting(s) {sorted(unknown)}; mask settings are "
                            f"{sorted(edge_names | mask_names)}")  # fmt: skip
        super().__init__(rate_points, **settings)
        source = str(mask_source)
        if source == "auto":
            source = "sam" if sam_checkpoint else "felzenszwalb"
        if source not in ("felzenszwalb", "slic", "sam"):
            raise CodecError(f"codec {self.name}: mask_source {mask_source!r} must be auto, felzenszwalb, slic or sam")
        try:
            self.mask_params = MaskParams(source=source, edges=EdgeParams(**edges), **mparams)
            self.mask_params.check()
        except (TypeError, ValueError, MaskError) as exc:
            raise CodecError(f"codec {self.name}: bad mask settings: {exc}") from None

        if source == "sam" and not sam_checkpoint and self.mask_params.sam_model != TINY_RANDOM:
            raise CodecError(f"codec {self.name}: mask_source sam needs sam_checkpoint: (a local SAM "
                             f"{self.mask_params.sam_model} file; nothing is downloaded at run time), or use "
                             "mask_source: felzenszwalb")  # fmt: skip
        if isinstance(mask_weight, bool) or not isinstance(mask_weight, int | float) or mask_weight < 0:
            raise CodecError(f"codec {self.name}: mask_weight must be a number >= 0, got {mask_weight!r}")
        self._mask_weight = float(mask_weight)
        self.sam_checkpoint = sam_checkpoint
        self._source: Any = None
        self._sam_sha: str | None = None
        self._mask_lock = threading.RLock()
        self._mask_cache: dict[str, np.ndarray] = {}

    def mask_weight(self) -> float:
        return self._mask_weight

    def sam_sha256(self) -> str | None:
        """sha256 of the configured SAM checkpoint (it enters the identity instead of its path)."""
        if self.mask_params.source != "sam" or not self.sam_checkpoint:
            return None
        if self._sam_sha is None:
            from ..media.hashing import file_sha256

            path = Path(self.sam_checkpoint).expanduser()
            if not path.is_file():
                raise CodecError(f"{self.name}: SAM checkpoint {path} not found (settings.sam_checkpoint). "
                                 f"Fix: {sam_download_hint(self.mask_params.sam_model, path)}")
            self._sam_sha = file_sha256(path)
        return self._sam_sha

    def identity_fields(self) -> dict[str, Any]:
        return {**super().identity_fields(), "masks": self.mask_params.relevant(), "mask_weight": self._mask_weight,
                "sam_sha256": self.sam_sha256()}  # fmt: skip

    def mask_source(self) -> Any:
        """The mask source callable ``(image, item) -> (mask, info)``, built once."""
        if self._source is None:
            with self._mask_lock:
                if self._source is None:
                    from ..masks import build_source

                    try:
                        self._source = build_source(self.mask_params, sam_checkpoint=self.sam_checkpoint,
                                                    device=str(self.torch_device()))  # fmt: skip
                    except Exception as exc:
                        if isinstance(exc, CodecError):
                            raise
                        raise CodecError(f"{self.name}: cannot build the {self.mask_params.source} mask source: "
                                         f"{exc}") from None  # fmt: skip
        return self._source

    def masks(self, clip: Clip) -> np.ndarray:
        """Edge masks of every frame (T x H x W uint8, 255 = edge); the last few clips' masks are kept in memory."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(clip.frames).data).hexdigest() + str(clip.frames.shape)
        with self._mask_lock:
            hit = self._mask_cache.get(digest)
        if hit is not None:
            return hit
        out = self._make_masks(clip)
        with self._mask_lock:
            self._mask_cache[digest] = out
            while len(self._mask_cache) > 4:
                self._mask_cache.pop(next(iter(self._mask_cache)))
        return out

    def _make_masks(self, clip: Clip) -> np.ndarray:
        from ..masks import MaskItem

        source = self.mask_source()
        out = np.empty(clip.frames.shape[:3], dtype=np.uint8)
        for i, frame in enumerate(clip.frames):
            mask, _ = source(np.ascontiguousarray(frame), MaskItem(id=f"frame{i:05d}", path=Path(f"frame{i:05d}")))
            if mask.shape != frame.shape[:2]:
                raise CodecError(f"{self.name}: mask of frame {i} is {mask.shape}, the frame {frame.shape[:2]}")
            out[i] = mask
        return out


def sam_download_hint(model: str, path: Path) -> str:
    """How to get a missing SAM checkpoint: the official file's URL and sha256, where to put it."""
    from ..masks import SAM_CHECKPOINTS

    if model not in SAM_CHECKPOINTS:
        return f"point settings.sam_checkpoint at a local SAM {model} file"
    url, sha = SAM_CHECKPOINTS[model]
    return (f"download {url} (sha256 {sha}) to {path}, or point settings.sam_checkpoint (or "
            f"$VCMBENCH_SAM_CHECKPOINT for the sanerv_paper card) at your copy")
