"""Clips in the harness: the YUV codecs in AI / RA / LD, the SFU-HW-Objects-v1 dataset, per-frame
prediction and scoring, rate per clip (bpp over every frame, kbps at the clip's frame rate)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vcmbench.cards import CardError, CardSet
from vcmbench.codecs.ffmpeg import VVenCCodec, X265Codec
from vcmbench.datasets.sfu_hw import COCO80_IDS, SfuHwDataset, parse_yuv_name
from vcmbench.datasets.synth import SynthClipsDataset
from vcmbench.datasets.video import frame_key
from vcmbench.errors import DatasetLayoutError, ItemError
from vcmbench.executors.base import predict_batch
from vcmbench.media.clip import Clip, clip_to_yuv_bytes, kbps, psnr_clip, read_yuv_clip
from vcmbench.media.yuv import YUVFormat
from vcmbench.report.tables import curves, groups_table
from vcmbench.run import RunConfig, run
from vcmbench.tasks.base import Task
from vcmbench.tasks.yolov5 import YOLOv5Task


def moving_clip(frames: int = 10, h: int = 48, w: int = 64, fps: float = 25.0) -> Clip:
    """A textured square moving over a gradient: real temporal redundancy for inter coding."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        img = np.stack([x * 4 % 256, y * 5 % 256, np.full_like(x, 90)], -1).astype(np.uint8)
        x0, y0 = 4 + 3 * t, 8 + t
        sq = ((x - x0) // 3 + (y - y0) // 3) % 2 * 200 + 30
        inside = (x >= x0) & (x < x0 + 16) & (y >= y0) & (y < y0 + 16)
        img[inside] = sq[inside, None]
        out[t] = img
    return Clip(out, fps)


# ---- the Clip type and YUV files ---------------------------------------------------------------
def test_clip_checks_its_frames_and_rates() -> None:
    c = moving_clip(5)
    assert (c.num_frames, c.height, c.width) == (5, 48, 64) and c.duration_s == pytest.approx(0.2)
    with pytest.raises(ValueError, match="T x H x W x 3"):
        Clip(np.zeros((48, 64, 3), np.uint8), 30)
    with pytest.raises(ValueError, match="fps"):
        Clip(c.frames, 0)
    assert kbps(1000, frames=30, fps=30) == pytest.approx(8.0)  # 8000 bits in one second
    assert psnr_clip(c, c) == math.inf


def test_yuv_files_read_back_frame_ranges(tmp_path: Path) -> None:
    c = moving_clip(6)
    fmt = YUVFormat(matrix="bt601", full_range=False, bit_depth=8)
    path = tmp_path / "x.yuv"
    path.write_bytes(clip_to_yuv_bytes(c, fmt))
    every = read_yuv_clip(path, 64, 48, fmt)
    part = read_yuv_clip(path, 64, 48, fmt, start=2, count=3)
    assert every.shape == (6, 48, 64, 3) and np.array_equal(part, every[2:5])
    assert np.mean(np.abs(every.astype(int) - c.frames)) < 3  # 8-bit limited-range round trip
    with pytest.raises(ValueError, match="frames 4..7 asked, the file has 6"):
        read_yuv_clip(path, 64, 48, fmt, start=4, count=4)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="not a whole number"):
        read_yuv_clip(path, 64, 48, fmt)


# ---- video coding structures through ffmpeg --------------------------------------------------------
@pytest.mark.parametrize("cls", [VVenCCodec, X265Codec])
def test_clip_round_trip_and_structures(cls: type) -> None:
    clip = moving_clip(10)
    sizes = {}
    for config in ("ai", "ra", "ld"):
        codec = cls(video_config=config, **({"preset": "faster"} if cls is VVenCCodec else {}))
        codec.name = f"{cls.__name__}-{config}"
        bs = codec.encode(clip, 32)
        assert (bs.frames, bs.width, bs.height) == (10, 64, 48) and bs.meta["fps"] == 25.0
        dec = codec.decode(bs)
        assert isinstance(dec, Clip) and dec.frames.shape == clip.frames.shape and dec.fps == 25.0
        assert psnr_clip(clip, dec) > 28
        sizes[config] = len(bs.data)
    # inter prediction pays on a moving square: all-intra costs clearly more than RA and LD
    assert sizes["ai"] > 1.5 * sizes["ra"] and sizes["ai"] > 1.5 * sizes["ld"], sizes
    # a still image through the same codec is still one intra picture (and decodes to an array)
    codec = cls(**({"preset": "faster"} if cls is VVenCCodec else {}))
    codec.name = "still"
    img = codec.decode(codec.encode(clip.frames[0], 32))
    assert isinstance(img, np.ndarray) and img.shape == (48, 64, 3)


def test_command_lines_of_each_structure() -> None:
    v = VVenCCodec(video_config="ra", ffmpeg="/bin/true")
    cmd = v.encode_command(Path("i"), Path("o"), 64, 48, 32, frames=90, fps=50)
    assert cmd[cmd.index("-vvenc-params") + 1] == "GOPSize=16:IntraPeriod=48:IntraQPOffset=-3:BIM=0"  # ~1 s at 50 fps, multiple of 16
    assert cmd[cmd.index("-r") + 1] == "50" and cmd[cmd.index("-frames:v") + 1] == "90"
    still = v.encode_command(Path("i"), Path("o"), 64, 48, 32)  # still image: intra, at the QP itself
    assert still[still.index("-vvenc-params") + 1] == "IntraQPOffset=0"
    ld = VVenCCodec(video_config="ld", ffmpeg="/bin/true").encode_command(Path("i"), Path("o"), 64, 48, 32, 9, 30)
    assert "PicReordering=0" in ld[ld.index("-vvenc-params") + 1]
    x = X265Codec(video_config="ra", intra_period=24, ffmpeg="/bin/true")
    params = x.encode_command(Path("i"), Path("o"), 64, 48, 30, frames=50, fps=30)
    assert "keyint=24:min-keyint=24" in params[params.index("-x265-params") + 1]
    with pytest.raises(ValueError, match="video_config must be one of ai, ra, ld"):
        VVenCCodec(video_config="lowdelay")


def test_vtm_command_lines_for_clips(tmp_path: Path) -> None:
    from vcmbench.codecs.vtm import VTMCodec

    root = tmp_path / "vtm"
    (root / "bin").mkdir(parents=True)
    (root / "cfg").mkdir()
    for name in ("EncoderAppStatic", "DecoderAppStatic"):
        (root / "bin" / name).write_text("#!/bin/sh\n")
        (root / "bin" / name).chmod(0o755)
    for cfg in ("encoder_intra_vtm.cfg", "encoder_randomaccess_vtm.cfg", "encoder_lowdelay_vtm.cfg"):
        (root / "cfg" / cfg).write_text("#\n")
    ra = VTMCodec(vtm_dir=str(root), video_config="ra")
    cmd = ra.encode_command(Path("i"), Path("o"), 832, 480, 37, frames=64, fps=60)
    assert cmd[2].endswith("encoder_randomaccess_vtm.cfg") and "--IntraPeriod=64" in cmd
    assert cmd[cmd.index("-f") + 1] == "64" and cmd[cmd.index("-fr") + 1] == "60"
    ai = VTMCodec(vtm_dir=str(root), video_config="ai").encode_command(Path("i"), Path("o"), 64, 48, 37, 8, 30)
    assert ai[2].endswith("encoder_intra_vtm.cfg") and "--TemporalSubsampleRatio=1" in ai  # code every frame
    ld = VTMCodec(vtm_dir=str(root), video_config="ld").encode_command(Path("i"), Path("o"), 64, 48, 37, 8, 30)
    assert ld[2].endswith("encoder_lowdelay_vtm.cfg")
    still = ra.encode_command(Path("i"), Path("o"), 64, 48, 37)
    assert still[2].endswith("encoder_intra_vtm.cfg") and still[still.index("-f") + 1] == "1"


# ---- SFU-HW-Objects-v1 ------------------------------------------------------------------------------
def write_sfu(root: Path, frames: int = 8) -> dict[str, list[list[tuple]]]:
    """An SFU-HW-Objects-v1 layout: ClassC/RaceHorses (64x48) and ClassD/RaceHorses + BQSquare (32x24),
    8-bit BT.601 limited range, one label file per frame (the last frame of BQSquare unlabelled)."""
    fmt = YUVFormat(matrix="bt601", full_range=False, bit_depth=8)
    truth: dict[str, list[list[tuple]]] = {}
    for cls, name, (w, h), fps in (("C", "RaceHorses", (64, 48), 30), ("D", "RaceHorses", (32, 24), 30),
                                    ("D", "BQSquare", (32, 24), 60)):  # fmt: skip
        folder = root / f"Class{cls}"
        ann = folder / "Annotations" / name
        ann.mkdir(parents=True, exist_ok=True)
        clip = moving_clip(frames, h, w, fps)
        (folder / f"{name}_{w}x{h}_{fps}Hz_8bit_P420.yuv").write_bytes(clip_to_yuv_bytes(clip, fmt))
        seq = name + cls if name == "RaceHorses" else name
        truth[seq] = []
        for f in range(frames if name != "BQSquare" else frames - 1):
            boxes = [(0, 0.25 + 0.01 * f, 0.5, 0.3, 0.4), (2, 0.7, 0.6, 0.2, 0.2)]
            truth[seq].append(boxes)
            (ann / f"{name}_{w}x{h}_{fps}_seq_{f:03d}.txt").write_text(
                "".join(f"{c} {cx} {cy} {bw} {bh}\n" for c, cx, cy, bw, bh in boxes))
    return truth


def test_yuv_names_are_parsed() -> None:
    assert parse_yuv_name(Path("BasketballDrill_832x480_50Hz_8bit_P420.yuv")) == {
        "name": "BasketballDrill", "width": 832, "height": 480, "fps": 50, "bit_depth": 8}
    assert parse_yuv_name(Path("Traffic_2560x1600_30_crop.yuv"))["fps"] == 30  # type: ignore[index]
    assert parse_yuv_name(Path("notes.txt.yuv")) is None


def test_sfu_hw_layout_items_and_ground_truth(tmp_path: Path) -> None:
    truth = write_sfu(tmp_path)
    ds = SfuHwDataset(root=str(tmp_path))
    ds.name = "sfu_hw"
    items = ds.all_items()
    assert [it.id for it in items] == ["RaceHorsesC", "BQSquare", "RaceHorsesD"]  # by class, then name
    clip = ds.load_image(items[0])
    assert isinstance(clip, Clip) and clip.frames.shape == (8, 48, 64, 3) and clip.fps == 30
    gt = ds.coco_gt()
    assert len(gt.getImgIds()) == 8 + 7 + 8  # BQSquare's last frame has no label file: not scored
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[ds.image_id(frame_key("RaceHorsesC", 3))]))
    person = next(a for a in anns if a["category_id"] == COCO80_IDS[0])
    assert person["bbox"] == pytest.approx([(0.28 - 0.15) * 64, (0.5 - 0.2) * 48, 0.3 * 64, 0.4 * 48])
    assert {a["category_id"] for a in anns} == {1, 3} and gt.cats[3]["name"] == "car"
    assert ds.groups(items) == {"RaceHorsesC": ["RaceHorsesC"], "BQSquare": ["BQSquare"],
                                "RaceHorsesD": ["RaceHorsesD"], "ClassD": ["BQSquare", "RaceHorsesD"]}  # fmt: skip
    # perfect detections from the labels score 1.0 through the detection task's own evaluate
    task = YOLOv5Task(weights=str(tmp_path / "unused.pt"), class_map="coco80_to_coco91")
    preds = {}
    for it in items:
        w, h = it.meta["width"], it.meta["height"]
        preds[it.id] = [[[(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h, 0.9, c]
                         for c, cx, cy, bw, bh in boxes] for boxes in truth[it.id]]  # fmt: skip
    preds["BQSquare"].append([])  # the unlabelled last frame's prediction is ignored
    assert task.evaluate(ds.frame_predictions(preds), ds)["map"] == pytest.approx(1.0)
    preds["RaceHorsesC"] = [[] for _ in truth["RaceHorsesC"]]  # one clip missed entirely: recall falls
    assert task.evaluate(ds.frame_predictions(preds), ds)["map"] < 0.8


def test_sfu_hw_selection_and_clear_errors(tmp_path: Path) -> None:
    write_sfu(tmp_path)
    only_c = SfuHwDataset(root=str(tmp_path), classes="C", start_frame=2, num_frames=4)
    only_c.name = "sfu_hw"
    (item,) = only_c.all_items()
    assert item.id == "RaceHorsesC" and (item.meta["start"], item.meta["frames"]) == (2, 4)
    assert only_c.load_image(item).num_frames == 4 and sorted(only_c.frame_labels(item)) == [0, 1, 2, 3]
    whole = SfuHwDataset(root=str(tmp_path), classes=["C"])
    whole.name = "sfu_hw"
    # the frame range is part of what the clip is: its cache identity changes with it
    assert only_c.content_hash(item, "f" * 64) != whole.content_hash(whole.all_items()[0], "f" * 64)
    with pytest.raises(DatasetLayoutError, match=r"ClassE"):
        SfuHwDataset(root=str(tmp_path), classes=["E"]).check()
    for p in (tmp_path / "ClassD" / "Annotations" / "BQSquare").glob("*"):
        p.unlink()
    (tmp_path / "ClassD" / "Annotations" / "BQSquare").rmdir()
    with pytest.raises(DatasetLayoutError, match=r"ClassD/Annotations/BQSquare"):
        SfuHwDataset(root=str(tmp_path)).check()
    bad = tmp_path / "ClassC" / "Annotations" / "RaceHorses" / "RaceHorses_64x48_30_seq_001.txt"
    bad.write_text("0 0.5 0.5 0.1\n")
    ds = SfuHwDataset(root=str(tmp_path), classes=["C"])
    ds.name = "sfu_hw"
    with pytest.raises(ItemError, match="seq_001.txt:1: expected `cls cx cy w h`"):
        ds.frame_labels(ds.all_items()[0])


# ---- clips through the executors and the runner ------------------------------------------------------
class _CountingTask(Task):
    """Named fake task (predictions are the frame's mean value), counting what each call receives."""

    batch_size = 3

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, images):  # type: ignore[no-untyped-def]
        assert all(im.ndim == 3 for im in images)
        self.calls.append(len(images))
        return [float(im.mean()) for im in images]

    def evaluate(self, predictions, dataset):  # type: ignore[no-untyped-def]
        return {}


def test_clips_are_predicted_frame_by_frame_in_batches() -> None:
    task = _CountingTask()
    clip, img = moving_clip(7), moving_clip(1).frames[0]
    preds, errors, times = predict_batch(task, [clip, img])
    assert errors == [None, None] and all(t is not None for t in times)
    assert preds[0] == [float(f.mean()) for f in clip.frames] and preds[1] == float(img.mean())
    assert sorted(task.calls) == [1, 1, 3, 3]  # the image alone; the clip's 7 frames as 3 + 3 + 1


def test_synth_clips_through_the_runner(tmp_path: Path) -> None:
    """VVenC RA and x265 LD x the synth detector x the synth clips: per-clip metrics, kbps, resume."""
    cfg = RunConfig(codecs=["vvenc", "x265"], tasks=["synth_det"], datasets=["synth_clips"],
                    qualities={"vvenc": [37], "x265": [37]}, out=str(tmp_path / "o"), progress=False,
                    overrides={"vvenc": {"preset": "faster"}, "x265": {"video_config": "ld", "preset": "ultrafast"},
                               "synth_clips": {"num_frames": 12}})  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    assert report.work == {"encodes": 4, "decodes": 4, "inferences": 6, "evaluations": 3}
    rows = {(r["codec"], r["metric"]): r for r in report.rows}
    ref = rows[("uncompressed", "map50")]["value"]
    assert ref > 0.6  # the synth detector finds the moving things
    for codec in ("vvenc", "x265"):
        r = rows[(codec, "map50")]
        assert 0 < r["value"] <= ref + 0.05
        assert r["kbps"] == pytest.approx(8 * r["nbytes"] / (2 * 12 / 30) / 1000)  # 2 clips of 12 frames, 30 fps
        assert r["bpp"] == pytest.approx(8 * r["nbytes"] / (2 * 12 * 320 * 240))
        for clip in ("Synth00", "Synth01"):
            assert not rows[(codec, f"map50/{clip}")]["headline"]
    table = groups_table(pd.DataFrame(report.rows), ["map50"])  # the per-sequence table of `vcmbench report`
    assert list(table.group) == ["Synth00", "Synth01", "ClassS"]
    assert table.set_index("group").loc["Synth01", "vvenc@37"] == rows[("vvenc", "map50/Synth01")]["value"]
    again = run(cfg)
    assert again.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}
    items = json.loads((report.run_dir / "run.json").read_text())["config"]
    assert items["datasets"] == ["synth_clips"]
    # each clip's row is the score of that clip alone: a run of only that clip (from the stored predictions)
    for clip in ("Synth00", "Synth01"):
        alone = run(dataclasses.replace(cfg, ids=[clip]))
        assert alone.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 3}
        own = {(r["codec"], r["metric"]): r["value"] for r in alone.rows}
        for codec in ("uncompressed", "vvenc", "x265"):
            assert rows[(codec, f"map50/{clip}")]["value"] == own[(codec, "map50")]


def test_each_sequence_and_class_row_carries_its_own_rate(tmp_path: Path) -> None:
    """Per-sequence rows of results.csv carry the rate of that sequence's own bitstream (8 bytes / (frames W H)),
    not the unit's; the class row (both clips) carries the unit's."""
    cfg = RunConfig(codecs=["x265"], tasks=["synth_det"], datasets=["synth_clips"], qualities={"x265": [32]},
                    out=str(tmp_path / "o"), progress=False,
                    overrides={"x265": {"video_config": "ld", "preset": "ultrafast"}, "synth_clips": {"num_frames": 8}})  # fmt: skip
    report = run(cfg)
    assert report.ok, report.failures
    table = pd.read_csv(report.run_dir / "results.csv")
    items = pd.read_csv(report.run_dir / "items.csv")
    coded = items[items.codec == "x265"].set_index("item_id")
    rows = table[table.codec == "x265"].set_index("metric")
    own = {}
    for clip in ("Synth00", "Synth01"):
        nbytes = int(coded.loc[clip, "nbytes"])
        own[clip] = 8.0 * nbytes / (8 * 320 * 240)
        assert rows.loc[f"map50/{clip}", "bpp"] == pytest.approx(own[clip], rel=1e-12)
        assert rows.loc[f"map50/{clip}", "nbytes"] == nbytes
        assert rows.loc[f"map50/{clip}", "kbps"] == pytest.approx(8.0 * nbytes / (8 / 30) / 1000, rel=1e-12)
        assert rows.loc[f"map50/{clip}", "n_items"] == 1
    assert own["Synth00"] != pytest.approx(own["Synth01"], rel=0.01)  # two scenes, two rates
    # the report's per-sequence curves (and so their BD-rates) are drawn at those rates
    for clip in ("Synth00", "Synth01"):
        assert list(curves(table)[("synth_clips", "synth_det", f"map50/{clip}", "x265")].rate) == pytest.approx([own[clip]], rel=1e-12)
    unit_bpp = 8.0 * coded.nbytes.sum() / (2 * 8 * 320 * 240)
    assert rows.loc["map50", "bpp"] == pytest.approx(unit_bpp, rel=1e-12)
    assert rows.loc["map50/ClassS", "bpp"] == pytest.approx(unit_bpp, rel=1e-12)
    assert rows.loc["map50/ClassS", "n_items"] == 2


def test_image_codecs_and_tasks_are_refused_on_clips_before_any_work(tmp_path: Path) -> None:
    base = dict(out=str(tmp_path / "o"), progress=False, datasets=["synth_clips"])
    with pytest.raises(CardError, match="codec jpeg codes images; dataset synth_clips holds clips"):
        run(RunConfig(codecs=["jpeg"], tasks=["synth_det"], **base))  # type: ignore[arg-type]
    with pytest.raises(CardError, match="task faces scores images only"):
        run(RunConfig(codecs=["vvenc"], tasks=["faces"], **base))  # type: ignore[arg-type]
    with pytest.raises(CardError, match="--classes: dataset synth has no sequence classes"):
        run(RunConfig(codecs=["vvenc"], tasks=["synth_det"], datasets=["synth"], classes=["C"],
                      out=str(tmp_path / "o"), progress=False))  # fmt: skip
    assert not (tmp_path / "o" / "bitstreams").exists()


def test_synth_clip_labels_name_the_things_they_index(tmp_path: Path) -> None:
    ds = SynthClipsDataset()
    ds.name = "synth_clips"
    cats = {c["id"]: c["name"] for c in ds.categories()}
    data = json.loads(ds.images.ensure_clips_json().read_text())
    assert cats == {c["id"]: c["name"] for c in data["categories"]}
    # the first labelled thing of the first frame, read back through the SFU-HW path, equals the generator's
    item = ds.all_items()[0]
    cls, cx, cy, w, h, _track = data["clips"][0]["labels"][0][0]
    box = ds.frame_labels(item)[0][0]
    assert box.category_id == next(c["id"] for c in data["categories"] if c["index"] == cls)
    assert (box.x + box.w / 2, box.y + box.h / 2) == pytest.approx((cx * 320, cy * 240), abs=1e-3)
    assert CardSet().get("dataset", "synth_clips").settings["images"] == CardSet().get("dataset", "synth").settings["images"]


def test_nerv_sanerv_vvenc_x_yolov7_on_sfu_hw_classes_c_d(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command on an SFU-HW-Objects-v1 fixture: `vcmbench run --codec nerv,sanerv,vvenc --task
    yolov7 --dataset sfu_hw --classes C,D`, with a yolov7-tiny of random weights saved as an official-style
    checkpoint (a named stand-in for yolov7.pt) and NeRV sized down to seconds (tiny model, 3 + 1 epochs)."""
    pytest.importorskip("yolov7_package")
    from vcmbench.cli import main

    from .yolov7_models import build_random_yolov7_tiny, save_upstream_checkpoint

    write_sfu(tmp_path / "sfu", frames=6)
    ckpt = tmp_path / "yolov7-tiny-random.pt"
    save_upstream_checkpoint(build_random_yolov7_tiny(80, [moving_clip(1, 64, 64).frames[0]] * 2), ckpt)
    tiny = "[{size: S, width: 0.125, prune: 0.4, bits: 8}]"
    nerv = [f"--set={c}.rate_points={tiny}" for c in ("nerv", "sanerv")] + [
        f"--set={c}.{k}={v}" for c in ("nerv", "sanerv") for k, v in (("epochs", 3), ("finetune_epochs", 1),
                                                                     ("progress", "false"))]  # fmt: skip
    args = ["run", "--codec", "nerv,sanerv,vvenc", "--task", "yolov7", "--dataset", "sfu_hw", "--classes", "C,D",
            "--data-root", str(tmp_path / "sfu"), "--set", f"yolov7.weights={ckpt}", "--set", "yolov7.img_size=64",
            "--quality", "nerv=1", "--quality", "sanerv=1", "--quality", "vvenc=37", "--set", "vvenc.preset=faster",
            "--set", "sanerv.fz_scale=40", "--set", "sanerv.fz_min_size=20", *nerv,
            "--out", str(tmp_path / "o"), "--no-progress"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    (run_dir,) = (tmp_path / "o" / "runs").iterdir()
    df = pd.read_csv(run_dir / "results.csv")
    maps = df[df.metric == "map"].set_index("codec")
    assert set(maps.index) == {"uncompressed", "nerv", "sanerv", "vvenc"}
    assert maps.loc[["nerv", "sanerv", "vvenc"], "bpp"].gt(0).all() and maps.loc["nerv", "n_items"] == 3
    # rate of the clips: all bytes over 3 clips x 6 frames (one 64x48, two 32x24); kbps at their 30 / 60 fps
    pixels = 6 * (64 * 48 + 2 * 32 * 24)
    for codec in ("nerv", "sanerv", "vvenc"):
        r = maps.loc[codec]
        assert r["bpp"] == pytest.approx(8 * r["nbytes"] / pixels)
        assert r["kbps"] == pytest.approx(8 * r["nbytes"] / (6 / 30 + 6 / 60 + 6 / 30) / 1000)
    groups = set(df.metric[df.metric.str.startswith("map/")])
    assert groups == {"map/RaceHorsesC", "map/RaceHorsesD", "map/BQSquare", "map/ClassD"}
