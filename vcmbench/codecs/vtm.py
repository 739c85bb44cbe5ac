"""VVC with the JVET reference software VTM (EncoderApp / DecoderApp): images all-intra, clips AI / RA / LD.

Bross et al., "Overview of the Versatile Video Coding (VVC) Standard and its
Applications", IEEE TCSVT 2021; VTM from https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM.

VTM is not packaged anywhere: users build it (cmake) and point the card's
``vtm_dir`` (or ``$VCMBENCH_VTM_DIR``) at the source tree or its ``bin/`` folder,
or give ``encoder``/``decoder``/``cfg`` paths one by one. VTM has no
multithreading; the runner runs one encode per core.

The QP is the slice QP of images and all-intra clips (``encoder_intra_vtm.cfg`` has no intra QP
offset) and the CTC base QP of random-access and low-delay clips (their cfgs: intra picture at QP - 3
and QP - 1, inter pictures at QP plus the GOP table's offsets), as for VVenC and x265 (:mod:`vcmbench.codecs.ffmpeg`).
``--ConformanceWindowMode=1`` is passed explicitly: VTM pads the (even) picture to its minimum CU size and
signals a conformance window. VTM 8-12 default to 0 and refuse sizes that are not multiples of 8; later
versions default to 1, so the flag changes no bitstream they wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import BinaryNotFoundError
from ..media.hashing import file_sha256
from ..registry import register
from .base import find_executable
from .external import YUVCodec
from .ffmpeg import slice_qp_meta

#: the configuration file of each coding structure of a clip (in VTM's cfg/); images use ``cfg_name``
VIDEO_CFG_NAMES = {"ai": "encoder_intra_vtm.cfg", "ra": "encoder_randomaccess_vtm.cfg",
                   "ld": "encoder_lowdelay_vtm.cfg"}  # fmt: skip
ENCODER_NAMES = ("EncoderAppStatic", "EncoderApp")
DECODER_NAMES = ("DecoderAppStatic", "DecoderApp")


def _candidates(root: Path, names: tuple[str, ...]) -> list[Path]:
    out = []
    for folder in (root, root / "bin"):
        out += [folder / n for n in names]
    bin_dir = root / "bin"
    if bin_dir.is_dir():  # bin/umake/gcc-x/x86_64/release/ layouts of older releases
        for n in names:
            out += sorted(bin_dir.glob(f"**/{n}"))
    return out


@register("codec", "vtm")
class VTMCodec(YUVCodec):
    quality_range = (0, 63)
    quality_name = "QP"
    bitstream_suffix = ".vvc"
    location_settings = ("vtm_dir", "encoder", "decoder", "cfg")
    #: GOP size of VTM's random-access configuration
    ra_gop_size = 32
    #: revision of the command lines vcmbench writes (part of :meth:`version`); 2: clips of YUV files code the
    #: file's original samples (YUV pass-through)
    command_revision = 2

    def __init__(
        self,
        vtm_dir: str | None = None,
        encoder: str | None = None,
        decoder: str | None = None,
        cfg: str | None = None,
        cfg_name: str = "encoder_intra_vtm.cfg",
        extra_args: list[str] | None = None,
        matrix: str = "bt601",
        full_range: bool = True,
        bit_depth: int = 10,
        timeout: float | None = None,
        video_config: str = "ra",
        intra_period: int | None = None,
    ) -> None:
        super().__init__(matrix=matrix, full_range=full_range, bit_depth=bit_depth, video_config=video_config,
                         intra_period=intra_period)  # fmt: skip
        self.vtm_dir = vtm_dir
        self._encoder = encoder
        self._decoder = decoder
        self._cfg = cfg
        self.cfg_name = cfg_name
        self.extra_args = list(extra_args or [])
        self.timeout = timeout

    # ---- locating the binaries -----------------------------------------------------------------
    def _root(self) -> Path | None:
        d = self.vtm_dir or os.environ.get("VCMBENCH_VTM_DIR")
        return Path(d).expanduser() if d else None

    def _hint(self) -> str:
        return (
            "set `vtm_dir:` in codecs/vtm.yaml or VCMBENCH_VTM_DIR to the VTM source tree (with bin/ and cfg/), "
            "or `encoder:`/`decoder:`/`cfg:` to the files; build VTM with "
            "`cmake -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j`"
        )

    def _find(self, explicit: str | None, names: tuple[str, ...], what: str) -> Path:
        if explicit:
            p = Path(explicit).expanduser()
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise BinaryNotFoundError(f"{self.name}: VTM {what} {p} not found or not executable; {self._hint()}")
            return p
        root = self._root()
        if root is None:
            raise BinaryNotFoundError(f"{self.name}: VTM {what} ({' or '.join(names)}) not configured; {self._hint()}")
        found = find_executable(_candidates(root, names))
        if found is None:
            raise BinaryNotFoundError(
                f"{self.name}: VTM {what} ({' or '.join(names)}) not found under {root} or {root / 'bin'}; "
                f"{self._hint()}"
            )
        return found

    @property
    def encoder(self) -> Path:
        return self._find(self._encoder, ENCODER_NAMES, "encoder")

    @property
    def decoder(self) -> Path:
        return self._find(self._decoder, DECODER_NAMES, "decoder")

    @property
    def cfg(self) -> Path:
        """The configuration of still images: ``cfg`` or ``cfg_name`` in VTM's cfg/ folder."""
        return Path(self._cfg).expanduser() if self._cfg else self._find_cfg(self.cfg_name)

    def video_cfg(self) -> Path:
        """The configuration of clips, by ``video_config`` (found beside the images' one)."""
        return self._find_cfg(VIDEO_CFG_NAMES[self.video_config])

    def _find_cfg(self, name: str) -> Path:
        enc = self.encoder
        root = self._root()
        tries = ([root / "cfg"] if root else []) + [p / "cfg" for p in enc.parents]
        if self._cfg:
            tries.insert(0, Path(self._cfg).expanduser().parent)
        p = next((t / name for t in tries if (t / name).is_file()), tries[0] / name)
        if not p.is_file():
            raise BinaryNotFoundError(f"{self.name}: VTM configuration {p} not found; {self._hint()}")
        return p

    def version(self) -> str:
        """The exact encoder, decoder and cfg files (hashes): a rebuilt VTM is a new codec version."""
        v = (f"vtm enc={file_sha256(self.encoder)[:16]} dec={file_sha256(self.decoder)[:16]} "
             f"cfg={file_sha256(self.cfg)[:16]} commands r{self.command_revision}")  # fmt: skip
        try:  # clips use the cfg of their structure: it is part of the version where it exists
            v += f" {self.video_config}={file_sha256(self.video_cfg())[:16]}"
        except BinaryNotFoundError:
            pass
        return v

    # ---- command lines -------------------------------------------------------------------------
    def encode_command(self, src: Path, dst: Path, width: int, height: int, quality: Any,
                       frames: int = 1, fps: float = 1.0, input_bit_depth: int | None = None,
                       skip_frames: int = 0) -> list[str]:  # fmt: skip
        """EncoderApp's command. A YUV pass-through clip reads the original file from frame ``skip_frames``
        (``--FrameSkip``) at its own bit depth (``--InputBitDepth=8``) and codes it at the codec's
        (``--InternalBitDepth=10``, the CTC's for 8-bit sequences)."""
        bd = self.fmt.bit_depth
        in_bd = input_bit_depth or bd
        skip = [f"--FrameSkip={skip_frames}"] if skip_frames else []
        if frames <= 1:
            cfg, structure = self.cfg, []
        else:  # the intra cfg codes only every 8th frame of a sequence (TemporalSubsampleRatio 8): code all
            cfg = self.video_cfg()
            structure = {"ai": ["--TemporalSubsampleRatio=1"], "ld": [],
                         "ra": [f"--IntraPeriod={self.intra_period(fps)}"]}[self.video_config]  # fmt: skip
        return [
            str(self.encoder), "-c", str(cfg), "-i", str(src), "-wdt", str(width), "-hgt", str(height),
            "-fr", str(max(1, round(fps))), "-f", str(frames), *skip, f"--InputBitDepth={in_bd}",
            f"--OutputBitDepth={bd}", f"--InternalBitDepth={bd}", "--InputChromaFormat=420", "--ConformanceWindowMode=1",
            "-q", str(quality), "-b", str(dst), "-o", "", *structure, *self.extra_args,
        ]  # fmt: skip

    def decode_command(self, src: Path, dst: Path, width: int, height: int) -> list[str]:
        return [str(self.decoder), "-b", str(src), "-o", str(dst), "-d", str(self.fmt.bit_depth)]

    def clip_meta(self, data: bytes) -> dict[str, Any]:
        """The slice QPs of a coded clip, read by ffmpeg's VVC header parser (where an ffmpeg is found)."""
        return slice_qp_meta(data, "vvc")
