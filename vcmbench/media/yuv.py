"""The one RGB <-> YUV 4:2:0 path shared by every YUV codec (VVenC, x265, VTM).

Follows the MPEG VCM image anchor as implemented in CompressAI-Vision: pad width
and height up to even, convert RGB to Y'CbCr 4:2:0 at 10 bits (full range by
default, BT.601 matrix as ffmpeg's swscale uses when none is tagged), encode,
decode at 10 bits, convert back with the same matrix and range, crop the padding.

It is implemented in NumPy rather than by another ffmpeg call so that it is
exact, fast and identical for every codec. Chroma is down-sampled by 2x2 box
averaging (centre-sited chroma) and up-sampled bilinearly.

Clips read from YUV files skip the RGB -> YUV half: a :class:`YUVSource` names the file range, which the
YUV codecs encode unchanged, and only the decoded samples are converted to RGB, with the source's matrix
and range (:data:`CTC_RGB` for SFU-HW).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# (Kr, Kb) luma coefficients
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


@dataclass(frozen=True)
class YUVFormat:
    matrix: str = "bt601"
    full_range: bool = True
    bit_depth: int = 10

    def __post_init__(self) -> None:
        if self.matrix not in MATRICES:
            raise ValueError(f"unknown colour matrix {self.matrix!r}; use one of {sorted(MATRICES)}")
        if not 8 <= self.bit_depth <= 16:
            raise ValueError(f"bit_depth must be 8..16, got {self.bit_depth}")

    @property
    def ffmpeg_pix_fmt(self) -> str:
        if self.bit_depth == 8:
            return "yuv420p"
        return f"yuv420p{self.bit_depth}le"

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.bit_depth == 8 else 2


@dataclass(frozen=True)
class YUVSource:
    """Where a clip's frames come from when its dataset ships planar 4:2:0 YUV files (SFU-HW's CTC sequences).

    ``fmt`` describes the file: its bit depth, and the matrix and range that turn its samples into the
    task's RGB (BT.601 limited range for the CTC sequences, as CompressAI-Vision's SFU-HW evaluation
    converts them: :data:`CTC_RGB`). Frames ``start`` .. ``start + frames - 1`` of ``width`` x ``height`` are
    the clip. A YUV codec encodes those bytes unchanged (YUV pass-through); it never sees the RGB frames.
    """

    path: Path
    width: int
    height: int
    fmt: YUVFormat
    start: int
    frames: int

    @property
    def offset(self) -> int:
        """Byte offset of the first frame of the clip in the file."""
        return self.start * frame_bytes(self.width, self.height, self.fmt)

    def rgb_format(self, bit_depth: int) -> YUVFormat:
        """The conversion of this source's samples to RGB, at ``bit_depth`` (a decoder's output depth)."""
        return YUVFormat(matrix=self.fmt.matrix, full_range=self.fmt.full_range, bit_depth=bit_depth)

    def describe(self) -> dict[str, Any]:
        """What a bitstream's meta records of its source, so that its decoder converts to RGB the same way."""
        return {"bit_depth": self.fmt.bit_depth, "matrix": self.fmt.matrix, "full_range": self.fmt.full_range}


#: the conversion MPEG's evaluation of SFU-HW uses from YUV to the task's RGB: ffmpeg's default for untagged
#: planar 4:2:0 (BT.601 matrix, limited range). CompressAI-Vision makes the uncompressed frames with
#: ``ffmpeg -pix_fmt yuv420p -i seq.yuv ... frame.png`` (data/mpeg-fcm/SFUHW/prepare_sfu_data.py) and, in
#: VCM mode, the decoded ones with ``ffmpeg -pix_fmt yuv420p10le -i dec.yuv -pix_fmt rgb24`` with no
#: ``-src_range`` (codecs/encdec_utils/png_yuv.py, YuvFileToPngFilesConverter)
CTC_RGB = YUVFormat(matrix="bt601", full_range=False, bit_depth=8)


def padded_size(width: int, height: int) -> tuple[int, int]:
    """Width and height rounded up to even (4:2:0 needs them)."""
    return width + (width & 1), height + (height & 1)


def frame_bytes(width: int, height: int, fmt: YUVFormat) -> int:
    pw, ph = padded_size(width, height)
    return (pw * ph + 2 * (pw // 2) * (ph // 2)) * fmt.bytes_per_sample


def _ranges(fmt: YUVFormat) -> tuple[float, float, float]:
    """(luma offset, luma scale, chroma scale) for the bit depth and range."""
    shift = 1 << (fmt.bit_depth - 8)
    if fmt.full_range:
        peak = (1 << fmt.bit_depth) - 1
        return 0.0, float(peak), float(peak)
    return 16.0 * shift, 219.0 * shift, 224.0 * shift


def rgb_to_yuv420(rgb: np.ndarray, fmt: YUVFormat = YUVFormat()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HxWx3 uint8 RGB -> (Y, Cb, Cr) uint16 planes of the padded, even-sized picture."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
    h, w = rgb.shape[:2]
    pw, ph = padded_size(w, h)
    if (pw, ph) != (w, h):
        rgb = np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    x = rgb.astype(np.float64) / 255.0
    kr, kb = MATRICES[fmt.matrix]
    kg = 1.0 - kr - kb
    y = kr * x[..., 0] + kg * x[..., 1] + kb * x[..., 2]
    cb = (x[..., 2] - y) / (2.0 * (1.0 - kb))
    cr = (x[..., 0] - y) / (2.0 * (1.0 - kr))
    cb = cb.reshape(ph // 2, 2, pw // 2, 2).mean(axis=(1, 3))
    cr = cr.reshape(ph // 2, 2, pw // 2, 2).mean(axis=(1, 3))
    off, ys, cs = _ranges(fmt)
    mid = float(1 << (fmt.bit_depth - 1))
    peak = (1 << fmt.bit_depth) - 1

    def q(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a), 0, peak).astype(np.uint16)

    return q(off + ys * y), q(mid + cs * cb), q(mid + cs * cr)


def yuv420_to_rgb(
    y: np.ndarray, cb: np.ndarray, cr: np.ndarray, width: int, height: int, fmt: YUVFormat = YUVFormat()
) -> np.ndarray:
    """(Y, Cb, Cr) planes -> HxWx3 uint8 RGB cropped to ``width`` x ``height``."""
    ph, pw = y.shape
    off, ys, cs = _ranges(fmt)
    mid = float(1 << (fmt.bit_depth - 1))
    yf = (y.astype(np.float64) - off) / ys
    up = (pw, ph)
    cbf = cv2.resize((cb.astype(np.float64) - mid) / cs, up, interpolation=cv2.INTER_LINEAR)
    crf = cv2.resize((cr.astype(np.float64) - mid) / cs, up, interpolation=cv2.INTER_LINEAR)
    kr, kb = MATRICES[fmt.matrix]
    kg = 1.0 - kr - kb
    r = yf + 2.0 * (1.0 - kr) * crf
    b = yf + 2.0 * (1.0 - kb) * cbf
    g = (yf - kr * r - kb * b) / kg
    rgb = np.stack([r, g, b], axis=-1)
    rgb = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb[:height, :width])


def planes_to_bytes(planes: tuple[np.ndarray, np.ndarray, np.ndarray], fmt: YUVFormat = YUVFormat()) -> bytes:
    """Planar little-endian bytes, as ffmpeg's yuv420p10le and VTM's 10-bit .yuv files store them."""
    dtype = np.uint8 if fmt.bytes_per_sample == 1 else np.dtype("<u2")
    return b"".join(np.ascontiguousarray(p.astype(dtype)).tobytes() for p in planes)


def bytes_to_planes(
    data: bytes, width: int, height: int, fmt: YUVFormat = YUVFormat(), frame: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read frame ``frame`` of a planar 4:2:0 buffer whose picture is ``width`` x ``height`` before padding."""
    pw, ph = padded_size(width, height)
    n = frame_bytes(width, height, fmt)
    need = (frame + 1) * n
    if len(data) < need:
        raise ValueError(f"YUV buffer has {len(data)} bytes, frame {frame} of {pw}x{ph} needs {need}")
    dtype = np.uint8 if fmt.bytes_per_sample == 1 else np.dtype("<u2")
    buf = np.frombuffer(data, dtype=dtype, count=n // fmt.bytes_per_sample, offset=frame * n)
    ys = pw * ph
    cs = (pw // 2) * (ph // 2)
    y = buf[:ys].reshape(ph, pw).astype(np.uint16)
    cb = buf[ys : ys + cs].reshape(ph // 2, pw // 2).astype(np.uint16)
    cr = buf[ys + cs : ys + 2 * cs].reshape(ph // 2, pw // 2).astype(np.uint16)
    return y, cb, cr


def rgb_to_yuv_bytes(rgb: np.ndarray, fmt: YUVFormat = YUVFormat()) -> bytes:
    return planes_to_bytes(rgb_to_yuv420(rgb, fmt), fmt)


def yuv_bytes_to_rgb(data: bytes, width: int, height: int, fmt: YUVFormat = YUVFormat()) -> np.ndarray:
    return yuv420_to_rgb(*bytes_to_planes(data, width, height, fmt), width, height, fmt)
