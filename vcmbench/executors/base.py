"""The executor contract: run encodes, and decode+predict batches, wherever the workers are.

The runner (the driver) plans the work and is the only writer to the store; an
executor only turns self-contained, picklable jobs into results:

- :meth:`Executor.encode` takes :class:`EncodeJob` (codec card, quality, dataset
  card, item) and yields :class:`EncodeResult` (the bytes written, timings);
- :meth:`Executor.infer` takes :class:`DecodeJob` (task card, codec card,
  bitstream, item) and yields one :class:`BatchResult` per batch: every image is
  decoded, the batch predicted, and per-image errors kept apart.

Workers rebuild adapters from cards once per process (:func:`vcmbench.adapters.cached`), so the
same jobs run in threads of the driver (local executor) or on a cluster (Ray).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..adapters import cached
from ..cards import Card
from ..codecs.base import Bitstream
from ..datasets.base import Item
from ..errors import CodecError, VcmbenchError
from ..media.clip import Clip, psnr

#: seconds without a finished encode after which :meth:`Executor.encode` calls its ``idle`` callback (short
#: against a slow encode, long against the gaps between fast ones, whose rows are committed in batches)
IDLE_S = 0.25


@dataclass(frozen=True)
class EncodeJob:
    key: str
    codec: Card
    quality: Any
    dataset: Card
    item: Item


@dataclass(frozen=True)
class EncodeResult:
    data: bytes
    width: int
    height: int
    frames: int
    meta: dict[str, Any]
    encode_s: float
    #: the bitstream's name in the driver's cache when the worker stored it there (``keep`` of
    #: :meth:`Executor.encode`); None: the driver stores ``data``
    blob: str | None = None


@dataclass(frozen=True)
class DecodeJob:
    """One image to feed a task: the original (``codec is None``) or a bitstream to decode first."""

    key: str
    dataset: Card
    item: Item
    codec: Card | None = None
    bitstream: Bitstream | None = None
    encode_key: str | None = None
    #: measure decode time and PSNR (first decode of this bitstream)
    want_stats: bool = False
    #: when set, the bitstream has none: this is why (its encode failed); the job fails without decoding
    missing: str | None = None
    #: the unit's quality: what the codec loads before the decode is timed (:meth:`Codec.prepare`)
    quality: Any = None


@dataclass
class Decoded:
    #: the pixels a task sees: an image, or a :class:`~vcmbench.media.clip.Clip` (predicted frame by frame)
    image: np.ndarray | Clip
    decode_s: float | None = None
    psnr: float | None = None


@dataclass
class BatchResult:
    """Predictions for a batch of jobs; ``errors[i]`` is set where job i failed (decode or predict)."""

    jobs: list[DecodeJob]
    preds: list[Any] = field(default_factory=list)
    errors: list[BaseException | None] = field(default_factory=list)
    decode: list[Decoded | None] = field(default_factory=list)
    infer_s: list[float | None] = field(default_factory=list)


class EncodeFailed(CodecError):
    """The item has no bitstream because its encode failed (reported in the encode stage already)."""


class Outcome:
    """The result of one job: either ``value`` or ``error`` is set."""

    __slots__ = ("job", "value", "error")

    def __init__(self, job: Any, value: Any = None, error: BaseException | None = None) -> None:
        self.job = job
        self.value = value
        self.error = error


def longest_first(jobs: Iterable[EncodeJob], spread: int = 1) -> list[EncodeJob]:
    """Encode jobs in the order to submit them: the largest source file first (a stable sort; equal sizes by path).

    On N slots a grid takes its total encode time / N, plus the time its last encodes run alone. Submitting
    the expensive encodes first leaves short ones for the end (longest-processing-time-first scheduling).
    The source file's size stands in for an encode's cost, since both grow with pixels and with detail.
    On 24 coco-mini images (VVenC medium, QP 32) its correlation with encode time was 0.63, against 0.29
    for the pixel count. Replaying those measured times on 2 slots, the grid ended 0.5 s after its ideal
    (total / 2) in this order and 2.1 s after it in the dataset's order. A file that cannot be read
    sorts last, and its encode reports the problem. Files of the same size are ordered by path, so the jobs
    of one file (its qualities) are near each other and share one read of it (:class:`SourceImages`).

    ``spread`` (the number of workers): the jobs of each ``spread`` files in a row are interleaved, one job of
    each file in turn, so that the workers start by reading different files at once (at most half as many
    files as :data:`SOURCES` keeps, so that a file's read is still there for its later jobs). With each
    file's jobs in a row, the second worker waited for the first one's read of the same file: at 640x480 (a
    PNG read four times a JPEG encode) the encode stage of 5,000 images took 109 s for 38 s of encodes on 2
    workers.
    """
    sizes: dict[Any, int] = {}

    def size(job: EncodeJob) -> int:
        path = job.item.path
        if path not in sizes:
            try:
                sizes[path] = path.stat().st_size
            except OSError:
                sizes[path] = -1
        return sizes[path]

    ordered = sorted(jobs, key=lambda job: (-size(job), str(job.item.path)))
    spread = min(spread, SOURCES.size // 2)
    if spread <= 1:
        return ordered
    files: list[list[EncodeJob]] = []
    for job in ordered:
        if files and files[-1][0].item.path == job.item.path:
            files[-1].append(job)
        else:
            files.append([job])
    out: list[EncodeJob] = []
    for i in range(0, len(files), spread):
        block = files[i : i + spread]
        for k in range(max(len(f) for f in block)):
            out += [f[k] for f in block if k < len(f)]
    return out


class _Source:
    """One source image being read (``ready`` unset) or read (``image``, or the ``error`` reading it raised)."""

    __slots__ = ("ready", "image", "error")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.image: Any = None
        self.error: BaseException | None = None


class SourceImages:
    """The source images last read, shared by the workers of a process.

    A quality ladder encodes each item once per quality, and :func:`longest_first` hands out an item's jobs
    one after another, so each image is read and decoded once for all its qualities, not once per quality
    (on 160x120 PNGs reading took longer than a JPEG encode: ``benchmarks/growth.py``). In the infer stage
    the reference's image and the source of each decode's PSNR come from here too; predictions go item by
    item there where nothing waits for a unit (``run.infer.item_by_item``). Workers asking for an
    image being read wait for that read. Only images (arrays) are kept, read-only, at most ``size`` of them
    and ``max_bytes`` in all; a read that fails is not kept (every job of the item reports its error)."""

    def __init__(self, size: int = 8, max_bytes: int = 256 << 20) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str, str], _Source] = OrderedDict()

    def __len__(self) -> int:
        """Images kept or being read."""
        with self._lock:
            return len(self._entries)

    def get(self, dataset: Card, item: Item) -> Any:
        ds = cached(dataset)
        if ds.media != "image":  # a clip is read by its encode alone, as it goes
            return ds.load_image(item)
        key = (dataset.build_key, item.id, str(item.path))
        with self._lock:
            entry = self._entries.get(key)
            owner = entry is None
            if entry is None:
                entry = self._entries[key] = _Source()
            self._entries.move_to_end(key)
        if owner:
            self._read(entry, key, ds, item)
        entry.ready.wait()
        if entry.error is not None:
            raise entry.error
        return entry.image

    def _read(self, entry: _Source, key: tuple[str, str, str], ds: Any, item: Item) -> None:
        try:
            entry.image = ds.load_image(item)  # an array: the dataset's media is "image"
            if isinstance(entry.image, np.ndarray):
                entry.image.flags.writeable = False  # shared by the item's encodes: no codec may change it
        except BaseException as exc:
            entry.error = exc
        finally:
            entry.ready.set()
            with self._lock:
                if entry.error is not None or not isinstance(entry.image, np.ndarray):
                    self._entries.pop(key, None)
                self._trim()

    def _trim(self) -> None:
        """Forget the oldest finished reads beyond ``size`` entries or ``max_bytes``."""
        def total() -> int:
            return sum(e.image.nbytes for e in self._entries.values() if e.ready.is_set() and e.image is not None)

        while len(self._entries) > self.size or (len(self._entries) > 1 and total() > self.max_bytes):
            oldest = next((k for k, e in self._entries.items() if e.ready.is_set()), None)
            if oldest is None:
                return
            del self._entries[oldest]


#: the workers' source images in this process (encodes; the reference and decode PSNRs of the infer stage)
SOURCES = SourceImages()


def run_encode(job: EncodeJob) -> EncodeResult:
    """Worker side of an encode: read the item (once for all its qualities: :class:`SourceImages`), have the
    codec load what it needs (:meth:`~vcmbench.codecs.base.Codec.prepare`), encode it timed, return the bytes
    written."""
    codec = cached(job.codec)
    image = SOURCES.get(job.dataset, job.item)
    codec.prepare(job.quality)  # a model's load is not part of the timed encode
    t0 = time.perf_counter()
    bs = codec.encode(image, job.quality)
    seconds = time.perf_counter() - t0
    if not bs.data:
        raise CodecError(f"{job.codec.name}: the encoder returned an empty bitstream")
    return EncodeResult(bs.data, bs.width, bs.height, bs.frames, dict(bs.meta), seconds)


def encode_and_keep(job: EncodeJob, keep: Callable[[bytes], str]) -> EncodeResult:
    """:func:`run_encode`, then the bitstream handed to ``keep`` (the driver's cache) in the same worker."""
    result = run_encode(job)
    return dataclasses.replace(result, blob=keep(result.data))


def run_decode(job: DecodeJob) -> Decoded:
    """Worker side of a decode: the original image, or the decoded bitstream (+ stats if asked; the codec
    prepares the job's quality before the decode is timed)."""
    if job.codec is None:
        return Decoded(writable(SOURCES.get(job.dataset, job.item)))  # the model may write to its input
    if job.missing is not None or job.bitstream is None:
        raise EncodeFailed(f"no bitstream to decode ({job.missing or 'encode failed: no bitstream'})")
    bs = job.bitstream
    codec = cached(job.codec)
    if job.quality is not None:
        codec.prepare(job.quality)  # a model's load is not part of the timed decode
    t = time.perf_counter()
    image = codec.decode(bs)
    seconds = time.perf_counter() - t
    if isinstance(image, Clip):
        if (image.num_frames, image.height, image.width) != (bs.frames, bs.height, bs.width):
            raise CodecError(f"{job.codec.name}: decoded clip is {image.num_frames} frames of {image.width}x"
                             f"{image.height}, expected {bs.frames} of {bs.width}x{bs.height}")  # fmt: skip
        if image.segment is None:  # gone through (PSNR, prediction) a segment of the dataset's at a time
            image.segment = getattr(cached(job.dataset), "segment", None)
    elif image.shape[:2] != (bs.height, bs.width):
        raise CodecError(
            f"{job.codec.name}: decoded image is {image.shape[1]}x{image.shape[0]}, expected {bs.width}x{bs.height}"
        )
    if not job.want_stats:
        return Decoded(image)
    return Decoded(image, seconds, psnr(SOURCES.get(job.dataset, job.item), image))


def writable(image: Any) -> Any:
    """``image`` itself, or a copy of it where it is a read-only array (one that :data:`SOURCES` shares)."""
    return image.copy() if isinstance(image, np.ndarray) and not image.flags.writeable else image


_Predicted = tuple[list[Any], list[BaseException | None], list[float | None]]


def predict_batch(task: Any, images: Sequence[np.ndarray | Clip]) -> _Predicted:
    """Predict a batch; if it fails, predict image by image so one bad image fails alone.

    A :class:`Clip` is predicted frame by frame, ``task.batch_size`` frames per call; its
    prediction is the list of its frames' predictions, its time the sum of theirs, and a
    frame that fails fails the clip (naming the frame).
    """
    if not any(isinstance(x, Clip) for x in images):
        return _predict_images(task, images)  # type: ignore[arg-type]
    out: _Predicted = ([None] * len(images), [None] * len(images), [None] * len(images))
    plain = [i for i, x in enumerate(images) if not isinstance(x, Clip)]
    if plain:
        for i, p, e, t in zip(plain, *_predict_images(task, [images[i] for i in plain]), strict=True):  # type: ignore[misc]
            out[0][i], out[1][i], out[2][i] = p, e, t
    step = max(1, int(getattr(task, "batch_size", 1) or 1))
    for i, clip in enumerate(images):
        if not isinstance(clip, Clip):
            continue
        preds: list[Any] = []
        seconds = 0.0
        for start in range(0, clip.num_frames, step):
            p, e, t = _predict_images(task, list(clip.read(start, start + step)))  # one segment held at a time
            bad = next((k for k, err in enumerate(e) if err is not None), None)
            if bad is not None:
                err = e[bad]
                assert err is not None
                out[1][i] = VcmbenchError(f"frame {start + bad} of the clip: {error_text(err)}")
                break
            preds += p
            seconds += sum(x or 0.0 for x in t)
        else:
            out[0][i], out[2][i] = preds, seconds
    return out


def predict_into(task: Any, batch: BatchResult, images: list[Any]) -> BatchResult:
    """Predict the decoded ``images`` of a batch (those whose decode succeeded, in order) into ``batch``:
    its predictions, per-image times and errors; the pixels are freed once predicted."""
    preds, errors, times = predict_batch(task, images) if images else ([], [], [])
    it = iter(zip(preds, errors, times, strict=True))
    batch.preds, batch.infer_s = [], []
    for i, d in enumerate(batch.decode):
        if d is None:
            batch.preds.append(None)
            batch.infer_s.append(None)
            continue
        p, e, t = next(it)
        batch.preds.append(p)
        batch.infer_s.append(t)
        batch.errors[i] = e
        d.image = None  # type: ignore[assignment]
    return batch


def _predict_images(task: Any, images: Sequence[np.ndarray]) -> _Predicted:
    try:
        t = time.perf_counter()
        preds = task.predict(list(images))
        per = (time.perf_counter() - t) / max(1, len(images))
        if len(preds) != len(images):
            raise VcmbenchError(f"task {task.name} returned {len(preds)} predictions for {len(images)} images")
        return list(preds), [None] * len(images), [per] * len(images)
    except Exception as exc:
        if len(images) == 1:
            return [None], [exc], [None]
        preds, errors, times = [], [], []
        for img in images:
            p, e, s = _predict_images(task, [img])
            preds += p
            errors += e
            times += s
        return preds, errors, times


def error_text(exc: BaseException) -> str:
    """The message a user sees: ours as they are, others with their type and the last frames."""
    if isinstance(exc, VcmbenchError | OSError | ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-3:])


class Executor(ABC):
    name: str = "executor"
    #: parallel slots for encodes and decodes
    workers: int = 1

    @abstractmethod
    def encode(self, jobs: Iterable[EncodeJob], idle: Callable[[], None] | None = None,
               keep: Callable[[bytes], str] | None = None) -> Iterator[Outcome]:  # fmt: skip
        """Run every encode job, yielding outcomes (value: :class:`EncodeResult`) as they finish; ``idle`` (when
        given) is called, in the caller's thread, each time about :data:`IDLE_S` seconds pass without one (the
        runner commits the rows of finished encodes then, instead of holding them while slow encodes run).

        ``keep`` (when given) stores a bitstream in the driver's cache and returns its name; an executor whose
        workers run in the driver's process calls it there, in the worker (:func:`encode_and_keep`), so the
        driver's thread does not write the files; one whose workers are elsewhere leaves it to the caller
        (the result's ``blob`` stays None). ``keep`` must be safe to call from several threads at once."""

    @abstractmethod
    def infer(self, task: Card, jobs: Iterable[DecodeJob], batch_size: int) -> Iterator[BatchResult]:
        """Decode and predict the jobs in batches of ``batch_size``, yielding each batch's results."""

    def status(self) -> dict[str, Any]:
        """What the workers are doing now, shown next to the progress bar (e.g. ``running``, ``nodes``)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
