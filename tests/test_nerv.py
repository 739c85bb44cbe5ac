"""NeRV / SA-NeRV: architecture vs the paper, layouts, training, pruning, quantization, bitstreams, codec contract."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vcmbench.adapters import adapter_class, build
from vcmbench.cards import load_card
from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.nerv import NeRVCodec, SANeRVCodec, parse_rate_points
from vcmbench.codecs.nerv_pipeline import (
    MAGIC,
    TrainSettings,
    build_quantized_model,
    encode_clip,
    fit,
    lr_at,
    nerv_loss,
    parse_bitstream,
    parse_header,
    prune_global,
    quantize_tensor,
    quantized_frequencies,
    rans_decode,
    rans_encode,
    sanerv_loss,
    torch_threads,
)
from vcmbench.errors import CodecError, QualityError
from vcmbench.media.clip import Clip
from vcmbench.models.nerv import (
    NeRV,
    NeRVConfig,
    count_parameters,
    derive_layout,
    frame_times,
    model_config,
    positional_encoding,
    prunable_weights,
)

ROOT = Path(__file__).resolve().parent.parent
#: tiny models and few epochs: every encode below takes well under a second on one core
TINY = {"size": "S", "width": 0.125, "prune": 0.4, "bits": 8}
FAST = {"epochs": 4, "finetune_epochs": 2, "device": "cpu", "threads": 1}
#: Felzenszwalb settings that find segments in 36x48 frames
SMALL_EDGES = {"fz_scale": 40.0, "fz_min_size": 20, "dilate": 3}


def moving_shapes(frames: int = 8, height: int = 36, width: int = 48, seed: int = 0) -> np.ndarray:
    """A clip with real structure: a smooth moving background, a disc and a box moving across, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        img = np.empty((height, width, 3))
        img[..., 0] = 90 + 60 * np.sin(xx / 7.0 + t / 3.0)
        img[..., 1] = 110 + 50 * np.cos(yy / 5.0)
        img[..., 2] = 120 + 40 * np.sin((xx + yy) / 11.0 - t / 4.0)
        cx, cy = 0.2 * width + 3 * t, 0.3 * height + t
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.15 * height) ** 2] = (250, 40, 30)
        img[(np.abs(xx - 0.8 * width + 2 * t) < 5) & (np.abs(yy - 0.7 * height) < 4)] = (20, 220, 60)
        out[t] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return out


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def clip() -> Clip:
    return Clip(moving_shapes(), fps=25.0)


@pytest.fixture(scope="module")
def nerv_codec() -> NeRVCodec:
    return NeRVCodec([TINY, {**TINY, "prune": 0.0, "bits": 6}], **FAST)


@pytest.fixture(scope="module")
def encoded(nerv_codec: NeRVCodec, clip: Clip):
    return nerv_codec.encode_result(clip, 1)


# ---- architecture ------------------------------------------------------------------------------------
def _count(cfg: NeRVConfig) -> int:
    with torch.device("meta"):
        return count_parameters(NeRV(cfg))


def test_sizes_match_the_published_parameter_counts() -> None:
    """Chen et al. (NeurIPS 2021), Big Buck Bunny 1280x720: NeRV-S / M / L have 3.2M / 6.3M / 12.5M parameters."""
    layout = derive_layout(720, 1280)
    assert (layout.fc_h, layout.fc_w, layout.strides, layout.pad_bottom, layout.pad_right) == (9, 16, (5, 2, 2, 2, 2), 0, 0)
    counts = {s: _count(model_config(layout, s)) for s in "SML"}
    assert counts == {"S": 3_201_905, "M": 6_282_001, "L": 12_524_563}
    for s, published in (("S", 3.2e6), ("M", 6.3e6), ("L", 12.5e6)):
        assert abs(counts[s] - published) / published < 0.05
    cfg = model_config(layout, "S")
    assert (cfg.fc_dim, cfg.stem_dim, cfg.lower_width, cfg.embed_dim) == (26, 512, 96, 80)
    assert cfg.channels() == [26, 96, 96, 96, 96]
    assert model_config(layout, "L").channels() == [112, 96, 96, 96, 96]
    assert model_config(layout, "S", 0.25).channels() == [6, 24, 24, 24, 24]
    assert model_config(layout, "S", 0.25, fc_dim=10).fc_dim == 10


def test_forward_shape_range_and_positional_encoding() -> None:
    pe = positional_encoding(torch.tensor([0.0, 0.5]), 1.25, 40)
    assert pe.shape == (2, 80)
    assert torch.allclose(pe[0, 0::2], torch.zeros(40)) and torch.allclose(pe[0, 1::2], torch.ones(40))
    assert math.isclose(float(pe[1, 2]), math.sin(1.25 * math.pi * 0.5), abs_tol=1e-6)
    assert math.isclose(float(pe[1, 3]), math.cos(1.25 * math.pi * 0.5), abs_tol=1e-6)
    assert torch.equal(frame_times(4), torch.tensor([0.0, 0.25, 0.5, 0.75]))
    model = NeRV(model_config(derive_layout(36, 48), "S", 0.125))
    with torch.no_grad():
        y = model(frame_times(3))
    assert y.shape == (3, 3, 36, 48) and float(y.min()) >= 0 and float(y.max()) <= 1


@pytest.mark.parametrize(
    ("hw", "fc", "strides", "pad"),
    [
        ((720, 1280), (9, 16), (5, 2, 2, 2, 2), (0, 0)),
        ((1080, 1920), (9, 16), (5, 3, 2, 2, 2), (0, 0)),
        ((240, 320), (3, 4), (5, 2, 2, 2, 2), (0, 0)),
        ((144, 176), (9, 11), (2, 2, 2, 2), (0, 0)),
        ((272, 640), (7, 16), (5, 2, 2, 2), (8, 0)),
        ((241, 321), (3, 4), (3, 3, 3, 3), (2, 3)),
        ((34, 50), (7, 10), (5,), (1, 0)),
    ],
)
def test_layouts(hw: tuple[int, int], fc: tuple[int, int], strides: tuple[int, ...], pad: tuple[int, int]) -> None:
    lay = derive_layout(*hw)
    assert ((lay.fc_h, lay.fc_w), lay.strides, (lay.pad_bottom, lay.pad_right)) == (fc, strides, pad)
    assert lay.fc_h * lay.upsampling == lay.padded_height and lay.fc_w * lay.upsampling == lay.padded_width
    assert lay.fc_h * lay.fc_w <= 256 and len(lay.strides) <= 5


# ---- training ---------------------------------------------------------------------------------------
def test_lr_schedule_is_upstreams_cosine_with_warmup() -> None:
    assert lr_at(0, 10, 2, 1.0) == pytest.approx(0.1)
    assert lr_at(1, 10, 2, 1.0) == pytest.approx(0.55)
    assert lr_at(2, 10, 2, 1.0) == pytest.approx(1.0)
    assert lr_at(6, 10, 2, 1.0) == pytest.approx(0.5)
    assert lr_at(10, 10, 2, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(0, 10, 0, 1.0) == pytest.approx(1.0)


def test_loss_falls_over_training(clip: Clip) -> None:
    torch.manual_seed(0)
    model = NeRV(model_config(derive_layout(clip.height, clip.width), "S", 0.125))
    frames = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).contiguous()
    settings = TrainSettings(epochs=10, lr=2e-3)
    logs = fit(model, frames, epochs=10, settings=settings, warmup=0.2, seed=0)
    assert len(logs) == 10
    assert logs[-1].loss < 0.8 * logs[0].loss
    assert logs[-1].psnr > logs[0].psnr


def test_pruning_is_global_and_exact() -> None:
    torch.manual_seed(0)
    model = NeRV(model_config(derive_layout(36, 48), "S", 0.25))
    weights = prunable_weights(model)
    n = sum(w.numel() for w in weights.values())
    smallest = torch.cat([w.detach().abs().flatten() for w in weights.values()]).sort().values
    keep = prune_global(model, 0.37)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    dropped = sum(int((~m).sum()) for m in keep.values())
    assert dropped == zeros == round(0.37 * n)
    kept_min = min(float(w.detach()[m].abs().min()) for w, m in zip(weights.values(), keep.values(), strict=True))
    assert kept_min >= float(smallest[round(0.37 * n) - 1])
    assert set(keep) == set(weights) and all(name.endswith("weight") for name in keep)
    assert all(bool(m.all()) for m in prune_global(NeRV(model.cfg), 0.0).values())
    with pytest.raises(ValueError):
        prune_global(model, 1.0)


def test_quantization_is_per_channel_and_codes_pruned_weights() -> None:
    w = torch.randn(4, 3, 3, 3)
    w[1] *= 100
    keep = torch.rand(w.shape) > 0.3
    qt = quantize_tensor("x.weight", w * keep, keep, 8)
    assert qt.channels == 4 and qt.mins.dtype == np.float16
    sym = qt.symbols.reshape(4, -1)
    assert ((sym == 256) == ~keep.reshape(4, -1).numpy()).all()
    from vcmbench.codecs.nerv_pipeline import dequantize

    deq = dequantize(qt, 8)
    assert bool((deq[~keep] == 0).all())
    err = (deq - w)[keep].reshape(-1).abs()
    step = torch.from_numpy(qt.scales.astype(np.float32))[:, None, None, None].expand_as(w)[keep]
    assert bool((err <= 0.51 * step + 1e-6).all())
    bias = quantize_tensor("x.bias", torch.randn(7), None, 8)
    assert bias.channels == 1 and bias.symbols.max() <= 255


def test_rans_round_trip_and_frequencies() -> None:
    rng = np.random.default_rng(0)
    sym = np.clip(np.rint(rng.laplace(128, 9, 50_000)), 0, 255).astype(np.int64)
    sym[rng.random(sym.size) < 0.4] = 256
    counts = np.bincount(sym, minlength=257)
    freq = quantized_frequencies(counts)
    assert int(freq.sum()) == 65535 and ((freq > 0) == (counts > 0)).all()
    data = rans_encode(sym, freq)
    assert np.array_equal(rans_decode(data, freq, sym.size), sym)
    p = counts[counts > 0] / sym.size
    assert len(data) < 1.01 * float(-(p * np.log2(p)).sum()) * sym.size / 8 + 64  # within 1 % of the entropy
    one = np.full(1000, 7, dtype=np.int64)
    f1 = quantized_frequencies(np.bincount(one, minlength=257))
    assert np.array_equal(rans_decode(rans_encode(one, f1), f1, 1000), one)


# ---- the codec ------------------------------------------------------------------------------------
def test_decode_is_bit_exact_with_the_encoders_reconstruction(nerv_codec: NeRVCodec, clip: Clip, encoded) -> None:
    bs = Bitstream(encoded.data, clip.width, clip.height, clip.num_frames)
    out = nerv_codec.decode(bs)
    assert isinstance(out, Clip) and out.fps == clip.fps
    assert out.frames.shape == clip.frames.shape and out.frames.dtype == np.uint8
    assert np.array_equal(out.frames, encoded.frames)  # bit-exact, not a tolerance
    assert bs.bpp == 8 * len(encoded.data) / (clip.num_frames * clip.height * clip.width)
    assert [e.stage for e in encoded.history] == ["train"] * 4 + ["finetune"] * 2


def test_encode_returns_the_bitstream_the_runner_stores(nerv_codec: NeRVCodec, clip: Clip, encoded) -> None:
    bs = nerv_codec.encode(clip, 1)
    assert bs.data == encoded.data  # seeded: a second encode gives identical bytes
    assert (bs.width, bs.height, bs.frames) == (48, 36, 8)
    assert bs.bpp == 8 * len(bs.data) / (8 * 36 * 48)
    assert bs.meta["rate_point"] == 1 and bs.meta["pruned"] == encoded.stats["pruned"]


def test_pruned_weights_are_zero_after_decoding(encoded) -> None:
    header, tensors = parse_bitstream(encoded.data)
    model = build_quantized_model(header.config, tensors, header.bits)
    weights = prunable_weights(model)
    n = sum(w.numel() for w in weights.values())
    pruned = 0
    for qt in tensors:
        sym = qt.symbols.reshape(qt.shape)
        if qt.name in weights:
            marked = torch.from_numpy(sym == (1 << header.bits))
            assert bool((weights[qt.name][marked] == 0).all())
            pruned += int(marked.sum())
        else:
            assert not (sym == (1 << header.bits)).any()  # biases are never pruned
    assert pruned == round(0.4 * n) == encoded.stats["pruned"]


def test_header_round_trip(clip: Clip, encoded) -> None:
    h = parse_header(encoded.data)
    assert encoded.data[:4] == MAGIC and h == encoded.header
    assert (h.frames, h.layout.height, h.layout.width, h.fps, h.bits) == (8, 36, 48, 25.0, 8)
    assert h.config == model_config(derive_layout(36, 48), "S", 0.125)
    assert h.variant == 0


def test_padding_is_cropped_and_fps_kept() -> None:
    frames = moving_shapes(frames=3, height=34, width=50, seed=1)
    res = encode_clip(frames, 29.97, {"size": "S", "width": 0.125}, prune=0.0, bits=8,
                      train=TrainSettings(epochs=1))  # fmt: skip
    h = parse_header(res.data)
    assert (h.layout.pad_bottom, h.layout.pad_right) == (1, 0) and h.fps == 29.97
    codec = NeRVCodec([TINY], **FAST)
    out = codec.decode(Bitstream(res.data, 50, 34, 3))
    assert out.frames.shape == (3, 34, 50, 3) and np.array_equal(out.frames, res.frames)


@pytest.mark.parametrize("how", ["truncated", "flipped", "magic", "empty", "tail"])
def test_corrupt_bitstreams_are_clear_errors(nerv_codec: NeRVCodec, clip: Clip, encoded, how: str) -> None:
    data = bytearray(encoded.data)
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":
        data[len(data) // 2] ^= 0x10
    elif how == "magic":
        data[:4] = b"JUNK"
    elif how == "empty":
        data = bytearray()
    else:
        data += b"\0"
    with pytest.raises(CodecError, match="nerv: "):
        nerv_codec.decode(Bitstream(bytes(data), clip.width, clip.height, clip.num_frames))


def test_images_are_refused(nerv_codec: NeRVCodec, clip: Clip) -> None:
    with pytest.raises(CodecError, match="codes clips"):
        nerv_codec.encode(clip.frames[0], 1)
    with pytest.raises(QualityError, match="rate point 3 does not exist"):
        nerv_codec.encode(clip, 3)


def test_seeded_determinism_and_identity(clip: Clip, encoded) -> None:
    again = NeRVCodec([TINY, {**TINY, "prune": 0.0, "bits": 6}], **FAST)
    assert again.encode_result(clip, 1).data == encoded.data
    other = NeRVCodec([TINY, {**TINY, "prune": 0.0, "bits": 6}], **{**FAST, "seed": 1})
    assert other.identity() != again.identity()
    assert other.encode_result(clip, 1).data != encoded.data
    more = NeRVCodec([TINY, {**TINY, "prune": 0.0, "bits": 6}], **{**FAST, "epochs": 5})
    assert len({again.identity(), more.identity(), NeRVCodec([TINY], **FAST).identity()}) == 3


def test_rate_points_trade_bytes(nerv_codec: NeRVCodec, clip: Clip, encoded) -> None:
    unpruned = nerv_codec.encode_result(clip, 2)  # no pruning, 6 bits
    assert parse_header(unpruned.data).bits == 6 and unpruned.stats["pruned"] == 0
    assert unpruned.stats["parameters"] == encoded.stats["parameters"]
    # every parameter coded with a 6-bit symbol, none of them the pruned-weight marker (64 at 6 bits)
    header, tensors = parse_bitstream(unpruned.data)
    symbols = np.concatenate([qt.symbols.ravel() for qt in tensors])
    assert header.bits == 6 and symbols.size == unpruned.stats["parameters"] and int(symbols.max()) < 64


def test_rate_point_validation() -> None:
    pts = parse_rate_points([{"size": "m", "prune": 0.4}, {"fc_dim": 8, "lower_width": 8, "stem_dim": 16}], "t")
    assert pts[1].size == "M" and pts[1].bits == 8 and pts[2].arch()["fc_dim"] == 8
    for bad, msg in [({"size": "XL"}, "size"), ({"prune": 1.0}, "prune"), ({"bits": 0}, "bits"),
                     ({"bits": 16}, "bits"), ({"depth": 3}, "unknown key"), ({"width": 0}, "width")]:  # fmt: skip
        with pytest.raises(CodecError, match=msg):
            parse_rate_points([bad], "t")
    with pytest.raises(CodecError, match="non-empty"):
        parse_rate_points([], "t")


# ---- SA-NeRV ---------------------------------------------------------------------------------------
def test_sanerv_uses_edge_masks(clip: Clip, encoded) -> None:
    sa = SANeRVCodec([TINY], **FAST, **SMALL_EDGES)
    masks = sa.masks(clip)
    assert masks.shape == (8, 36, 48) and masks.dtype == np.uint8
    assert 0.02 < float((masks > 0).mean()) < 0.9
    pred = torch.rand(2, 3, 36, 48, generator=torch.Generator().manual_seed(0))
    target = torch.from_numpy(clip.frames[:2]).permute(0, 3, 1, 2).float() / 255
    m = torch.from_numpy(masks[:2] > 0).float()[:, None]
    assert float(sanerv_loss(pred, target, m)) > float(nerv_loss(pred, target)) + 1e-4
    res = sa.encode_result(clip, 1)
    assert res.data != encoded.data and parse_header(res.data).variant == 1
    assert res.history[0].loss > encoded.history[0].loss  # the masked term adds to the loss
    assert np.array_equal(sa.decode(Bitstream(res.data, 48, 36, 8)).frames, res.frames)
    fields = sa.identity_fields()
    assert fields["masks"]["source"] == "felzenszwalb" and fields["masks"]["edges"]["dilate"] == 3
    ids = {sa.identity(), SANeRVCodec([TINY], **FAST).identity(), SANeRVCodec([TINY], **FAST, dilate=5).identity(),
           SANeRVCodec([TINY], **FAST, mask_weight=2.0).identity(), NeRVCodec([TINY], **FAST).identity()}  # fmt: skip
    assert len(ids) == 5


def test_sanerv_mask_settings_are_checked() -> None:
    with pytest.raises(CodecError, match="sam_checkpoint"):
        SANeRVCodec([TINY], mask_source="sam")
    with pytest.raises(CodecError, match="mask_source"):
        SANeRVCodec([TINY], mask_source="coco")
    with pytest.raises(TypeError, match="unexpected setting"):
        SANeRVCodec([TINY], canny_lo=3)
    with pytest.raises(CodecError, match="aperture"):
        SANeRVCodec([TINY], canny_aperture=4)


# ---- cards ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "cls"), [("nerv", NeRVCodec), ("sanerv", SANeRVCodec)])
def test_cards_build(name: str, cls: type) -> None:
    card = load_card(ROOT / "codecs" / f"{name}.yaml", "codec")
    assert card.adapter == name and adapter_class(card) is cls
    codec = build(card)
    assert type(codec) is cls and codec.name == name and codec.media == ("video",)
    assert list(card.qualities) == codec.keys
    assert codec.identity() == build(card).identity()
    paper = build(card.with_settings(rate_points=[{"size": s, "prune": 0.4, "bits": 8} for s in "SML"]))
    assert [p.size for p in paper.points.values()] == ["S", "M", "L"]
