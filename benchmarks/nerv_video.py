"""NeRV (or SA-NeRV) on a real clip beside VVenC: PSNR and rate per rate point, VVenC at matching rates.

By default the carphone clip of the shared data (176x144, 120 frames; the NeRV paper used Big Buck
Bunny, ``--video .../bigbuckbunny.mp4``, which needs a GPU to train in reasonable time). Every NeRV
rate point of the card is trained on the clip (the card's recipe unless overridden), coded into its
bitstream and decoded; VVenC codes the same frames (random access, the card's preset) over a QP
ladder, and its PSNR at each NeRV rate is interpolated (linear in log-rate between the two VVenC
points around it). Figures are printed and written as JSON.

    VCMBENCH_SHARED=../shared python benchmarks/nerv_video.py                       # carphone, card ladder
    python benchmarks/nerv_video.py --video clip.mp4 --frames 60 --points 1 --set epochs=300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.media.clip import Clip, kbps, psnr_clip, read_video_file


def code(codec: Any, clip: Clip, q: Any) -> dict[str, Any]:
    t = time.perf_counter()
    bs = codec.encode(clip, q)
    enc = time.perf_counter() - t
    t = time.perf_counter()
    out = codec.decode(bs)
    dec = time.perf_counter() - t
    return {"quality": q, "bytes": len(bs.data), "bpp": bs.bpp, "kbps": kbps(len(bs.data), clip.num_frames, clip.fps),
            "psnr": psnr_clip(clip, out), "encode_s": round(enc, 1), "decode_s": round(dec, 2),
            **{k: v for k, v in bs.meta.items() if k in ("parameters", "pruned")}}  # fmt: skip


def psnr_at(rate: float, points: list[dict[str, Any]]) -> float | None:
    """PSNR of the (rate, PSNR) curve at ``rate``, linear in log-rate; None outside its range."""
    pts = sorted((p["bpp"], p["psnr"]) for p in points)
    for (r0, p0), (r1, p1) in zip(pts, pts[1:], strict=False):
        if r0 <= rate <= r1:
            w = (math.log(rate) - math.log(r0)) / (math.log(r1) - math.log(r0)) if r1 > r0 else 0.0
            return p0 + w * (p1 - p0)
    return None


def main() -> None:
    shared = Path(os.environ.get("VCMBENCH_SHARED", "../shared"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(shared / "data" / "video" / "carphone_pristine.mp4"))
    ap.add_argument("--frames", type=int, default=None, help="first N frames only [all]")
    ap.add_argument("--codec", default="nerv", choices=["nerv", "sanerv"])
    ap.add_argument("--points", default=None, help="rate points of the card to run, e.g. 1,2 [all]")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a card setting")
    ap.add_argument("--qps", default="27,32,37,42,47", help="VVenC QP ladder")
    ap.add_argument("--vvenc-preset", default="medium")
    ap.add_argument("--out", default="nerv_video.json")
    args = ap.parse_args()

    clip = read_video_file(args.video, args.frames)
    print(f"{args.video}: {clip.num_frames} frames of {clip.width}x{clip.height} at {clip.fps:g} fps", flush=True)
    cards = CardSet()
    card = cards.get("codec", args.codec)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    card = card.with_settings(progress=False, **overrides)
    nerv = build(card)
    points = [int(p) for p in args.points.split(",")] if args.points else list(card.qualities)
    vvenc = build(cards.get("codec", "vvenc").with_settings(preset=args.vvenc_preset, video_config="ra"))
    vvenc.name = "vvenc"

    rows = {"clip": {"file": args.video, "frames": clip.num_frames, "width": clip.width, "height": clip.height,
                     "fps": clip.fps}, "card": {"name": card.name, "settings": dict(card.settings)},
            args.codec: [], "vvenc": []}  # fmt: skip
    for q in [int(x) for x in args.qps.split(",")]:
        rows["vvenc"].append(code(vvenc, clip, q))
        r = rows["vvenc"][-1]
        print(f"vvenc QP {q}: {r['bpp']:.4f} bpp, {r['kbps']:.1f} kbps, {r['psnr']:.2f} dB, {r['encode_s']} s", flush=True)
    for q in points:
        r = code(nerv, clip, q)
        r["vvenc_psnr_at_same_bpp"] = psnr_at(r["bpp"], rows["vvenc"])
        rows[args.codec].append(r)
        print(f"{args.codec} rate point {q}: {r['bpp']:.4f} bpp, {r['kbps']:.1f} kbps, {r['psnr']:.2f} dB "
              f"(VVenC at that rate: {r['vvenc_psnr_at_same_bpp'] or float('nan'):.2f} dB), {r['parameters']} "
              f"parameters, encode {r['encode_s']} s, decode {r['decode_s']} s", flush=True)  # fmt: skip
    Path(args.out).write_text(json.dumps(rows, indent=2, default=float))
    print("\n| codec | point | bpp | kbps | PSNR (dB) | VVenC PSNR at that bpp | encode s |\n|---|---|---|---|---|---|---|")
    for r in rows[args.codec]:
        v = r["vvenc_psnr_at_same_bpp"]
        print(f"| {args.codec} | {r['quality']} | {r['bpp']:.4f} | {r['kbps']:.1f} | {r['psnr']:.2f} | "
              f"{'' if v is None else f'{v:.2f}'} | {r['encode_s']} |")
    for r in rows["vvenc"]:
        print(f"| vvenc RA | QP {r['quality']} | {r['bpp']:.4f} | {r['kbps']:.1f} | {r['psnr']:.2f} | | {r['encode_s']} |")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
