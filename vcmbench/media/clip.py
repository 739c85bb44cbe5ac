"""Clips as first-class items: frames, frame rate, and the raw YUV files video datasets ship.

A :class:`Clip` is what a video dataset's ``load_image`` returns and what a video codec's
``encode`` takes and ``decode`` gives back: ``frames`` (T x H x W x 3 uint8 RGB) and ``fps``.
Image codecs and tasks never see one: the executors give a task the frames of a clip one by
one (in batches) and keep one prediction per frame (:func:`predict_items`), and the runner
scores a clip dataset frame by frame (``VideoDataset.frame_predictions``).

Rate of a clip is ``8 * bytes / (frames * width * height)`` (bits per pixel, every frame
counted) and ``8 * bytes / (frames / fps) / 1000`` (kbps at the clip's frame rate).

Long sequences in bounded memory: a clip's frames may be read on demand from a YUV file
(:class:`YUVFrames`: the dataset's sequence, or a decoder's output) and gone through a ``segment`` of
frames at a time (:meth:`Clip.read`, :meth:`Clip.segments`), so that encoding, decode PSNR and
prediction hold one segment of RGB frames, not the sequence (``docs/video.md``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .yuv import YUVFormat, YUVSource, bytes_to_planes, frame_bytes, rgb_to_yuv_bytes, yuv420_to_rgb


class FrameSource(ABC):
    """Frames a :class:`Clip` reads on demand instead of holding them: ``num_frames`` frames of
    ``width`` x ``height``, any range of which :meth:`read` returns as RGB."""

    num_frames: int
    height: int
    width: int

    @abstractmethod
    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` .. ``stop - 1`` as (stop - start) x H x W x 3 uint8 RGB."""

    def portable(self) -> bool:
        """Whether the source can travel to another process as it is (a clip whose source cannot, e.g. one
        reading a temporary file, travels with its frames read)."""
        return True


class YUVFrames(FrameSource):
    """Frames ``start`` .. ``start + frames - 1`` of a planar 4:2:0 YUV file, converted to RGB with ``fmt`` as
    they are read; ``owner`` (e.g. the temporary folder of a decoder's output) is kept alive with them."""

    def __init__(self, path: Path, width: int, height: int, fmt: YUVFormat, start: int, frames: int,
                 owner: Any = None) -> None:  # fmt: skip
        self.path, self.width, self.height, self.fmt = Path(path), int(width), int(height), fmt
        self.start, self.num_frames, self.owner = int(start), int(frames), owner
        n = frame_bytes(self.width, self.height, fmt)
        have = self.path.stat().st_size // n
        if self.start < 0 or self.num_frames < 1 or self.start + self.num_frames > have:
            raise ValueError(f"{self.path}: frames {self.start}..{self.start + self.num_frames - 1} asked, the file "
                             f"has {have} whole {self.width}x{self.height} {fmt.bit_depth}-bit 4:2:0 frames")  # fmt: skip

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self.num_frames)
        n = frame_bytes(self.width, self.height, self.fmt)
        out = np.empty((max(0, stop - start), self.height, self.width, 3), dtype=np.uint8)
        with open(self.path, "rb") as f:
            f.seek((self.start + start) * n)
            for i in range(len(out)):
                buf = f.read(n)
                if len(buf) != n:
                    raise ValueError(f"{self.path}: frame {self.start + start + i} is cut short")
                out[i] = yuv420_to_rgb(*bytes_to_planes(buf, self.width, self.height, self.fmt), self.width,
                                       self.height, self.fmt)  # fmt: skip
        return out

    def portable(self) -> bool:
        return self.owner is None


class Clip:
    """A video clip: ``frames`` is T x H x W x 3 uint8 RGB, ``fps`` its frame rate.

    ``source`` names the YUV file range the frames were converted from, where the dataset ships YUV
    (SFU-HW): YUV codecs encode those original samples instead of the RGB frames (YUV pass-through).

    The frames may be held (an array) or read on demand (a :class:`FrameSource`). ``segment`` is how many
    frames the consumers that go through a clip piece by piece (:meth:`read`, :meth:`segments`: the YUV
    encoders' input file, decode PSNR, prediction) hold at a time; None: the whole clip at once. Asking
    for :attr:`frames` reads every frame and keeps them.
    """

    def __init__(self, frames: np.ndarray | FrameSource, fps: float, source: YUVSource | None = None,
                 segment: int | None = None) -> None:  # fmt: skip
        self._lazy: FrameSource | None = None
        self._frames: np.ndarray | None = None
        if isinstance(frames, FrameSource):
            self._lazy = frames
            self._shape = (int(frames.num_frames), int(frames.height), int(frames.width), 3)
        else:
            f = np.asarray(frames)
            if f.ndim != 4 or f.shape[-1] != 3:
                raise ValueError(f"a clip's frames must be T x H x W x 3, got shape {f.shape}")
            if f.dtype != np.uint8:
                raise ValueError(f"a clip's frames must be uint8, got {f.dtype}")
            self._frames = f
            self._shape = tuple(int(x) for x in f.shape)
        if not fps > 0:
            raise ValueError(f"a clip's fps must be positive, got {fps}")
        self.fps = fps
        self.source = source
        self.segment = check_segment(segment, "a clip's segment")
        self._cache: tuple[int, np.ndarray] | None = None  # (first frame, frames) of the segment read last

    @property
    def frames(self) -> np.ndarray:
        """Every frame (read once, then held, where they are read on demand)."""
        if self._frames is None:
            assert self._lazy is not None
            self._frames = self._lazy.read(0, self.num_frames)
            self._lazy, self._cache = None, None
        return self._frames

    @property
    def frame_source(self) -> FrameSource | None:
        """Where the frames are read from on demand (None once they are held)."""
        return self._lazy

    @property
    def lazy(self) -> bool:
        """Whether the frames are read on demand (not held)."""
        return self._frames is None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` .. ``stop - 1``; a clip read on demand reads them a segment at a time and keeps the
        segment read last, so that going through it piece by piece holds at most one segment."""
        start, stop = max(0, start), min(stop, self.num_frames)
        if self._frames is not None:
            return self._frames[start:stop]
        seg = self.segment or self.num_frames
        parts = []
        while start < stop:  # piece by piece from each segment the range crosses (copies of all but the last)
            first = (start // seg) * seg
            end = min(stop, first + seg)
            piece = self._segment(first, seg)[start - first : end - first]
            parts.append(piece if end == stop else piece.copy())
            start = end
        if not parts:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _segment(self, first: int, size: int) -> np.ndarray:
        """The segment of ``size`` frames from frame ``first``, read on demand and kept until another is read."""
        assert self._lazy is not None
        if self._cache is None or self._cache[0] != first:
            self._cache = None  # the segment read last goes before the next is read
            self._cache = (first, self._lazy.read(first, min(first + size, self.num_frames)))
        return self._cache[1]

    def segments(self, size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first frame, frames)`` of each segment of ``size`` frames (default: the clip's ``segment``)."""
        n = size or self.segment or self.num_frames
        for s in range(0, self.num_frames, n):
            yield s, self.read(s, s + n)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = None
        if self._lazy is not None and not self._lazy.portable():
            state["_frames"], state["_lazy"] = self._lazy.read(0, self.num_frames), None
        return state

    @property
    def num_frames(self) -> int:
        return self._shape[0]

    @property
    def height(self) -> int:
        return self._shape[1]

    @property
    def width(self) -> int:
        return self._shape[2]

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the frames (T, H, W, 3), so code that checks ``x.shape[:2]`` of an image can ask a clip too."""
        return tuple(self._shape)

    @property
    def duration_s(self) -> float:
        return self.num_frames / float(self.fps)

    def __len__(self) -> int:
        return self.num_frames


def check_segment(value: Any, what: str) -> int | None:
    """A segment length setting: a whole number of frames >= 1, or None / 0 for the whole clip."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a number of frames >= 1 (or 0 / null: the whole clip), got {value!r}")
    return value


def kbps(nbytes: int, frames: int, fps: float) -> float:
    """Bit rate of ``nbytes`` coding ``frames`` frames played at ``fps``."""
    return 8.0 * nbytes / (frames / float(fps)) / 1000.0


def mean_squared_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of the squared differences of two arrays of one shape, as ``np.mean((a - b) ** 2)`` in float64.

    8-bit arrays take a faster path with the same result, bit for bit: their differences are integers, so
    every partial sum of squares is an integer below 2**53 (up to 10**11 samples), exact in float64 in any
    order of summation; the mean is that exact sum divided by the count, as ``np.mean`` divides it."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("mean squared error of empty images")
    if a.dtype == np.uint8 and b.dtype == np.uint8:
        diff = np.subtract(a, b, dtype=np.int16).ravel().astype(np.float64)
        return float(np.dot(diff, diff)) / diff.size
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(diff * diff))


def frame_psnrs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-frame RGB PSNR (peak 255) of two T x H x W x 3 arrays (inf where a frame is identical)."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    mse = np.array([mean_squared_error(fa, fb) for fa, fb in zip(a, b, strict=True)])  # a frame's copies at a time
    with np.errstate(divide="ignore"):
        return np.where(mse == 0, np.inf, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)))


def psnr_frames(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame RGB PSNR (peak 255) of two T x H x W x 3 arrays."""
    return float(np.mean(frame_psnrs(a, b)))


def psnr_clip(a: Clip, b: Clip) -> float:
    """Mean over frames of the per-frame RGB PSNR (peak 255), as video coding reports average it; computed a
    segment at a time (the first clip's ``segment``, else the second's), holding one segment of each."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    n = a.segment or b.segment or a.num_frames
    per = [frame_psnrs(a.read(s, s + n), b.read(s, s + n)) for s in range(0, a.num_frames, n)]
    return float(np.mean(np.concatenate(per)))


def psnr(a: np.ndarray | Clip, b: np.ndarray | Clip) -> float:
    """RGB PSNR (peak 255) of an image, or of a clip: the mean of its frames' PSNRs."""
    if isinstance(a, Clip) and isinstance(b, Clip):
        return psnr_clip(a, b)
    mse = mean_squared_error(a, b)  # type: ignore[arg-type]
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def read_yuv_clip(
    path: Path,
    width: int,
    height: int,
    fmt: YUVFormat,
    start: int = 0,
    count: int | None = None,
) -> np.ndarray:
    """Frames ``start`` .. ``start + count - 1`` of a planar 4:2:0 YUV file, as T x H x W x 3 RGB.

    Frames are read one by one (a 1080p sequence of 600 frames is ~1.9 GB), so only the
    selected range is ever in memory as YUV.
    """
    n = frame_bytes(width, height, fmt)
    size = Path(path).stat().st_size
    total = size // n
    if size % n:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of {width}x{height} 4:2:0 {fmt.bit_depth}-bit frames "
            f"({n} bytes each): check the size and bit depth in its name"
        )
    count = total - start if count is None else count
    if start < 0 or count < 1 or start + count > total:
        raise ValueError(f"{path}: frames {start}..{start + count - 1} asked, the file has {total} (0..{total - 1})")
    return YUVFrames(Path(path), width, height, fmt, start, count).read(0, count)


def clip_to_yuv_bytes(clip: Clip | np.ndarray, fmt: YUVFormat) -> bytes:
    """Planar 4:2:0 bytes of every frame, back to back (the layout encoders read)."""
    frames = clip.frames if isinstance(clip, Clip) else np.asarray(clip)
    return b"".join(rgb_to_yuv_bytes(f, fmt) for f in frames)


def write_clip_yuv(clip: Clip, out: BinaryIO, fmt: YUVFormat) -> int:
    """Write the planar 4:2:0 bytes of every frame to ``out``, a segment of the clip at a time (the same bytes
    as :func:`clip_to_yuv_bytes`, holding one segment and one frame's bytes); returns the bytes written."""
    written = 0
    for _, frames in clip.segments():
        for f in frames:
            written += out.write(rgb_to_yuv_bytes(f, fmt))
    return written


def read_video_file(path: str | Path, max_frames: int | None = None) -> Clip:
    """Decode a video file (mp4, mkv, y4m, ...) with the ffmpeg binary of ``imageio-ffmpeg`` into a Clip.

    The frames are what ffmpeg's default conversion to RGB gives (the file's own matrix and range
    where it is tagged, else BT.601 limited range).
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video file {path} not found")
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = []
    for buf in reader:
        frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
        if max_frames is not None and len(frames) >= max_frames:
            reader.close()
            break
    if not frames:
        raise ValueError(f"{path}: no frames decoded")
    return Clip(np.stack(frames), float(meta["fps"]))
