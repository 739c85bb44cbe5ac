"""Learned codecs: TCM architecture, real bitstreams vs the model's forward pass, cards and rate points."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vcmbench.adapters import build
from vcmbench.cards import CardSet, load_card
from vcmbench.cli import main
from vcmbench.codecs.learned import (
    LearnedCodec,
    SAICMCodec,
    pack_bitstream,
    parse_rate_points,
    unpack_bitstream,
)
from vcmbench.errors import CodecError, QualityError, WeightsError
from vcmbench.models.lic import build_model, count_parameters, load_checkpoint, pad_multiple, save_checkpoint
from vcmbench.models.tcm import TCM
from vcmbench.run import RunConfig, run


def natural_image(h: int = 192, w: int = 256) -> np.ndarray:
    """A crop of scikit-image's bundled astronaut photograph (no download)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40 : 40 + h, 150 : 150 + w])


def tiny_checkpoint(path: Path, loss: str = "lic", lmbda: float = 0.01, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model("mbt2018-mean", N=16, M=24)
    return save_checkpoint(model, path, "mbt2018-mean", {"N": 16, "M": 24}, {"loss": loss, "lambda": lmbda})


def codec_for(path: Path, cls: type[LearnedCodec] = LearnedCodec, **point: object) -> LearnedCodec:
    spec = {"checkpoint": str(path), **point}
    return cls("mbt2018-mean", {1: spec}, arch_kwargs={"N": 16, "M": 24}, device="cpu")


# ---- TCM -------------------------------------------------------------------------------------------
#: sha256 of the sorted "name:shape" lines of TCM(N=64)'s state dict. Identical to the layout of the public
#: implementation (jmliu206/LIC_TCM@6c6d7a3, models/tcm.py), checked once by instantiating both side by side:
#: same keys and shapes, and bit-identical forward outputs and bitstreams with the same weights.
TCM_LAYOUT_SHA256 = "4f09f7d80a636e0f1eb929efac712f57a68085e07b0268af6ef1220cda7dfa12"


def test_tcm_parameter_counts_match_the_paper() -> None:
    """Liu et al. (CVPR 2023) report about 45M / 59M / 77M parameters for N = 64 / 96 / 128."""
    counts = {n: count_parameters(TCM(N=n)) for n in (64, 96, 128)}
    assert counts == {64: 45_180_752, 96: 59_133_650, 128: 76_568_148}
    for n, published in ((64, 45e6), (96, 59e6), (128, 77e6)):
        assert abs(counts[n] - published) / published < 0.01


def test_tcm_state_dict_layout_matches_the_public_checkpoints() -> None:
    state = TCM(N=64).state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sorted(state.items()))
    assert hashlib.sha256(lines.encode()).hexdigest() == TCM_LAYOUT_SHA256


def _tcm_roundtrip(model: TCM, x: torch.Tensor) -> None:
    model.eval().update(force=True)
    with torch.no_grad():
        ref = model(x)["x_hat"].clamp(0, 1)
        enc = model.compress(x)
        dec = model.decompress(enc["strings"], enc["shape"])["x_hat"]
    assert torch.equal(dec, ref)


def test_tcm_decompress_equals_quantized_forward() -> None:
    """A narrow TCM (N=32, M=160), random weights: decoding is bit-identical to the eval forward pass."""
    torch.manual_seed(0)
    model = TCM(N=32, M=160)
    _tcm_roundtrip(model, torch.rand(1, 3, 128, 128))
    assert pad_multiple(model) == 128
    # window attention pads internally: a size that is not a multiple of the windows still runs
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 128))["x_hat"]
    assert out.shape == (1, 3, 64, 128)


@pytest.mark.slow
def test_tcm_small_decompress_equals_quantized_forward() -> None:
    """The published TCM-S (N=64), random weights, 128x192 input: bit-identical decode (about a minute on CPU)."""
    torch.manual_seed(0)
    _tcm_roundtrip(TCM(N=64), torch.rand(1, 3, 128, 192))


# ---- bitstreams ------------------------------------------------------------------------------------
def test_header_roundtrip_and_corruption() -> None:
    strings = [[b"\x01" * 300], [b"\x02" * 5]]
    data = pack_bitstream(3, 480, 640, (2, 3), strings)
    u = unpack_bitstream(data)
    assert (u.position, u.height, u.width, u.shape, u.strings) == (3, 480, 640, (2, 3), strings)
    assert len(data) == u.header_bytes + 305 and u.header_bytes <= 16
    with pytest.raises(CodecError, match="truncated"):
        unpack_bitstream(data[:-1])
    with pytest.raises(CodecError, match="unexpected bytes"):
        unpack_bitstream(data + b"\x00")
    with pytest.raises(CodecError, match="format"):
        unpack_bitstream(b"\x07" + data[1:])


def test_codec_bitstream_decodes_to_the_quantized_forward_output(tmp_path: Path) -> None:
    codec = codec_for(tiny_checkpoint(tmp_path / "q1.pt"))
    image = natural_image(150, 201)  # not a multiple of the stride: padded, then cropped back
    bs = codec.encode(image, 1)
    assert (bs.width, bs.height) == (201, 150)
    decoded = codec.decode(bs)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    est = codec.estimate(image, 1)
    assert np.array_equal(decoded, est["image"])  # bit-exact: same quantized latents, same synthesis
    u = unpack_bitstream(bs.data)
    assert len(bs.data) == u.header_bytes + sum(len(s) for g in u.strings for s in g)


def test_trained_checkpoint_rate_matches_the_likelihood_estimate() -> None:
    """Real bytes (header included) within 3 % of the entropy model's estimate, on trained weights."""
    codec = build(CardSet().get("codec", "saicm"))
    from skimage import data

    for image in (data.astronaut(), data.coffee()):
        for q in codec.keys:
            bs = codec.encode(image, q)
            est = codec.estimate(image, q)
            real = 8 * len(bs.data) / (image.shape[0] * image.shape[1])
            assert abs(real - est["bpp"]) / est["bpp"] < 0.03, (q, real, est["bpp"])
            assert np.array_equal(codec.decode(bs), est["image"])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0**2 / mse)


def test_trained_codec_reconstructs_each_colour_channel_of_an_unseen_image() -> None:
    """The shipped ``lic`` checkpoints (trained on COCO train2017 images) on a photograph they never saw (scikit-image's coffee
    cup: red, white and blue-grey): the decoded red and blue channels match the input's own red and blue far
    better than each other's, and the image is far closer to its input than the input is to itself with red
    and blue swapped. A codec fed BGR instead of RGB returns the channels swapped (measured: 26 dB -> 6 dB)."""
    from skimage import data

    codec = build(CardSet().get("codec", "lic"))
    image = np.ascontiguousarray(data.coffee()[100:292, 100:356])
    for q in codec.keys:
        decoded = codec.decode(codec.encode(image, q))
        for own, other in ((0, 2), (2, 0)):
            assert _psnr(decoded[..., own], image[..., own]) > _psnr(decoded[..., own], image[..., other]) + 10.0
        assert _psnr(decoded, image) > _psnr(image[..., ::-1], image) + 10.0


# ---- cards, rate points, identity -------------------------------------------------------------------
def test_builtin_learned_cards_validate() -> None:
    cards = CardSet()
    for name in ("lic", "objicm", "saicm", "tlicm"):
        card = cards.get("codec", name)
        codec = build(card)
        assert isinstance(codec, LearnedCodec) and codec.expected_loss == name
        assert [codec.validate_quality(q) for q in card.qualities] == list(card.qualities)
        assert len(codec.identity()) == 16  # resolves and hashes every checkpoint


def test_rate_point_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_checkpoint(tmp_path / "a.pt")
    codec = codec_for(path)
    with pytest.raises(QualityError, match="rate point 2 has no checkpoint; this card defines 1"):
        codec.validate_quality(2)
    with pytest.raises(CodecError, match="no sha256"):
        parse_rate_points({1: {"url": "https://example.org/a.pt"}}, "codec x")
    with pytest.raises(CodecError, match="needs checkpoint"):
        parse_rate_points({1: {"lambda": 0.1}}, "codec x")
    with pytest.raises(CodecError, match="unknown key"):
        parse_rate_points({1: {"checkpoint": "a.pt", "quality": 3}}, "codec x")
    with pytest.raises(CodecError, match="not 64 hex"):
        parse_rate_points({1: {"checkpoint": "a.pt", "sha256": "abc"}}, "codec x")
    with pytest.raises(WeightsError, match="not found"):
        codec_for(tmp_path / "missing.pt").identity()
    with pytest.raises(WeightsError, match="fails its checksum"):
        codec_for(path, sha256="0" * 64).identity()
    # a card whose ladder names a rate point it does not define: `vcmbench validate` reports it, and a run
    # with that ladder stops before any work (a run may override rate_points and --quality together)
    card = tmp_path / "codecs" / "mine.yaml"
    card.parent.mkdir()
    card.write_text(f"adapter: lic\nversion: 1\nqualities: [1, 5]\nsettings:\n  arch: mbt2018-mean\n"
                    f"  arch_kwargs: {{N: 16, M: 24}}\n  rate_points:\n    1: {{checkpoint: {path}}}\n")  # fmt: skip
    assert main(["validate", "--cards", str(tmp_path)]) == 1
    assert re.search(r"ERROR codec +mine .*rate point 5", capsys.readouterr().out)
    with pytest.raises(QualityError, match="rate point 5"):
        run(RunConfig(codecs=["mine"], tasks=["synth_det"], datasets=["synth"], cards_dirs=[str(tmp_path)],
                      out=str(tmp_path / "o"), progress=False, limit=1))  # fmt: skip
    assert not (tmp_path / "o" / "bitstreams").exists()


def test_checkpoint_must_match_card_objective_lambda_and_arch(tmp_path: Path) -> None:
    path = tiny_checkpoint(tmp_path / "lic.pt", loss="lic", lmbda=0.01)
    image = natural_image(64, 64)
    with pytest.raises(CodecError, match="trained with the 'lic' objective"):
        codec_for(path, SAICMCodec).encode(image, 1)
    with pytest.raises(CodecError, match="lambda 0.05 but checkpoint"):
        codec_for(path, **{"lambda": 0.05}).encode(image, 1)
    wrong = LearnedCodec("mbt2018-mean", {1: {"checkpoint": str(path)}}, arch_kwargs={"N": 32, "M": 24})
    with pytest.raises(CodecError, match="arch settings differ"):
        wrong.encode(image, 1)
    other = LearnedCodec("cheng2020-attn", {1: {"checkpoint": str(path)}})
    with pytest.raises(CodecError, match="holds a 'mbt2018-mean' model"):
        other.encode(image, 1)


def test_identity_follows_checkpoint_content(tmp_path: Path) -> None:
    a = tiny_checkpoint(tmp_path / "a.pt", seed=0)
    first = codec_for(a).identity()
    assert codec_for(a).identity() == first
    moved = tmp_path / "elsewhere" / "b.pt"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    assert codec_for(moved).identity() == first  # where the file lives is not part of the identity
    tiny_checkpoint(tmp_path / "c.pt", seed=1)
    assert codec_for(tmp_path / "c.pt").identity() != first


def test_float16_checkpoint_is_the_model_the_codec_runs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24)
    path = save_checkpoint(model, tmp_path / "h.pt", "mbt2018-mean", {"N": 16, "M": 24}, {}, dtype="float16")
    blob = torch.load(path, weights_only=True)
    assert blob["state_dict"]["g_a.0.weight"].dtype == torch.float16
    loaded = load_checkpoint(path).model
    for (k, p), (_, q) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(p.float(), q.float()), k
    codec = codec_for(path)
    image = natural_image(64, 128)
    assert np.array_equal(codec.decode(codec.encode(image, 1)), codec.estimate(image, 1)["image"])


# ---- through the runner ----------------------------------------------------------------------------
def test_learned_codecs_through_the_runner(coco_mini: Path, yolov5n_weights: Path, tmp_path: Path) -> None:
    """saicm and objicm, real bitstreams, two coco-mini images, YOLOv5n: rate = bytes in the store; resumable."""
    from tests.helpers import config, small_coco
    from vcmbench.run import run
    from vcmbench.store import Store

    coco = tmp_path / "coco"
    small_coco(coco_mini, coco, 2)
    cfg = config(tmp_path / "out", coco, yolov5n_weights, codecs=["saicm", "objicm"], qualities={"saicm": [1],
                 "objicm": [1]})  # fmt: skip
    first = run(cfg)
    assert first.ok, first.failures
    assert first.work["encodes"] == 4 and first.work["inferences"] == 6
    rows = {(r["codec"], r["metric"]): r for r in first.rows}
    store = Store(tmp_path / "out")
    try:
        for codec in ("saicm", "objicm"):
            r = rows[(codec, "map")]
            recs = store.conn.execute("SELECT nbytes, width, height, blob FROM encodes WHERE codec=?", (codec,))
            recs = recs.fetchall()
            assert len(recs) == 2
            for nbytes, _, _, blob in recs:
                data = store.get_blob(blob)
                assert len(data) == nbytes and unpack_bitstream(data).header_bytes < 20
            assert r["bpp"] == pytest.approx(8 * sum(x[0] for x in recs) / sum(x[1] * x[2] for x in recs))
            assert 0.01 < r["bpp"] < 2 and 0 <= r["value"] <= 1 and r["psnr"] > 15
    finally:
        store.close()
    again = run(cfg)
    assert again.work == {"encodes": 0, "decodes": 0, "inferences": 0, "evaluations": 0}


def test_zoo_architecture_with_random_weights_from_a_card(tmp_path: Path) -> None:
    """A card may select any CompressAI zoo architecture; random_seed gives untrained weights (pipeline checks)."""
    card = tmp_path / "codecs" / "attn.yaml"
    card.parent.mkdir()
    card.write_text("adapter: lic\nversion: 1\nqualities: [1]\nsettings:\n  arch: cheng2020-attn\n"
                    "  arch_kwargs: {N: 32}\n  rate_points:\n    1: {random_seed: 3}\n")  # fmt: skip
    codec = build(load_card(card, "codec"))
    image = natural_image(64, 96)
    bs = codec.encode(image, 1)
    decoded = codec.decode(bs)
    assert decoded.shape == image.shape and np.array_equal(codec.decode(bs), decoded)
    assert codec.identity() == build(load_card(card, "codec")).identity()
    with pytest.raises(CodecError, match="excludes checkpoint"):
        parse_rate_points({1: {"random_seed": 1, "checkpoint": "a.pt"}}, "codec x")
