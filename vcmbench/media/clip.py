"""Clips as first-class items: frames, frame rate, and the raw YUV files video datasets ship.

A :class:`Clip` is what a video dataset's ``load_image`` returns and what a video codec's
``encode`` takes and ``decode`` gives back: ``frames`` (T x H x W x 3 uint8 RGB) and ``fps``.
Image codecs and tasks never see one: the executors give a task the frames of a clip one by
one (in batches) and keep one prediction per frame (:func:`predict_items`), and the runner
scores a clip dataset frame by frame (``VideoDataset.frame_predictions``).

Rate of a clip is ``8 * bytes / (frames * width * height)`` (bits per pixel, every frame
counted) and ``8 * bytes / (frames / fps) / 1000`` (kbps at the clip's frame rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .yuv import YUVFormat, YUVSource, bytes_to_planes, frame_bytes, rgb_to_yuv_bytes, yuv420_to_rgb


@dataclass(eq=False)
class Clip:
    """A video clip: ``frames`` is T x H x W x 3 uint8 RGB, ``fps`` its frame rate.

    ``source`` names the YUV file range the frames were converted from, where the dataset ships YUV
    (SFU-HW): YUV codecs encode those original samples instead of the RGB frames (YUV pass-through).
    """

    frames: np.ndarray
    fps: float
    source: YUVSource | None = None

    def __post_init__(self) -> None:
        f = np.asarray(self.frames)
        if f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"a clip's frames must be T x H x W x 3, got shape {f.shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"a clip's frames must be uint8, got {f.dtype}")
        if not self.fps > 0:
            raise ValueError(f"a clip's fps must be positive, got {self.fps}")
        self.frames = f

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the frames (T, H, W, 3), so code that checks ``x.shape[:2]`` of an image can ask a clip too."""
        return tuple(self.frames.shape)

    @property
    def duration_s(self) -> float:
        return self.num_frames / float(self.fps)

    def __len__(self) -> int:
        return self.num_frames


def kbps(nbytes: int, frames: int, fps: float) -> float:
    """Bit rate of ``nbytes`` coding ``frames`` frames played at ``fps``."""
    return 8.0 * nbytes / (frames / float(fps)) / 1000.0


def psnr_frames(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the per-frame RGB PSNR (peak 255) of two T x H x W x 3 arrays."""
    if a.shape != b.shape:
        raise ValueError(f"clips differ in shape: {a.shape} vs {b.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = np.mean(diff * diff, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        per = np.where(mse == 0, np.inf, 10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-300)))
    return float(np.mean(per))


def psnr_clip(a: Clip, b: Clip) -> float:
    """Mean over frames of the per-frame RGB PSNR (peak 255), as video coding reports average it."""
    return psnr_frames(a.frames, b.frames)


def psnr(a: np.ndarray | Clip, b: np.ndarray | Clip) -> float:
    """RGB PSNR (peak 255) of an image, or of a clip: the mean of its frames' PSNRs."""
    if isinstance(a, Clip) and isinstance(b, Clip):
        return psnr_clip(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))  # type: ignore[union-attr]
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
    out = np.empty((count, height, width, 3), dtype=np.uint8)
    with open(path, "rb") as f:
        f.seek(start * n)
        for i in range(count):
            buf = f.read(n)
            out[i] = yuv420_to_rgb(*bytes_to_planes(buf, width, height, fmt), width, height, fmt)
    return out


def clip_to_yuv_bytes(clip: Clip | np.ndarray, fmt: YUVFormat) -> bytes:
    """Planar 4:2:0 bytes of every frame, back to back (the layout encoders read)."""
    frames = clip.frames if isinstance(clip, Clip) else np.asarray(clip)
    return b"".join(rgb_to_yuv_bytes(f, fmt) for f in frames)


def yuv_bytes_to_frames(data: bytes, width: int, height: int, frames: int, fmt: YUVFormat) -> np.ndarray:
    """T x H x W x 3 RGB of the first ``frames`` frames of a planar 4:2:0 buffer."""
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        out[i] = yuv420_to_rgb(*bytes_to_planes(data, width, height, fmt, frame=i), width, height, fmt)
    return out


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
