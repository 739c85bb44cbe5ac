"""Procedural textures for the synthetic benchmark: smooth value noise and fine periodic patterns.

Everything here is a pure function of its arguments and of a ``numpy.random.Generator``
(PCG64), so a seed reproduces the same pixels. Value noise follows Perlin's lattice idea
(K. Perlin, "An Image Synthesizer", SIGGRAPH 1985) in its simplest form: random values on
a coarse grid, interpolated bicubically.

Patterns are the "fine detail" that makes a thing class recognisable: their periods are
4-7 pixels, the scale that lossy codecs remove first (JPEG's 8x8 DCT quantisation, VVC's
deblocking and coarse transform coefficients), so recognition degrades with the rate.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["PATTERNS", "pattern", "smoothstep", "value_noise"]


def value_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] (float32, ``height`` x ``width``) with features about ``cell`` pixels wide."""
    gh = max(2, int(np.ceil(height / cell)) + 2)
    gw = max(2, int(np.ceil(width / cell)) + 2)
    grid = rng.random((gh, gw), dtype=np.float32)
    big = cv2.resize(grid, (int(round(gw * cell)), int(round(gh * cell))), interpolation=cv2.INTER_CUBIC)
    oy = int(cell // 2)
    ox = int(cell // 2)
    out = big[oy : oy + height, ox : ox + width]
    return np.clip(out, 0.0, 1.0)


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _soft_square_wave(phase: np.ndarray, duty: float = 0.5, edge: float = 0.12) -> np.ndarray:
    """A square wave of period 1 in ``phase`` with slightly softened edges (anti-aliased), in [0, 1]."""
    f = phase - np.floor(phase)
    return smoothstep(0.0, edge, f) * (1.0 - smoothstep(duty, duty + edge, f))


def _rings(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    r = np.sqrt(u * u + v * v)
    return 0.5 + 0.5 * np.cos(2.0 * np.pi * r / period)


def _dots(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    fu = (u / period) - np.floor(u / period) - 0.5
    fv = (v / period) - np.floor(v / period) - 0.5
    d = np.sqrt(fu * fu + fv * fv) * period  # distance to the cell centre, pixels
    radius = 0.3 * period
    return 1.0 - smoothstep(radius - 0.6, radius + 0.6, d)


def _checker(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    a = _soft_square_wave(u / period) * 2.0 - 1.0
    b = _soft_square_wave(v / period) * 2.0 - 1.0
    return 0.5 + 0.5 * a * b


def _stripes(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    return _soft_square_wave(u / period)


def _hatch(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    a = _soft_square_wave((u + v) / (period * 1.41421356), duty=0.3)
    b = _soft_square_wave((u - v) / (period * 1.41421356), duty=0.3)
    return np.maximum(a, b)


def _speckle(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    cell = max(1.5, period / 2.5)
    n = 64
    table = rng.random((n, n), dtype=np.float32)
    iu = np.floor(u / cell).astype(np.int64) % n
    iv = np.floor(v / cell).astype(np.int64) % n
    return (table[iv, iu] > 0.5).astype(np.float32)


def _zigzag(u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    tooth = 2.0 * period
    f = u / tooth - np.floor(u / tooth)
    return _soft_square_wave((v + np.abs(f - 0.5) * tooth) / period)


#: name -> pattern function ``(u, v, period, rng) -> values in [0, 1]`` on object-local pixel coordinates
PATTERNS = {
    "rings": _rings,
    "dots": _dots,
    "checker": _checker,
    "stripes": _stripes,
    "hatch": _hatch,
    "speckle": _speckle,
    "zigzag": _zigzag,
}


def pattern(name: str, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Evaluate pattern ``name`` on local coordinates ``u``, ``v`` (pixels), float32 in [0, 1]."""
    return PATTERNS[name](u, v, period, rng).astype(np.float32)
