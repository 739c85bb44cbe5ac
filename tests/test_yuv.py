"""The shared RGB <-> YUV 4:2:0 path."""

from __future__ import annotations

import numpy as np
import pytest

from vcmbench.media import yuv


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return float(10 * np.log10(255**2 / mse)) if mse else float("inf")


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(x / 9.0), 128 + 100 * np.cos(y / 7.0), 128 + 80 * np.sin((x + y) / 13.0)], -1)
    return np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(48, 64), (47, 63), (31, 64), (48, 33)])
@pytest.mark.parametrize("fmt", [yuv.YUVFormat(), yuv.YUVFormat("bt709", False, 10), yuv.YUVFormat("bt601", True, 8)])
def test_round_trip_keeps_size_and_quality(shape: tuple[int, int], fmt: yuv.YUVFormat) -> None:
    img = _smooth_image(*shape)
    data = yuv.rgb_to_yuv_bytes(img, fmt)
    assert len(data) == yuv.frame_bytes(shape[1], shape[0], fmt)
    back = yuv.yuv_bytes_to_rgb(data, shape[1], shape[0], fmt)
    assert back.shape == img.shape and back.dtype == np.uint8
    # smooth content loses little to 4:2:0; a wrong matrix or range would give < 20 dB
    assert _psnr(img, back) > 38


def test_padding_to_even_replicates_edges() -> None:
    img = _smooth_image(5, 7)
    y, cb, cr = yuv.rgb_to_yuv420(img)
    assert y.shape == (6, 8) and cb.shape == (3, 4) and cr.shape == (3, 4)
    assert np.array_equal(y[5, :7], y[4, :7]) and np.array_equal(y[:5, 7], y[:5, 6])


def test_grey_levels_map_to_full_range_luma_and_neutral_chroma() -> None:
    img = np.zeros((4, 4, 3), np.uint8)
    img[:2] = 255
    y, cb, cr = yuv.rgb_to_yuv420(img, yuv.YUVFormat())
    assert y[0, 0] == 1023 and y[3, 0] == 0
    assert np.all(cb == 512) and np.all(cr == 512)
    y, cb, _ = yuv.rgb_to_yuv420(img, yuv.YUVFormat(full_range=False))
    assert y[0, 0] == 940 and y[3, 0] == 64 and np.all(cb == 512)


def test_primary_colours_survive_exactly_on_flat_blocks() -> None:
    for colour in ([255, 0, 0], [0, 255, 0], [0, 0, 255], [12, 200, 99]):
        img = np.tile(np.array(colour, np.uint8), (8, 8, 1))
        back = yuv.yuv_bytes_to_rgb(yuv.rgb_to_yuv_bytes(img), 8, 8)
        assert np.abs(back.astype(int) - img).max() <= 1, colour


def test_bytes_layout_is_planar_little_endian() -> None:
    img = _smooth_image(4, 6)
    planes = yuv.rgb_to_yuv420(img)
    data = yuv.planes_to_bytes(planes)
    y = np.frombuffer(data[: 4 * 6 * 2], "<u2").reshape(4, 6)
    assert np.array_equal(y, planes[0])
    again = yuv.bytes_to_planes(data, 6, 4)
    for a, b in zip(planes, again, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="needs"):
        yuv.bytes_to_planes(data[:-2], 6, 4)


def test_rejects_non_rgb_input() -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        yuv.rgb_to_yuv420(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown colour matrix"):
        yuv.YUVFormat(matrix="bt2020x")
