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
from .base import Bitstream, Codec, read_output, run_process
from .yuv import YUVFormat, frame_bytes, padded_size, rgb_to_yuv_bytes, yuv_bytes_to_rgb


class ExternalCodec(Codec):
    """Codecs implemented by external programs; the runner runs many of them at once."""

    external = True
    #: seconds after which a child process is killed (None: never)
    timeout: float | None = None


class YUVCodec(ExternalCodec):
    """An external encoder/decoder pair working on planar 4:2:0 YUV files (the shared colour path)."""

    bitstream_suffix: ClassVar[str] = ".bin"

    def __init__(self, matrix: str = "bt601", full_range: bool = True, bit_depth: int = 10) -> None:
        self.fmt = YUVFormat(matrix=matrix, full_range=full_range, bit_depth=bit_depth)

    @abstractmethod
    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any) -> list[str]:
        """Command that encodes the padded YUV file ``src`` (``width`` x ``height``) into ``dst``."""

    @abstractmethod
    def decode_command(self, src: Path, dst: Path, width: int, height: int) -> list[str]:
        """Command that decodes bitstream ``src`` into the planar YUV file ``dst``."""

    def encode(self, image: np.ndarray, quality: Any) -> Bitstream:
        q = self.validate_quality(quality)
        h, w = image.shape[:2]
        pw, ph = padded_size(w, h)
        with tempfile.TemporaryDirectory(prefix=f"vcmbench-{self.name}-") as tmp:
            src = Path(tmp) / "in.yuv"
            dst = Path(tmp) / f"out{self.bitstream_suffix}"
            src.write_bytes(rgb_to_yuv_bytes(image, self.fmt))
            what = f"{self.name} encode ({self.quality_name} {q}, {w}x{h})"
            res = run_process(self.encode_command(src, dst, pw, ph, q), what, cwd=Path(tmp), timeout=self.timeout)
            data = read_output(dst, what, res.stderr)
        return Bitstream(data, width=w, height=h)

    def decode(self, bitstream: Bitstream) -> np.ndarray:
        w, h = bitstream.width, bitstream.height
        pw, ph = padded_size(w, h)
        with tempfile.TemporaryDirectory(prefix=f"vcmbench-{self.name}-") as tmp:
            src = Path(tmp) / f"in{self.bitstream_suffix}"
            dst = Path(tmp) / "dec.yuv"
            src.write_bytes(bitstream.data)
            what = f"{self.name} decode ({w}x{h})"
            res = run_process(self.decode_command(src, dst, pw, ph), what, cwd=Path(tmp), timeout=self.timeout)
            data = read_output(dst, what, res.stderr)
        expected = frame_bytes(w, h, self.fmt)
        if len(data) < expected:
            raise CodecError(
                f"{self.name} decode: decoder wrote {len(data)} bytes, a {pw}x{ph} 4:2:0 "
                f"{self.fmt.bit_depth}-bit picture needs {expected}"
            )
        return yuv_bytes_to_rgb(data[:expected], w, h, self.fmt)
