"""VVC (VVenC) and HEVC (x265) through an ffmpeg binary: images all-intra, clips AI / RA / LD.

The default binary is the one shipped by ``imageio-ffmpeg`` (built with
``--enable-libvvenc`` and libx265); decoding uses ffmpeg's native VVC and HEVC
decoders (VVC output is bit-identical to VTM's DecoderApp). Each process runs
one thread so that bitstreams are reproducible and the runner can run one
encode per core.

What a QP means (the same for ``vvenc``, ``x265`` and ``vtm``; checked by reading the slice QP back
from the bitstream headers, :func:`slice_qps`):

- images and all-intra (``ai``) clips: the QP *is* the slice QP of every picture. VVenC would code
  intra pictures at QP - 3 (its ``IntraQPOffset``) and x265 at QP - 3 too (``--qp`` is the P-slice QP,
  I slices get ``-6·log2(ipratio)`` = -2.9); both are switched off here (``IntraQPOffset=0``,
  ``ipratio=1``), as VTM's all-intra configuration does;
- random-access and low-delay clips: the QP is the base QP of the JVET common test conditions. The
  intra picture is coded at QP - 3 in random access and at QP - 1 in low delay by all three (the
  ``IntraQPOffset`` of VTM's RA and LD configurations, set explicitly for VVenC; x265: ``ipratio``
  1.4 and 1.12), inter pictures at QP plus the offsets of each encoder's GOP structure (VTM and
  VVenC: the CTC's per-layer offsets and QP-dependent offset model, e.g. VVenC RA at QP 32: B slices
  at 38-41; x265: P at QP, B at QP + 6·log2(pbratio 1.3), 33-34).
  The QPs each clip was actually coded with are recorded in its bitstream's ``meta["slice_qp"]``
  (the distinct QPs of each slice type, e.g. ``{"I": [29], "B": [38, 40, 41]}``).

VVenC's block-importance mapping (``BIM``: a per-picture and per-block QP adaptation from its temporal
pre-filter, on by default in clips) is off, like the perceptual QP adaptation (``-qpa 0``): both make
the QP content-dependent, and the CTC configurations of VTM do not use them.

- VVenC: Wieckowski et al., "VVenC: An Open And Optimized VVC Encoder Implementation", ICMEW 2021.
- x265: the MulticoreWare HEVC encoder (ITU-T H.265).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from ..errors import BinaryNotFoundError, CodecError
from ..media.yuv import YUVFormat, frame_bytes
from ..registry import register
from .base import run_process, stderr_tail
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


# ---- slice QPs read back from a bitstream ------------------------------------------------------------
_FIELD = re.compile(r"^\[trace_headers @ [^\]]+\] +\d+ +(\S+) +[01]* = (-?\d+)\s*$")
_SECTION = re.compile(r"^\[trace_headers @ [^\]]+\] ([A-Z][A-Za-z ]+?)\s*$")
SLICE_TYPES = {0: "B", 1: "P", 2: "I"}  # slice_type / sh_slice_type of HEVC and VVC alike


def slice_qps(data: bytes, bitstream_format: str, ffmpeg: str | None = None) -> list[tuple[str, int]]:
    """(slice type, slice QP) of every slice of an HEVC (``"hevc"``) or VVC (``"vvc"``) Annex-B stream.

    Read from the headers by ffmpeg's ``trace_headers`` bitstream filter (its coded bitstream readers of
    H.265 and H.266): the slice QP is ``26 + init_qp_minus26`` of the slice's PPS plus the slice's delta,
    which VVC carries in the picture header (``ph_qp_delta``) when the PPS sets
    ``pps_qp_delta_info_in_ph_flag``, else in the slice header (``sh_qp_delta``); HEVC in the slice segment
    header (``slice_qp_delta``). CU-level QP deltas (adaptive quantization, off in vcmbench's cards) are not
    included. A VVC slice header without ``sh_slice_type`` is an intra slice (picture with intra slices only).
    """
    if bitstream_format not in ("hevc", "vvc"):
        raise ValueError(f"slice_qps reads hevc or vvc streams, not {bitstream_format!r}")
    exe = ffmpeg or default_ffmpeg()
    with tempfile.TemporaryDirectory(prefix="vcmbench-trace-") as tmp:
        src = Path(tmp) / f"in.{bitstream_format}"
        src.write_bytes(data)
        res = run_process([exe, "-hide_banner", "-nostdin", "-loglevel", "info", "-f", bitstream_format, "-i", str(src),
                           "-c", "copy", "-bsf:v", "trace_headers", "-f", "null", "-"],
                          f"trace_headers ({bitstream_format})", cwd=Path(tmp), timeout=600)  # fmt: skip
    out = slice_qps_from_trace(res.stderr)
    if not out:
        raise CodecError(f"trace_headers ({bitstream_format}): no slice header in the trace; stderr tail:\n    "
                         f"{stderr_tail(res.stderr)}")  # fmt: skip
    return out


def slice_qps_from_trace(trace: str) -> list[tuple[str, int]]:
    """(slice type, slice QP) of every slice in the log of ffmpeg's ``trace_headers`` (see :func:`slice_qps`)."""
    init_qp: dict[int, int] = {}  # PPS id -> init_qp_minus26
    in_ph: dict[int, int] = {}  # PPS id -> pps_qp_delta_info_in_ph_flag (VVC)
    pps = ph_pps = 0
    ph_delta = 0
    section = ""
    fields: dict[str, int] = {}
    out: list[tuple[str, int]] = []

    def close_section() -> None:
        nonlocal ph_pps, ph_delta
        if section == "Picture Header" or (section == "Slice Header" and "ph_pic_parameter_set_id" in fields):
            ph_pps = fields.get("ph_pic_parameter_set_id", ph_pps)
            ph_delta = fields.get("ph_qp_delta", 0)
        if section == "Slice Segment Header" and "slice_qp_delta" in fields:  # HEVC (not dependent segments)
            sp = fields.get("slice_pic_parameter_set_id", 0)
            out.append((SLICE_TYPES[fields.get("slice_type", 2)], 26 + init_qp[sp] + fields["slice_qp_delta"]))
        if section == "Slice Header":  # VVC
            delta = ph_delta if in_ph.get(ph_pps, 0) else fields.get("sh_qp_delta", 0)
            out.append((SLICE_TYPES[fields.get("sh_slice_type", 2)], 26 + init_qp[ph_pps] + delta))

    for line in trace.splitlines():
        if m := _FIELD.match(line):
            name, value = m.group(1), int(m.group(2))
            fields[name] = value
            if name == "pps_pic_parameter_set_id":
                pps = value
            elif name in ("init_qp_minus26", "pps_init_qp_minus26"):
                init_qp[pps] = value
            elif name == "pps_qp_delta_info_in_ph_flag":
                in_ph[pps] = value
        elif m := _SECTION.match(line):
            close_section()
            section, fields = m.group(1), {}
    close_section()
    return out


def slice_qp_summary(qps: list[tuple[str, int]]) -> dict[str, list[int]]:
    """The distinct slice QPs of each slice type, e.g. ``{"I": [29], "B": [33, 34, 35]}``."""
    summary: dict[str, set[int]] = {}
    for kind, qp in qps:
        summary.setdefault(kind, set()).add(qp)
    return {k: sorted(v) for k, v in sorted(summary.items(), key=lambda kv: "IPB".index(kv[0]))}


#: the intra QP offset of VTM's configurations of each clip structure (VTM-23.13: encoder_intra_vtm.cfg has
#: none, encoder_randomaccess_vtm.cfg -3, encoder_lowdelay_vtm.cfg -1), which vvenc and x265 follow
CTC_INTRA_QP_OFFSET = {"ai": 0, "ra": -3, "ld": -1}


def slice_qp_meta(data: bytes, bitstream_format: str, ffmpeg: str | None = None) -> dict[str, Any]:
    """``{"slice_qp": {type: [QPs]}}`` of a coded clip, for its bitstream's meta; ``{"slice_qp_error": why}``
    where the headers cannot be read (the encode itself is kept)."""
    try:
        return {"slice_qp": slice_qp_summary(slice_qps(data, bitstream_format, ffmpeg))}
    except (CodecError, BinaryNotFoundError, OSError, KeyError, ValueError) as exc:
        return {"slice_qp_error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


class FFmpegCodec(YUVCodec):
    location_settings = ("ffmpeg",)
    bitstream_format = "rawvideo"
    #: revision of the command lines vcmbench writes; part of :meth:`version` (and so of the cache key):
    #: bump it whenever a change of the command line changes the bitstreams
    command_revision: ClassVar[int] = 1

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
        return f"{_ffmpeg_version(self.ffmpeg)}; vcmbench commands r{self.command_revision}"

    def clip_meta(self, data: bytes) -> dict[str, Any]:
        return slice_qp_meta(data, self.bitstream_format, self.ffmpeg)

    def _input_args(self, src: Path, width: int, height: int, frames: int = 1, fps: float = 1.0,
                    input_bit_depth: int | None = None, skip_frames: int = 0) -> list[str]:  # fmt: skip
        """Read ``frames`` frames of the raw 4:2:0 file ``src`` after its first ``skip_frames`` and hand them to the
        encoder as ``self.fmt.ffmpeg_pix_fmt`` (the codec's bit depth: 10 by default, the only input libvvenc
        takes). An 8-bit file (``input_bit_depth`` 8, YUV pass-through) is read as ``yuv420p`` and converted by
        ffmpeg's swscale, which shifts each sample left by the difference of bit depths (checked sample for
        sample), as VTM's ``InputBitDepth=8 InternalBitDepth=10`` does."""
        in_fmt = YUVFormat(bit_depth=input_bit_depth) if input_bit_depth else self.fmt
        skip = ["-skip_initial_bytes", str(skip_frames * frame_bytes(width, height, in_fmt))] if skip_frames else []
        return [
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", in_fmt.ffmpeg_pix_fmt, "-s", f"{width}x{height}", "-r", f"{fps:g}", *skip,
            "-i", str(src), "-frames:v", str(frames), "-threads", str(self.threads), "-pix_fmt", self.fmt.ffmpeg_pix_fmt,
        ]  # fmt: skip

    def decode_command(self, src: Path, dst: Path, width: int, height: int) -> list[str]:
        return [
            self.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-threads", str(self.threads),
            "-f", self.bitstream_format, "-i", str(src),
            "-f", "rawvideo", "-pix_fmt", self.fmt.ffmpeg_pix_fmt, str(dst),
        ]  # fmt: skip


@register("codec", "vvenc")
class VVenCCodec(FFmpegCodec):
    """VVC with VVenC (``-qpa 0``: perceptual QP adaptation off, as in the VCM anchors); images all-intra.

    The QP is the slice QP of images and all-intra clips, the CTC base QP of RA/LD clips (module docstring).
    """

    #: 2: IntraQPOffset=0 for images and all-intra clips (they were coded at QP - 3), -1 for LD (was -3),
    #: BIM=0 for clips; 3: clips of YUV files code the file's original samples (YUV pass-through)
    command_revision = 3

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

    def vvenc_params(self, frames: int, fps: float) -> str:
        """``-vvenc-params`` of a still image (``frames`` 1) or of a clip's coding structure.

        VVenC's own GOP sizes and intra periods are set explicitly: through ffmpeg, an ``IntraPeriod``
        without a ``GOPSize`` can make libvvenc write nothing at all (exit code 0). Intra-only coding
        (images, ``ai``) has no intra QP offset, so that the slice QP is the QP; RA and LD take VTM's
        (:data:`CTC_INTRA_QP_OFFSET`); clips have no block-importance mapping (``BIM=0``), so that their
        QPs follow the GOP structure only.
        """
        if frames <= 1:
            return "IntraQPOffset=0"
        if self.video_config == "ai":
            return "IntraPeriod=1:IntraQPOffset=0:BIM=0"
        if self.video_config == "ld":  # one intra picture, then pictures referring to the past only
            return (f"PicReordering=0:GOPSize=8:DecodingRefreshType=none:IntraPeriod=-1:"
                    f"IntraQPOffset={CTC_INTRA_QP_OFFSET['ld']}:BIM=0")  # fmt: skip
        return (f"GOPSize={self.ra_gop_size}:IntraPeriod={self.intra_period(fps)}:"
                f"IntraQPOffset={CTC_INTRA_QP_OFFSET['ra']}:BIM=0")  # fmt: skip

    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0, input_bit_depth: int | None = None,
                       skip_frames: int = 0) -> list[str]:  # fmt: skip
        params = self.vvenc_params(frames, fps)
        return [
            *self._input_args(src, width, height, frames, fps, input_bit_depth, skip_frames),
            "-c:v", "libvvenc", "-preset", self.preset, "-qp", str(quality), "-qpa", str(int(self.qpa)),
            "-period", "1", "-vvenc-params", params, "-f", "vvc", str(dst),
        ]  # fmt: skip


@register("codec", "x265")
class X265Codec(FFmpegCodec):
    """HEVC with x265: images intra (``keyint=1``); ``info=0`` drops the ~2 kB encoder-info SEI.

    x265's ``--qp`` is the P-slice QP; images and all-intra clips set ``ipratio=1`` so that it is their
    slice QP (module docstring). In constant-QP mode x265 turns adaptive quantization and cu-tree off
    (its PPS has ``cu_qp_delta_enabled_flag`` 0): every CU is coded at the slice QP.
    """

    #: 2: ipratio=1 for images and all-intra clips (they were coded at QP - 3), 1.12 for LD (was QP - 3);
    #: 3: clips of YUV files code the file's original samples (YUV pass-through)
    command_revision = 3

    quality_range = (0, 51)
    quality_name = "QP"
    bitstream_suffix = ".265"
    bitstream_format = "hevc"

    def __init__(self, preset: str = "medium", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preset = preset

    def gop_params(self, frames: int, fps: float) -> str:
        """x265's GOP settings: intra only for images and ``ai`` (``ipratio=1``: slice QP = QP); for ``ra``
        a closed intra period of ~1 s with x265's default B-frame pyramid (``ipratio`` 1.4: intra pictures
        at QP - 3); for ``ld`` one intra picture (``ipratio`` 1.12: at QP - 1) then P pictures only. The
        intra offsets are VTM's (:data:`CTC_INTRA_QP_OFFSET`)."""
        if frames <= 1 or self.video_config == "ai":
            return "keyint=1:ipratio=1"
        if self.video_config == "ld":  # ipratio 1.12 = 2**(1/6): intra picture at QP - 1, VTM's LD offset
            return "keyint=-1:bframes=0:scenecut=0:ipratio=1.12"
        ip = self.intra_period(fps)
        return f"keyint={ip}:min-keyint={ip}:scenecut=0"

    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0, input_bit_depth: int | None = None,
                       skip_frames: int = 0) -> list[str]:  # fmt: skip
        params = (f"qp={quality}:{self.gop_params(frames, fps)}:info=0:pools={self.threads}:frame-threads=1:"
                  "log-level=error")  # fmt: skip
        return [
            *self._input_args(src, width, height, frames, fps, input_bit_depth, skip_frames),
            "-c:v", "libx265", "-preset", self.preset, "-x265-params", params, "-f", "hevc", str(dst),
        ]  # fmt: skip
