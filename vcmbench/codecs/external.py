"""Middle layer for codecs that are external programs reading and writing YUV files.

Subclasses only build command lines (:meth:`YUVCodec.encode_command`,
:meth:`YUVCodec.decode_command`); colour conversion, padding, temporary files,
exit-code and empty-output checks live here, once.
"""

from __future__ import annotations

import tempfile
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import CodecError
from ..media.clip import Clip, YUVFrames, write_clip_yuv
from ..media.yuv import YUVFormat, YUVSource, frame_bytes, padded_size, rgb_to_yuv_bytes, yuv_bytes_to_rgb
from .base import Bitstream, Codec, read_output, run_process


class ExternalCodec(Codec):
    """Codecs implemented by external programs; the runner runs many of them at once."""

    #: seconds after which a child process is killed (None: never)
    timeout: float | None = None


#: coding structures of a clip: all intra, random access (hierarchical B, an intra picture about once a
#: second), low delay (one intra picture, then pictures predicted from the past only)
VIDEO_CONFIGS = ("ai", "ra", "ld")


class YUVCodec(ExternalCodec):
    """An external encoder/decoder pair working on planar 4:2:0 YUV files (the shared colour path).

    Images are coded as one intra picture. Clips (:class:`~vcmbench.media.clip.Clip`) are written frame
    after frame into one YUV file and coded with the structure ``video_config`` names (``ai``,
    ``ra``, ``ld``); ``intra_period`` (frames, random access only) defaults to the multiple of the
    encoder's GOP size nearest to one second at the clip's frame rate, as the common test conditions
    of JVET and MPEG VCM choose it.
    """

    media = ("image", "video")
    bitstream_suffix: ClassVar[str] = ".bin"
    #: GOP size of the random-access structure (intra periods are multiples of it)
    ra_gop_size: ClassVar[int] = 16

    def __init__(self, matrix: str = "bt601", full_range: bool = True, bit_depth: int = 10,
                 video_config: str = "ra", intra_period: int | None = None) -> None:  # fmt: skip
        self.fmt = YUVFormat(matrix=matrix, full_range=full_range, bit_depth=bit_depth)
        if video_config not in VIDEO_CONFIGS:
            raise ValueError(f"video_config must be one of {', '.join(VIDEO_CONFIGS)}, got {video_config!r}")
        if intra_period is not None and int(intra_period) < 1:
            raise ValueError(f"intra_period must be a positive number of frames (or null: auto), got {intra_period}")
        self.video_config = video_config
        self._intra_period = None if intra_period is None else int(intra_period)

    def intra_period(self, fps: float) -> int:
        """Frames between intra pictures in random access: the card's, or ~1 s rounded to the GOP size."""
        if self._intra_period is not None:
            return self._intra_period
        g = self.ra_gop_size
        return max(g, int(round(float(fps) / g)) * g)

    @abstractmethod
    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0, input_bit_depth: int | None = None,
                       skip_frames: int = 0) -> list[str]:  # fmt: skip
        """Command that encodes the padded YUV file ``src`` (``frames`` of ``width`` x ``height``) into ``dst``.

        ``frames == 1`` is a still image (intra); more frames are a clip coded with ``video_config``. The file's
        samples have ``input_bit_depth`` bits (None: the codec's own ``bit_depth``; the encoder codes at its
        own); the clip starts after its first ``skip_frames`` frames (YUV pass-through of a file range).
        """

    @abstractmethod
    def decode_command(self, src: Path, dst: Path, width: int, height: int) -> list[str]:
        """Command that decodes bitstream ``src`` into the planar YUV file ``dst``."""

    def clip_meta(self, data: bytes) -> dict[str, Any]:
        """What a coded clip's bitstream records beside its frame rate and structure (e.g. the slice QPs
        it was coded with: ``{"slice_qp": {"I": [29], "B": [38, 40]}}``); nothing by default."""
        return {}

    def encode(self, image: np.ndarray | Clip, quality: Any) -> Bitstream:
        """Encode an image or a clip. A clip read from a YUV file (``clip.source``) is encoded from that file's
        original samples (YUV pass-through); any other input goes through the shared RGB -> YUV conversion."""
        q = self.validate_quality(quality)
        clip = image if isinstance(image, Clip) else None
        source = self.passthrough_source(clip) if clip else None
        frames = clip.num_frames if clip else 1
        fps = float(clip.fps) if clip else 1.0
        h, w = (clip.height, clip.width) if clip else image.shape[:2]
        pw, ph = padded_size(w, h)
        with tempfile.TemporaryDirectory(prefix=f"vcmbench-{self.name}-") as tmp:
            dst = Path(tmp) / f"out{self.bitstream_suffix}"
            what = f"{self.name} encode ({self.quality_name} {q}, {w}x{h}" + (
                f", {frames} frames, {self.video_config})" if clip else ")")
            if source is not None:
                cmd = self.encode_command(source.path, dst, pw, ph, q, frames=frames, fps=fps,
                                          input_bit_depth=source.fmt.bit_depth, skip_frames=source.start)  # fmt: skip
            else:
                src = Path(tmp) / "in.yuv"
                with open(src, "wb") as f:  # a clip a segment at a time (its bytes are never joined in memory)
                    write_clip_yuv(clip, f, self.fmt) if clip else f.write(rgb_to_yuv_bytes(image, self.fmt))
                cmd = self.encode_command(src, dst, pw, ph, q, frames=frames, fps=fps)
            res = run_process(cmd, what, cwd=Path(tmp), timeout=self.timeout)
            data = read_output(dst, what, res.stderr)
        meta = {"fps": fps, "video_config": self.video_config, **self.clip_meta(data)} if clip else {}
        if source is not None:
            meta["yuv_source"] = source.describe()
        return Bitstream(data, width=w, height=h, frames=frames, meta=meta)

    def passthrough_source(self, clip: Clip) -> YUVSource | None:
        """The YUV file range a clip is encoded from (None: it has none, code its RGB frames).

        The file's samples are coded at the codec's ``bit_depth`` (e.g. 8-bit CTC sequences at 10 bits, as the
        CTC configurations do: the encoder shifts them left), never at fewer bits than the file has.
        """
        src = clip.source
        if src is None:
            return None
        if (src.frames, src.height, src.width) != (clip.num_frames, clip.height, clip.width):
            raise CodecError(f"{self.name}: clip of {clip.num_frames} frames of {clip.width}x{clip.height} names a "
                             f"YUV source of {src.frames} of {src.width}x{src.height} ({src.path})")  # fmt: skip
        if src.fmt.bit_depth > self.fmt.bit_depth:
            raise CodecError(f"{self.name}: {src.path} has {src.fmt.bit_depth}-bit samples, the codec codes "
                             f"{self.fmt.bit_depth} bits; set `bit_depth: {src.fmt.bit_depth}` in its card")  # fmt: skip
        return src

    def decoded_format(self, bitstream: Bitstream) -> YUVFormat:
        """How the decoded samples become RGB: the source's matrix and range for a YUV pass-through clip
        (:meth:`~vcmbench.media.yuv.YUVSource.rgb_format`, at the decoder's bit depth), else the codec's own."""
        src = bitstream.meta.get("yuv_source")
        if not src:
            return self.fmt
        return YUVFormat(matrix=src["matrix"], full_range=bool(src["full_range"]), bit_depth=self.fmt.bit_depth)

    def decode(self, bitstream: Bitstream) -> np.ndarray | Clip:
        """Decode an image, or a clip: a clip's decoded YUV file stays in a temporary folder, read (and converted
        to RGB) on demand, a segment at a time (:class:`~vcmbench.media.clip.YUVFrames`); the folder goes with
        the clip."""
        w, h, n = bitstream.width, bitstream.height, max(1, bitstream.frames)
        clip = bitstream.frames > 1 or "fps" in bitstream.meta
        tmp = tempfile.TemporaryDirectory(prefix=f"vcmbench-{self.name}-")
        try:
            dst = self.decode_to_file(bitstream, Path(tmp.name))
            fmt = self.decoded_format(bitstream)
            if clip:
                return Clip(YUVFrames(dst, w, h, fmt, 0, n, owner=tmp), float(bitstream.meta.get("fps", 1.0)))
            return yuv_bytes_to_rgb(dst.read_bytes()[: frame_bytes(w, h, self.fmt)], w, h, fmt)
        except BaseException:
            tmp.cleanup()
            raise
        finally:
            if not clip:
                tmp.cleanup()

    def decode_to_file(self, bitstream: Bitstream, tmp: Path) -> Path:
        """Run the decoder on ``bitstream`` in folder ``tmp``; the planar YUV file it wrote (checked to hold every
        picture)."""
        w, h, n = bitstream.width, bitstream.height, max(1, bitstream.frames)
        pw, ph = padded_size(w, h)
        src = tmp / f"in{self.bitstream_suffix}"
        dst = tmp / "dec.yuv"
        src.write_bytes(bitstream.data)
        what = f"{self.name} decode ({w}x{h}" + (f", {n} frames)" if n > 1 else ")")
        res = run_process(self.decode_command(src, dst, pw, ph), what, cwd=tmp, timeout=self.timeout)
        src.unlink()
        size = dst.stat().st_size if dst.is_file() else 0
        if size == 0:
            read_output(dst, what, res.stderr)  # raises the empty-output error with the decoder's stderr
        expected = frame_bytes(w, h, self.fmt)
        if size < n * expected:
            raise CodecError(
                f"{self.name} decode: decoder wrote {size} bytes, {n} {pw}x{ph} 4:2:0 "
                f"{self.fmt.bit_depth}-bit picture(s) need {n * expected}"
            )
        return dst
