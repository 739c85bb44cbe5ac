"""VVC (VVenC) and HEVC (x265) through an ffmpeg binary: images all-intra, clips AI / RA / LD.

The default binary is the one shipped by ``imageio-ffmpeg`` (built with
``--enable-libvvenc`` and libx265); decoding uses ffmpeg's native VVC and HEVC
decoders (VVC output is bit-identical to VTM's DecoderApp). Each process runs
one thread so that bitstreams are reproducible and the runner can run one
encode per core.

- VVenC: Wieckowski et al., "VVenC: An Open And Optimized VVC Encoder Implementation", ICMEW 2021.
- x265: the MulticoreWare HEVC encoder (ITU-T H.265).
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

from ..errors import BinaryNotFoundError
from ..registry import register
from .external import YUVCodec


@functools.lru_cache(maxsize=8)
def _ffmpeg_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, timeout=30)
    except OSError as exc:
        raise BinaryNotFoundError(f"cannot run ffmpeg at {exe}: {exc}") from exc
    first = out.stdout.decode(errors="replace").splitlines()[:1]
    return first[0] if first else "unknown"


def default_ffmpeg() -> str:
    env = os.environ.get("VCMBENCH_FFMPEG")
    if env:
        return env
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise BinaryNotFoundError(
            "no ffmpeg: install imageio-ffmpeg (pip install imageio-ffmpeg), or set `ffmpeg:` in the codec "
            "card or VCMBENCH_FFMPEG"
        ) from exc
    return imageio_ffmpeg.get_ffmpeg_exe()


class FFmpegCodec(YUVCodec):
    location_settings = ("ffmpeg",)
    bitstream_format = "rawvideo"

    def __init__(
        self,
        ffmpeg: str | None = None,
        threads: int = 1,
        matrix: str = "bt601",
        full_range: bool = True,
        bit_depth: int = 10,
        video_config: str = "ra",
        intra_period: int | None = None,
    ) -> None:
        super().__init__(matrix=matrix, full_range=full_range, bit_depth=bit_depth, video_config=video_config,
                         intra_period=intra_period)  # fmt: skip
        self._ffmpeg = ffmpeg
        self.threads = threads

    @property
    def ffmpeg(self) -> str:
        exe = self._ffmpeg or default_ffmpeg()
        if not Path(exe).is_file():
            raise BinaryNotFoundError(
                f"{self.name}: ffmpeg binary {exe} not found; fix `ffmpeg:` in the codec card or VCMBENCH_FFMPEG"
            )
        return exe

    def version(self) -> str:
        return _ffmpeg_version(self.ffmpeg)

    def _input_args(self, src: Path, width: int, height: int, frames: int = 1, fps: float = 1.0) -> list[str]:
        return [
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", self.fmt.ffmpeg_pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps:g}",
            "-i", str(src), "-frames:v", str(frames), "-threads", str(self.threads),
        ]  # fmt: skip

    def decode_command(self, src: Path, dst: Path, width: int, height: int) -> list[str]:
        return [
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", str(self.threads),
            "-f", self.bitstream_format, "-i", str(src),
            "-f", "rawvideo", "-pix_fmt", self.fmt.ffmpeg_pix_fmt, str(dst),
        ]  # fmt: skip


@register("codec", "vvenc")
class VVenCCodec(FFmpegCodec):
    """VVC with VVenC (``-qpa 0``: perceptual QP adaptation off, as in the VCM anchors); images all-intra."""

    quality_range = (0, 63)
    quality_name = "QP"
    bitstream_suffix = ".266"
    bitstream_format = "vvc"
    PRESETS = ("faster", "fast", "medium", "slow", "slower")

    def __init__(self, preset: str = "medium", qpa: bool = False, **kwargs: Any) -> None:
        if preset not in self.PRESETS:
            raise ValueError(f"vvenc: preset must be one of {self.PRESETS}, got {preset!r}")
        super().__init__(**kwargs)
        self.preset = preset
        self.qpa = qpa

    def vvenc_params(self, frames: int, fps: float) -> str | None:
        """``-vvenc-params`` of a clip's coding structure (None for a still image).

        VVenC's own GOP sizes and intra periods are set explicitly: through ffmpeg, an ``IntraPeriod``
        without a ``GOPSize`` can make libvvenc write nothing at all (exit code 0).
        """
        if frames <= 1:
            return None
        if self.video_config == "ai":
            return "IntraPeriod=1"
        if self.video_config == "ld":  # one intra picture, then pictures referring to the past only
            return "PicReordering=0:GOPSize=8:DecodingRefreshType=none:IntraPeriod=-1"
        return f"GOPSize={self.ra_gop_size}:IntraPeriod={self.intra_period(fps)}"

    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0) -> list[str]:  # fmt: skip
        params = self.vvenc_params(frames, fps)
        return [
            *self._input_args(src, width, height, frames, fps),
            "-c:v", "libvvenc", "-preset", self.preset, "-qp", str(quality), "-qpa", str(int(self.qpa)),
            "-period", "1", *(["-vvenc-params", params] if params else []), "-f", "vvc", str(dst),
        ]  # fmt: skip


@register("codec", "x265")
class X265Codec(FFmpegCodec):
    """HEVC with x265: images intra (``keyint=1``); ``info=0`` drops the ~2 kB encoder-info SEI."""

    quality_range = (0, 51)
    quality_name = "QP"
    bitstream_suffix = ".265"
    bitstream_format = "hevc"

    def __init__(self, preset: str = "medium", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preset = preset

    def gop_params(self, frames: int, fps: float) -> str:
        """x265's GOP settings: intra only for images and ``ai``; for ``ra`` a closed intra period of
        ~1 s with x265's default B-frame pyramid; for ``ld`` one intra picture then P pictures only."""
        if frames <= 1 or self.video_config == "ai":
            return "keyint=1"
        if self.video_config == "ld":
            return "keyint=-1:bframes=0:scenecut=0"
        ip = self.intra_period(fps)
        return f"keyint={ip}:min-keyint={ip}:scenecut=0"

    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0) -> list[str]:  # fmt: skip
        params = (f"qp={quality}:{self.gop_params(frames, fps)}:info=0:pools={self.threads}:frame-threads=1:"
                  "log-level=error")  # fmt: skip
        return [
            *self._input_args(src, width, height, frames, fps),
            "-c:v", "libx265", "-preset", self.preset, "-x265-params", params, "-f", "hevc", str(dst),
        ]  # fmt: skip
