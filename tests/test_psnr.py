"""PSNR (peak 255) of images and clips: the 8-bit fast path gives the float64 formula's numbers bit for bit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vcmbench.media.clip import frame_psnrs, mean_squared_error, psnr


def formula(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook mean squared error, in float64 (what ``psnr`` computed before its 8-bit path)."""
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (120, 160, 3), (480, 640, 3), (1080, 1920, 3), (33, 17)])
def test_the_8_bit_mean_squared_error_is_the_float64_formulas_bit_for_bit(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    for spread in (1, 9, 255):  # slight, JPEG-like and arbitrary differences
        b = np.clip(a.astype(np.int64) + rng.integers(-spread, spread + 1, shape), 0, 255).astype(np.uint8)
        assert mean_squared_error(a, b) == formula(a, b)
        assert psnr(a, b) == (math.inf if formula(a, b) == 0 else 10 * math.log10(255**2 / formula(a, b)))


def test_extreme_differences_and_other_dtypes() -> None:
    black, white = np.zeros((2160, 3840, 3), np.uint8), np.full((2160, 3840, 3), 255, np.uint8)
    assert mean_squared_error(black, white) == 255.0**2 == formula(black, white)  # the largest sum of squares
    assert psnr(black, white) == 0.0 and psnr(white, white) == math.inf
    ones = np.ones((4, 4, 3), np.uint8)
    assert psnr(ones, ones * 2) == 10 * math.log10(255**2)  # every difference 1: mse 1
    rng = np.random.default_rng(0)
    for dtype in (np.uint16, np.float32, np.float64):  # the general path
        a = rng.integers(0, 1023, (9, 11, 3)).astype(dtype)
        b = rng.integers(0, 1023, (9, 11, 3)).astype(dtype)
        assert mean_squared_error(a, b) == formula(a, b)
    mixed = rng.integers(0, 256, (9, 11, 3)).astype(np.float32)
    assert mean_squared_error(ones[:1, :1], mixed[:1, :1]) == formula(ones[:1, :1], mixed[:1, :1])


def test_images_of_different_shapes_are_refused_not_broadcast() -> None:
    a = np.zeros((120, 160, 3), np.uint8)
    for other in (np.zeros((1, 160, 3), np.uint8), np.zeros((160, 120, 3), np.uint8)):
        with pytest.raises(ValueError, match="differ in shape"):
            psnr(a, other)
    with pytest.raises(ValueError, match="empty"):
        mean_squared_error(np.zeros((0, 3), np.uint8), np.zeros((0, 3), np.uint8))


def test_frame_psnrs_are_each_frames_psnr() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    b = a.copy()
    b[1:] ^= rng.integers(0, 4, b[1:].shape, dtype=np.uint8)  # frame 0 identical
    per = frame_psnrs(a, b)
    assert per[0] == math.inf
    mse = np.array([formula(a[i], b[i]) for i in range(1, 5)])
    assert list(per[1:]) == list(10.0 * np.log10(255.0**2 / mse))  # numpy's log10 over the frames, as before
