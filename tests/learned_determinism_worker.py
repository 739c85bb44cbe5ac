"""Child process of ``test_learned_determinism.py``: encode or decode with the built-in learned codecs.

    python tests/learned_determinism_worker.py encode THREADS OUT CODEC[:Q][,CODEC[:Q]...] CROP IMAGE [IMAGE...]
    python tests/learned_determinism_worker.py decode THREADS OUT CODEC[:Q][,CODEC[:Q]...]

``encode`` writes, per codec and image, ``<codec>-<i>.bin`` (the bitstream at the card's smallest rate
point; ``<codec>-q<Q>-<i>.bin`` at rate point Q) and ``<codec>-<i>.ref.npy`` (its decode in this same
process); CROP is ``0`` (whole images) or ``HxW`` (central crops of at most that size). ``decode`` reads
the ``.bin`` files and writes ``<codec>-<i>.dec.npy``. Both set ``torch.set_num_threads(THREADS)`` first,
run on the CPU, and print one JSON line of seconds per image.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    mode, threads, out, names = argv[0], int(argv[1]), Path(argv[2]), argv[3].split(",")
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from vcmbench.adapters import build
    from vcmbench.cards import builtin_cards_root, load_card
    from vcmbench.codecs.base import Bitstream
    from vcmbench.codecs.learned import unpack_bitstream
    from vcmbench.media.image import read_rgb

    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, dict[str, float]] = {}
    for spec in names:
        name, _, point = spec.partition(":")
        card = load_card(builtin_cards_root() / "codecs" / f"{name}.yaml", "codec").with_settings(device="cpu")
        codec = build(card)
        q = float(point) if point else min(card.qualities)
        tag = f"{name}-q{point}" if point else name
        codec.model(codec.validate_quality(q))  # load the weights outside the timed part
        enc = dec = 0.0
        if mode == "encode":
            crop = [int(v) for v in argv[4].split("x")] if argv[4] != "0" else None
            images = [Path(p) for p in argv[5:]]
            for i, path in enumerate(images):
                image = read_rgb(path, path.stem)
                if crop:  # the central crop of at most CROP = HxW pixels
                    h, w = min(crop[0], image.shape[0]), min(crop[1], image.shape[1])
                    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
                    image = np.ascontiguousarray(image[top : top + h, left : left + w])
                t0 = time.perf_counter()
                bs = codec.encode(image, q)
                t1 = time.perf_counter()
                ref = codec.decode(bs)
                dec += time.perf_counter() - t1
                enc += t1 - t0
                (out / f"{tag}-{i}.bin").write_bytes(bs.data)
                np.save(out / f"{tag}-{i}.ref.npy", ref)
            n = len(images)
        else:
            files = sorted(out.glob(f"{tag}-[0-9]*.bin"))
            for f in files:
                data = f.read_bytes()
                u = unpack_bitstream(data)
                t0 = time.perf_counter()
                img = codec.decode(Bitstream(data, width=u.width, height=u.height))
                dec += time.perf_counter() - t0
                np.save(f.with_name(f.name[: -len(".bin")] + ".dec.npy"), img)
            n = len(files)
        seconds[tag] = {"encode": enc / max(1, n), "decode": dec / max(1, n), "threads": torch.get_num_threads()}
    print(json.dumps(seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
