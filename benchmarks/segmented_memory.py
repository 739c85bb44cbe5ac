"""Peak memory of a long sequence coded and scored in segments, against the whole sequence at once.

    python benchmarks/segmented_memory.py [--frames 300] [--width 1920] [--height 1080] [--segment 32]
                                          [--qp 32] [--preset ultrafast] [--task synth_det]

Writes a synthetic 8-bit 4:2:0 sequence (a moving texture with a moving noisy box), frame by frame, into a
temporary SFU-HW-layout folder, then runs the run's own worker path on it twice, each time in a fresh
Python process: x265 random access (YUV pass-through) encode (``executors.base.run_encode``), decode with
decode PSNR against the source and prediction of every frame by the task (``LocalExecutor.infer``), first
with the dataset's ``segment`` setting and then with ``segment: 0`` (the whole sequence at once). Each child
prints its peak resident memory (``ru_maxrss`` of itself, and of its largest child process: the encoder or
decoder) and wall time; the parent checks that both bitstreams, decode PSNRs and predictions are identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vcmbench.cards import Card, CardSet
from vcmbench.codecs.base import Bitstream
from vcmbench.datasets.sfu_hw import SfuHwDataset
from vcmbench.executors.base import DecodeJob, EncodeJob, run_encode
from vcmbench.executors.local import LocalExecutor


def write_sequence(root: Path, frames: int, width: int, height: int, fps: int) -> Path:
    """ClassS/Long_<W>x<H>_<fps>Hz_8bit_P420.yuv (written a frame at a time) and one label file per frame."""
    folder = root / "ClassS"
    ann = folder / "Annotations" / "Long"
    ann.mkdir(parents=True)
    path = folder / f"Long_{width}x{height}_{fps}Hz_8bit_P420.yuv"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = ((x // 8 + y // 8) % 2 * 60 + 90).astype(np.int32)
    cy, cx = np.mgrid[0 : height // 2, 0 : width // 2]
    with open(path, "wb") as f:
        for t in range(frames):
            luma = (base + (x + 3 * t) % 64).astype(np.uint8)
            by, bx = (height // 4 + 2 * t) % (height - 128), (width // 5 + 5 * t) % (width - 256)
            luma[by : by + 128, bx : bx + 256] = rng.integers(16, 236, (128, 256), dtype=np.uint8)
            cb = ((cx + t) % 96 + 80).astype(np.uint8)
            cr = ((cy * 2 + t) % 96 + 80).astype(np.uint8)
            f.write(luma.tobytes() + cb.tobytes() + cr.tobytes())
            (ann / f"Long_{width}x{height}_{fps}_seq_{t:03d}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return path


def child(root: Path, segment: int, qp: int, preset: str, task_name: str, out: Path) -> None:
    """Encode, decode (with decode PSNR) and predict the one sequence under ``root`` as a run's worker does."""
    t0 = time.perf_counter()
    ds_card = Card("dataset", "long", "sfu_hw", "1", {"root": str(root), "segment": segment})
    codec_card = Card("codec", "x265", "x265", "1", {"preset": preset, "video_config": "ra"})
    ds = SfuHwDataset(root=root, segment=segment)
    (item,) = ds.all_items()
    enc = run_encode(EncodeJob("enc", codec_card, qp, ds_card, item))
    t_enc = time.perf_counter() - t0
    rss_enc = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.write_bytes(enc.data)
    bs = Bitstream(enc.data, enc.width, enc.height, enc.frames, enc.meta)
    job = DecodeJob("pred", ds_card, item, codec_card, bs, "enc", want_stats=True)
    with LocalExecutor(workers=1) as ex:
        (batch,) = list(ex.infer(CardSet().get("task", task_name), [job], 1))
    if batch.errors[0] is not None:
        raise batch.errors[0]
    preds = json.dumps(batch.preds[0], sort_keys=True, default=float)
    print(json.dumps({
        "segment": segment or "whole", "frames": enc.frames, "bytes": len(enc.data),
        "bitstream_sha256": hashlib.sha256(enc.data).hexdigest()[:16],
        "decode_psnr": batch.decode[0].psnr, "predictions_sha256": hashlib.sha256(preds.encode()).hexdigest()[:16],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_rss_after_encode_mb": round(rss_enc / 1024),
        "largest_child_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "encode_s": round(t_enc, 1), "wall_s": round(time.perf_counter() - t0, 1),
    }))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--segment", type=int, default=32, help="frames per segment of the segmented run")
    ap.add_argument("--qp", type=int, default=32)
    ap.add_argument("--preset", default="ultrafast", help="x265 preset")
    ap.add_argument("--task", default="synth_det", help="task card predicting every frame")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.segment, args.qp, args.preset, args.task, args.out)
        return
    with tempfile.TemporaryDirectory(prefix="vcmbench-segmented-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        path = write_sequence(root / "data", args.frames, args.width, args.height, args.fps)
        print(f"sequence: {args.width}x{args.height} x {args.frames} frames, 8-bit 4:2:0, {path.stat().st_size / 2**20:.0f} "
              f"MiB on disk ({args.frames * args.width * args.height * 3 / 2**20:.0f} MiB as RGB), written in "
              f"{time.perf_counter() - t:.1f} s; x265 {args.preset} RA QP {args.qp}, task {args.task}")  # fmt: skip
        runs = []
        for segment in (args.segment, 0):
            cmd = [sys.executable, __file__, "--child", str(root / "data"), "--segment", str(segment), "--qp",
                   str(args.qp), "--preset", args.preset, "--task", args.task, "--out", str(root / f"bs{segment}")]  # fmt: skip
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                print(f"segment {segment or 'whole'}: the child failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
                sys.exit(1)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]))
        same_bytes = (root / f"bs{args.segment}").read_bytes() == (root / "bs0").read_bytes()
        same = {k: runs[0][k] == runs[1][k] for k in ("decode_psnr", "predictions_sha256")}
        print(f"bitstreams identical: {same_bytes}; decode PSNR identical: {same['decode_psnr']}; predictions "
              f"identical: {same['predictions_sha256']}")  # fmt: skip
        print(f"peak RSS: segments of {args.segment} frames {runs[0]['peak_rss_mb']} MB, whole sequence "
              f"{runs[1]['peak_rss_mb']} MB ({runs[1]['peak_rss_mb'] / runs[0]['peak_rss_mb']:.1f}x); wall "
              f"{runs[0]['wall_s']} s vs {runs[1]['wall_s']} s")  # fmt: skip
        if not (same_bytes and all(same.values())):
            sys.exit(1)


if __name__ == "__main__":
    main()
