"""SFU-HW-Objects-v1: object labels for the HEVC common-test-condition sequences, in their official layout.

Choi, Hosseini, Bajić et al., "Dataset for Machine Vision Tasks on Raw Video Sequences from HEVC
Common Test Conditions" (SFU-HW-Objects-v1), 2021. The labels come with the dataset; the raw
sequences are the JCT-VC CTC YUV files, which users obtain separately and put beside them::

    <root>/ClassC/BasketballDrill_832x480_50Hz_8bit_P420.yuv
    <root>/ClassC/Annotations/BasketballDrill/BasketballDrill_832x480_50_seq_000.txt   (one per frame)

A label line is ``cls cx cy w h``: a 0-based COCO-80 class index and a box centre and size
normalised to the picture (YOLO style). Sequence name, size and frame rate are read from the
YUV file name (``<Name>_<W>x<H>_<fps>[Hz][_<bits>bit][_P420].yuv``). The classes A-E and their
sequences are those of the dataset (:data:`SEQUENCES`); a sequence with another name is read as
it is, which is how the built-in synth clips (``ClassS``) use this adapter.

Each sequence is one clip item (``--ids BQMall``); ``classes`` selects classes (``--classes C,D``),
``start_frame`` / ``num_frames`` (or ``frame_ranges`` per sequence) a range of frames. Metrics are
reported for all selected frames and, as ``<metric>/<sequence>`` and ``<metric>/Class<X>``, per
sequence and per class, as in the SA-NeRV paper's table.

A clip's RGB frames (what the tasks see uncompressed) are converted with BT.601, limited range by default,
the conversion of MPEG's SFU-HW evaluation (:data:`~vcmbench.media.yuv.CTC_RGB`); YUV codecs code the file's
original samples instead (the clip's ``source``: YUV pass-through, ``docs/video.md``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DatasetLayoutError, ItemError
from ..media.clip import Clip, YUVFrames, check_segment
from ..media.hashing import stable_hash
from ..media.yuv import YUVFormat, YUVSource, frame_bytes
from ..registry import register
from .base import Item
from .video import Box, VideoDataset

#: the dataset's sequences: name -> (class, width, height, fps, frames) (HEVC CTC)
SEQUENCES: dict[str, tuple[str, int, int, int, int]] = {
    "Traffic": ("A", 2560, 1600, 30, 150), "PeopleOnStreet": ("A", 2560, 1600, 30, 150),
    "Kimono": ("B", 1920, 1080, 24, 240), "ParkScene": ("B", 1920, 1080, 24, 240),
    "Cactus": ("B", 1920, 1080, 50, 500), "BasketballDrive": ("B", 1920, 1080, 50, 500),
    "BQTerrace": ("B", 1920, 1080, 60, 600),
    "BasketballDrill": ("C", 832, 480, 50, 500), "BQMall": ("C", 832, 480, 60, 600),
    "PartyScene": ("C", 832, 480, 50, 500), "RaceHorsesC": ("C", 832, 480, 30, 300),
    "BasketballPass": ("D", 416, 240, 50, 500), "BQSquare": ("D", 416, 240, 60, 600),
    "BlowingBubbles": ("D", 416, 240, 50, 500), "RaceHorsesD": ("D", 416, 240, 30, 300),
    "FourPeople": ("E", 1280, 720, 60, 600), "Johnny": ("E", 1280, 720, 60, 600),
    "KristenAndSara": ("E", 1280, 720, 60, 600),
}  # fmt: skip

#: the 80 COCO classes YOLO-style labels index (0-based), with their COCO category ids
COCO80_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
COCO80_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip

_YUV_NAME = re.compile(
    r"^(?P<name>[A-Za-z0-9]+?)_(?P<w>\d+)x(?P<h>\d+)_(?P<fps>\d+(?:\.\d+)?)(?:Hz)?"
    r"(?:_(?P<bits>\d+)bit)?(?:_P?420)?(?:_[A-Za-z0-9]+)*\.yuv$"
)
_LABEL_NAME = re.compile(r"_(?P<n>\d+)\.txt$")

LAYOUT = """  <root>/
    Class<X>/<Name>_<W>x<H>_<fps>Hz_8bit_P420.yuv        the raw CTC sequence (8-bit 4:2:0)
    Class<X>/Annotations/<Name>/<Name>_<W>x<H>_<fps>_seq_<NNN>.txt   labels of frame NNN: cls cx cy w h"""


def parse_yuv_name(path: Path) -> dict[str, Any] | None:
    """Name, size, frame rate and bit depth from a CTC-style YUV file name (None if it is not one)."""
    m = _YUV_NAME.match(path.name)
    if m is None:
        return None
    fps = float(m["fps"])
    return {"name": m["name"], "width": int(m["w"]), "height": int(m["h"]),
            "fps": int(fps) if fps.is_integer() else fps, "bit_depth": int(m["bits"] or 8)}  # fmt: skip


@register("dataset", "sfu_hw")
class SfuHwDataset(VideoDataset):
    """SFU-HW-Objects-v1 sequences (see the module docstring).

    ``segment`` (frames; 0 or null: the whole sequence) bounds memory: a clip's frames are read from its YUV file
    on demand, and encoding, decode PSNR and prediction hold one segment of them at a time. It changes no
    bitstream, prediction or score, so it is left out of the dataset's identity, like ``root``.
    """

    location_settings: ClassVar[tuple[str, ...]] = ("root", "segment")

    def __init__(
        self,
        root: str | Path | None = None,
        classes: Sequence[str] | str | None = None,
        start_frame: int = 0,
        num_frames: int | None = None,
        frame_ranges: Mapping[str, Sequence[int]] | None = None,
        label_map: str | Sequence[Mapping[str, Any]] = "coco80",
        label_index_base: int = 0,
        matrix: str = "bt601",
        full_range: bool = False,
        segment: int | None = 64,
    ) -> None:
        self.root = Path(root).expanduser() if root else Path("")
        self.segment = check_segment(segment, "sfu_hw: segment")
        if isinstance(classes, str):
            classes = [c for c in classes.replace(",", " ").split() if c]
        self.classes = [str(c).removeprefix("Class") for c in classes] if classes else None
        if start_frame < 0 or (num_frames is not None and num_frames < 1):
            raise ValueError(f"sfu_hw: start_frame must be >= 0 and num_frames >= 1, got {start_frame}, {num_frames}")
        self.start_frame = int(start_frame)
        self.num_frames = None if num_frames is None else int(num_frames)
        self.frame_ranges = {str(k): (int(v[0]), int(v[1])) for k, v in (frame_ranges or {}).items()}
        self.label_map = label_map
        self.label_index_base = int(label_index_base)
        self.matrix = matrix
        self.full_range = bool(full_range)
        self._items: list[Item] | None = None
        self._coco = None

    # ---- layout ----------------------------------------------------------------------------------
    def _fix(self) -> str:
        return ("pass --data-root pointing at your SFU-HW-Objects-v1 copy with the CTC YUV sequences put in its "
                "Class<X>/ folders (or `root:` in datasets/sfu_hw.yaml)")  # fmt: skip

    def check(self) -> None:
        if not str(self.root):
            raise DatasetLayoutError(f"dataset {self.name}: no root folder given. Fix: {self._fix()}")
        if not self.root.is_dir():
            raise self.missing_error(self.name, self.root, [self.root], LAYOUT, self._fix())
        present = sorted(p.name.removeprefix("Class") for p in self.root.glob("Class*") if p.is_dir())
        wanted = self.classes or present
        missing = [self.root / f"Class{c}" for c in wanted if c not in present]
        if not wanted or missing:
            raise self.missing_error(self.name, self.root, missing or [self.root / "Class<X>"], LAYOUT,
                                     self._fix() + (f"; classes here: {', '.join(present)}" if present else ""))  # fmt: skip
        items, problems = [], []
        for c in wanted:
            folder = self.root / f"Class{c}"
            yuvs = sorted(folder.glob("*.yuv"))
            if not yuvs:
                problems.append(folder / "<Name>_<W>x<H>_<fps>Hz_8bit_P420.yuv")
            for yuv in yuvs:
                item = self._item(c, yuv, problems)
                if item is not None:
                    items.append(item)
        if problems:
            raise self.missing_error(self.name, self.root, problems, LAYOUT, self._fix())
        ids = [it.id for it in items]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise DatasetLayoutError(f"dataset {self.name}: sequences {dup} appear in more than one class folder")
        self._items = sorted(items, key=lambda it: (it.meta["class"], it.id))

    def _item(self, cls: str, yuv: Path, problems: list[Path]) -> Item | None:
        info = parse_yuv_name(yuv)
        if info is None:
            problems.append(yuv.parent / f"{yuv.name} (not a <Name>_<W>x<H>_<fps>Hz[_8bit][_P420].yuv name)")
            return None
        name = info["name"]
        seq = name + cls if name + cls in SEQUENCES else name  # RaceHorses is in classes C and D
        ann = next((d for d in (yuv.parent / "Annotations" / seq, yuv.parent / "Annotations" / name) if d.is_dir()), None)
        if ann is None:
            problems.append(yuv.parent / "Annotations" / name)
            return None
        fmt = self._fmt(info["bit_depth"])
        size = yuv.stat().st_size
        n = frame_bytes(info["width"], info["height"], fmt)
        if size % n:
            problems.append(yuv.parent / f"{yuv.name} ({size} bytes is not a whole number of "
                                         f"{info['width']}x{info['height']} {info['bit_depth']}-bit 4:2:0 frames)")  # fmt: skip
            return None
        total = size // n
        start, count = self._range(seq, total)
        if count < 1:
            problems.append(yuv.parent / f"{yuv.name} (has {total} frames; frames from {start} were asked)")
            return None
        meta = {"class": cls, "name": name, "width": info["width"], "height": info["height"], "fps": info["fps"],
                "bit_depth": info["bit_depth"], "total_frames": total, "start": start, "frames": count,
                "annotations": str(ann)}  # fmt: skip
        return Item(id=seq, path=yuv, meta=meta)

    def _range(self, seq: str, total: int) -> tuple[int, int]:
        if seq in self.frame_ranges:
            start, stop = self.frame_ranges[seq]
        else:
            start = self.start_frame
            stop = total if self.num_frames is None else start + self.num_frames
        return start, max(0, min(stop, total) - start)

    def _fmt(self, bit_depth: int) -> YUVFormat:
        return YUVFormat(matrix=self.matrix, full_range=self.full_range, bit_depth=bit_depth)

    def all_items(self) -> list[Item]:
        if self._items is None:
            self.check()
        assert self._items is not None
        return list(self._items)

    def content_hash(self, item: Item, file_sha: str) -> str:
        """The YUV file's sha256 plus the frame range and colour conversion: what the clip's pixels are."""
        m = item.meta
        return stable_hash({"file": file_sha, "start": m["start"], "frames": m["frames"], "matrix": self.matrix,
                            "full_range": self.full_range}, n=64)  # fmt: skip

    # ---- pixels and labels -----------------------------------------------------------------------
    def load_image(self, item: Item) -> Clip:
        """The clip's frames as RGB (the ``matrix`` and range of the card: BT.601 limited range by default, the
        conversion of MPEG's SFU-HW evaluation), read from the file on demand a ``segment`` at a time, with its
        YUV file range as ``source``: YUV codecs encode the original samples of that range (``docs/video.md``,
        YUV pass-through) and never read the RGB frames."""
        m = item.meta
        fmt = self._fmt(m["bit_depth"])
        source = YUVSource(Path(item.path), int(m["width"]), int(m["height"]), fmt, int(m["start"]), int(m["frames"]))
        try:
            frames = YUVFrames(source.path, source.width, source.height, fmt, source.start, source.frames)
        except (OSError, ValueError) as exc:
            raise ItemError(f"clip {item.id}: cannot read {item.path} ({exc}); restore the file from the CTC "
                            f"sequences or leave it out with --exclude {item.id}") from None  # fmt: skip
        return Clip(frames, float(m["fps"]), source=source, segment=self.segment)

    def categories(self) -> list[dict[str, Any]]:
        return [{"id": cid, "name": name} for cid, name in self._label_table().values()]

    def _label_table(self) -> dict[int, tuple[int, str]]:
        """Label index -> (COCO category id, name)."""
        if self.label_map == "coco80":
            return {i: (cid, name) for i, (cid, name) in enumerate(zip(COCO80_IDS, COCO80_NAMES, strict=True))}
        if isinstance(self.label_map, str):
            raise ValueError(f"sfu_hw: label_map must be coco80 or a list of {{index, id, name}}, got {self.label_map!r}")
        return {int(c["index"]): (int(c["id"]), str(c["name"])) for c in self.label_map}

    def frame_labels(self, item: Item) -> dict[int, list[Box]]:
        m = item.meta
        w, h = m["width"], m["height"]
        table = self._label_table()
        first, last = m["start"], m["start"] + m["frames"]
        out: dict[int, list[Box]] = {}
        for path in sorted(Path(m["annotations"]).glob("*.txt")):
            match = _LABEL_NAME.search(path.name)
            if match is None:
                continue
            f = int(match["n"]) - self.label_index_base
            if not first <= f < last:
                continue
            boxes = []
            for ln, line in enumerate(path.read_text().splitlines(), 1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    cls, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
                    cat = table[cls][0]
                except (ValueError, KeyError, IndexError):
                    raise ItemError(f"clip {item.id}: {path}:{ln}: expected `cls cx cy w h` with a class in the "
                                    f"label map, got {line!r}") from None  # fmt: skip
                boxes.append(Box(cat, (cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h))
            out[f - first] = boxes
        if not out:
            raise ItemError(f"clip {item.id}: no label files for frames {first}..{last - 1} in {m['annotations']} "
                            f"(label_index_base {self.label_index_base}); check the frame range")  # fmt: skip
        return out

    def groups(self, items: Sequence[Item]) -> dict[str, list[str]]:
        """Each sequence alone, and each class (``Class<X>``) with more than one sequence selected."""
        out = {it.id: [it.id] for it in items}
        by_class: dict[str, list[str]] = {}
        for it in items:
            by_class.setdefault(f"Class{it.meta['class']}", []).append(it.id)
        out.update({c: ids for c, ids in by_class.items() if len(ids) > 1})
        return out
