"""Fast checks of the learned-codec adapter (vcmbench/codecs/learned.py) for the mutation lane: what enters a
codec's identity (the cache key of every encode), the training record a rate point reports, the model-cost
figures, the card-versus-checkpoint checks, where a checkpoint is looked for, padding, and the bitstream
header. Narrow mbt2018-mean models (N=16, M=24) keep each test well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vcmbench.codecs.learned import (
    IMPL_VERSION,
    LearnedCodec,
    LicCodec,
    ObjectICMCodec,
    SAICMCodec,
    TLICMCodec,
    pack_bitstream,
    parse_rate_points,
    to_image,
    unpack_bitstream,
)
from vcmbench.errors import CodecError, QualityError, WeightsError
from vcmbench.media.hashing import file_sha256, stable_hash
from vcmbench.models.complexity import codec_macs
from vcmbench.models.lic import SCALE_LEVELS, build_model, count_parameters, save_checkpoint

SMALL = {"N": 16, "M": 24}


def checkpoint(path: Path, **meta: Any) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("mbt2018-mean", **SMALL), path, "mbt2018-mean", SMALL, meta)


def seeded(cls: type[LearnedCodec] = LicCodec, points: dict | None = None, **kw: Any) -> LearnedCodec:
    kw.setdefault("device", "cpu")
    return cls("mbt2018-mean", points or {1: {"random_seed": 0, "lambda": 0.01}}, arch_kwargs=SMALL, **kw)


def picture(h: int = 40, w: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 6 % 256, (x + y) * 3 % 256], -1).astype(np.uint8)


# ---- identity: the encode cache key --------------------------------------------------------------
def test_identity_is_the_documented_composition_and_defaults_add_nothing() -> None:
    """Architecture, settings, each rate point's λ and weights, the implementation version: a change to this
    composition silently invalidates (or worse, keeps) every cached encode."""
    import compressai

    c = seeded()
    expected = stable_hash({
        "class": "LicCodec", "arch": "mbt2018-mean", "arch_kwargs": SMALL,
        "points": {"1": {"lambda": 0.01, "sha256": "random-seed-0"}},
        "version": f"learned-{IMPL_VERSION}/compressai-{compressai.__version__}/torch-{torch.__version__}/cpu",
    })  # fmt: skip
    assert c.identity() == expected
    assert seeded(pad_multiple=128).identity() != seeded(pad_multiple=192).identity()  # the value, not only its presence
    assert c.version().endswith("/cpu") and c.version().startswith(f"learned-{IMPL_VERSION}/compressai-")


@pytest.mark.parametrize("change", [
    {"points": {1: {"random_seed": 1, "lambda": 0.01}}},
    {"points": {1: {"random_seed": 0, "lambda": 0.02}}},
    {"points": {1: {"random_seed": 0, "lambda": 0.01, "arch_kwargs": {"M": 32}}}},
    {"points": {1: {"random_seed": 0, "lambda": 0.01}, 2: {"random_seed": 0, "lambda": 0.01}}},
    {"cls": ObjectICMCodec},
    {"scale_levels": 64},
    {"pad_multiple": 128},
    {"pad_mode": "centre-zeros"},
])  # fmt: skip
def test_every_setting_that_changes_the_bitstream_changes_the_identity(change: dict[str, Any]) -> None:
    assert seeded(**change).identity() != seeded().identity()


def test_identity_follows_the_checkpoint_file_content(tmp_path: Path) -> None:
    path = checkpoint(tmp_path / "a.pt", loss="lic", **{"lambda": 0.01})
    first = LicCodec("mbt2018-mean", {1: {"checkpoint": str(path)}}, arch_kwargs=SMALL, device="cpu")
    before = first.identity()
    assert first.checkpoint_sha256(1) == file_sha256(path)
    torch.manual_seed(5)
    save_checkpoint(build_model("mbt2018-mean", **SMALL), path, "mbt2018-mean", SMALL, {"loss": "lic"})
    again = LicCodec("mbt2018-mean", {1: {"checkpoint": str(path)}}, arch_kwargs=SMALL, device="cpu")
    assert again.identity() != before


# ---- training record --------------------------------------------------------------------------------
def test_training_set_of_random_weights_and_of_a_checkpoint(tmp_path: Path) -> None:
    ts = seeded(points={2: {"random_seed": 7}}).training_set("2.0")
    assert ts.source == "random weights (seed 7)" and ts.images_sha256 == frozenset()
    shas = ["a" * 64, "b" * 64]
    path = checkpoint(tmp_path / "t.pt", loss="lic", train_images_sha256=shas)
    ts = LicCodec("mbt2018-mean", {1: {"checkpoint": str(path)}}, arch_kwargs=SMALL, device="cpu").training_set(1)
    assert ts.source == str(path) and ts.images_sha256 == frozenset(shas)


# ---- model cost -------------------------------------------------------------------------------------
def test_complexity_counts_the_model_on_the_padded_picture() -> None:
    c = seeded()
    got = c.complexity(1, width=70, height=50)
    model = c.model(1)
    macs = codec_macs(model, torch.zeros(1, 3, 64, 128))  # 50 x 70 padded to multiples of 64
    assert got.params == count_parameters(model)
    assert (got.encoder_macs, got.decoder_macs) == (macs.encoder, macs.decoder)
    assert (got.width, got.height) == (70, 50)
    assert got.counted == f"encoder {'+'.join(macs.encoder_parts)}, decoder {'+'.join(macs.decoder_parts)}"
    assert macs.encoder > 0 and macs.decoder > 0
    wider = seeded(pad_multiple=128).complexity(1, width=70, height=50)
    assert wider.encoder_macs == codec_macs(model, torch.zeros(1, 3, 128, 128)).encoder > got.encoder_macs


# ---- the card against the checkpoint's training record ----------------------------------------------------
@pytest.mark.parametrize(("cls", "point", "meta", "message"), [
    (ObjectICMCodec, {}, {"loss": "lic"}, "trained with the 'lic' objective, but adapter 'objicm'"),
    (LicCodec, {"lambda": 0.01}, {"loss": "lic", "lambda": 0.02}, "says lambda 0.01 but .* trained with lambda 0.02"),
    (LicCodec, {"lambda2": 0.5}, {"loss": "lic", "lambda2": 0.25}, "says lambda2 0.5 but"),
    (SAICMCodec, {"alpha": 0.9}, {"loss": "saicm", "masks_params": {"params": {"source": "sam", "alpha": 0.8}}},
     "says alpha 0.9 but .* trained with alpha 0.8"),
    (SAICMCodec, {"alpha": 0.9}, {"loss": "saicm", "masks_params": {"params": {"source": "coco"}}},
     "trained on 'coco' masks, which have no alpha"),
    (TLICMCodec, {"tl_objective": "task"}, {"loss": "tlicm"}, "says tl_objective task but .* the features objective"),
    (TLICMCodec, {"tl_objective": "features"}, {"loss": "tlicm", "tl_objective": "task"}, "trained with the task"),
])  # fmt: skip
def test_card_and_checkpoint_disagreeing_is_refused(tmp_path: Path, cls: type[LearnedCodec], point: dict,
                                                    meta: dict, message: str) -> None:  # fmt: skip
    path = checkpoint(tmp_path / "c.pt", **meta)
    codec = cls("mbt2018-mean", {1: {"checkpoint": str(path), **point}}, arch_kwargs=SMALL, device="cpu")
    with pytest.raises(CodecError, match=message):
        codec.model(1)


@pytest.mark.parametrize(("cls", "point", "meta"), [
    (ObjectICMCodec, {}, {}),  # a foreign checkpoint records no objective
    (LicCodec, {"lambda": 0.01}, {"loss": "lic", "lambda": 0.01 * (1 + 1e-9)}),
    (LicCodec, {"lambda": 0.01, "lambda2": 0.5}, {"loss": "lic"}),
    (SAICMCodec, {"alpha": 0.8}, {"loss": "saicm", "masks_params": {"params": {"source": "sam", "alpha": 0.8}}}),
    (SAICMCodec, {}, {"loss": "saicm", "masks_params": {"params": {"source": "coco"}}}),
    (TLICMCodec, {"tl_objective": "features"}, {"loss": "tlicm"}),
    (TLICMCodec, {"tl_objective": "task"}, {"loss": "tlicm", "tl_objective": "task"}),
])  # fmt: skip
def test_card_and_checkpoint_agreeing_loads(tmp_path: Path, cls: type[LearnedCodec], point: dict, meta: dict) -> None:
    path = checkpoint(tmp_path / "c.pt", **meta)
    codec = cls("mbt2018-mean", {1: {"checkpoint": str(path), **point}}, arch_kwargs=SMALL, device="cpu")
    assert not codec.model(1).training


def test_objective_keys_belong_to_their_adapters() -> None:
    with pytest.raises(CodecError, match="alpha belongs to saicm checkpoints, not to adapter lic"):
        seeded(points={1: {"random_seed": 0, "alpha": 0.5}})
    with pytest.raises(CodecError, match="tl_objective belongs to tlicm checkpoints, not to adapter objicm"):
        seeded(ObjectICMCodec, points={1: {"random_seed": 0, "tl_objective": "task"}})
    assert seeded(SAICMCodec, points={1: {"random_seed": 0, "alpha": 0.5}}).points[1].alpha == 0.5


# ---- where checkpoints are looked for ---------------------------------------------------------------------
def test_local_checkpoint_looks_at_the_path_then_the_weights_dir_then_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(tmp_path / "wd"))
    monkeypatch.setenv("VCMBENCH_CACHE", str(tmp_path / "cache"))
    (tmp_path / "wd").mkdir()
    sha = "0" * 64
    c = LicCodec("mbt2018-mean", {1: {"checkpoint": "ck/m.pt"}, 2: {"url": "https://example.org/z/q2.pth", "sha256": sha}},
                 arch_kwargs=SMALL, device="cpu", base_dir=str(tmp_path))  # fmt: skip
    assert c.local_checkpoint(1) is None and c.local_checkpoint(2) is None
    assert c.download_name(2) == "q2.pth" and c.download_name(1) == f"{c.name}-1.pt"
    (tmp_path / "wd" / "m.pt").write_bytes(b"x")
    assert c.local_checkpoint(1) == tmp_path / "wd" / "m.pt"
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "m.pt").write_bytes(b"y")
    assert c.local_checkpoint(1) == tmp_path / "ck" / "m.pt"  # the card's path first
    (tmp_path / "wd" / "q2.pth").write_bytes(b"z")
    assert c.local_checkpoint(2) == tmp_path / "wd" / "q2.pth"


def test_a_missing_checkpoint_names_the_file_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VCMBENCH_WEIGHTS_DIR", raising=False)
    c = LicCodec("mbt2018-mean", {1: {"checkpoint": "m.pt", "download_page": "https://example.org/p"}},
                 arch_kwargs=SMALL, device="cpu", base_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(WeightsError, match=r"m.pt of rate point 1 not found .* download m.pt from https://example.org/p"):
        c.checkpoint_path(1)
    bad = checkpoint(tmp_path / "b.pt", loss="lic")
    c = LicCodec("mbt2018-mean", {1: {"checkpoint": str(bad), "sha256": "1" * 64}}, arch_kwargs=SMALL, device="cpu")
    with pytest.raises(WeightsError, match=r"fails its checksum.*Fix: restore the file, or update sha256: in the card"):
        c.checkpoint_path(1)
    c = LicCodec("mbt2018-mean", {1: {"checkpoint": str(bad), "sha256_prefix": "12345678"}}, arch_kwargs=SMALL, device="cpu")
    with pytest.raises(WeightsError, match=r"fails its checksum.*Fix: restore the file, or update sha256_prefix: in the card$"):
        c.checkpoint_path(1)
    good = LicCodec("mbt2018-mean", {1: {"checkpoint": str(bad), "sha256_prefix": file_sha256(bad)[:10]}},
                    arch_kwargs=SMALL, device="cpu")  # fmt: skip
    assert good.checkpoint_path(1) == bad


def test_a_downloaded_checkpoint_is_verified_against_its_published_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VCMBENCH_OFFLINE", "1")
    checkpoint(tmp_path / "z.pth", loss="lic")
    point = {"url": "https://example.org/z.pth", "sha256_prefix": "12345678"}
    with pytest.raises(WeightsError, match="12345678"):
        LicCodec("mbt2018-mean", {1: point}, arch_kwargs=SMALL, device="cpu").checkpoint_path(1)
    point["sha256_prefix"] = file_sha256(tmp_path / "z.pth")[:8]
    assert LicCodec("mbt2018-mean", {1: point}, arch_kwargs=SMALL, device="cpu").checkpoint_path(1) == tmp_path / "z.pth"


def test_models_are_loaded_once_and_devices_checked() -> None:
    c = seeded(points={1: {"random_seed": 0}, 2: {"random_seed": 1}})
    assert c.model(1) is c.model(1) and c.model(2) is not c.model(1)
    with pytest.raises(CodecError, match="^codec: invalid device 'gpu0'"):
        seeded(device="gpu0").torch_device()


# ---- padding and the coded picture ------------------------------------------------------------------------
def test_pad_multiple_must_be_a_multiple_of_the_stride_and_decodes_to_the_input_size() -> None:
    with pytest.raises(CodecError, match="pad_multiple 96 is not a multiple of the model's stride 64; use 64"):
        seeded(pad_multiple=96).encode(picture(), 1)
    for kw in ({}, {"pad_multiple": 128}, {"pad_mode": "centre-zeros"}):
        c = seeded(**kw)
        bs = c.encode(picture(), 1)
        assert (bs.width, bs.height, bs.meta) == (56, 40, {"rate_point": 1})
        assert c.decode(bs).shape == (40, 56, 3)
        est = c.estimate(picture(), 1)
        assert est["bpp"] == pytest.approx(est["bits"] / (40 * 56)) and est["image"].shape == (40, 56, 3)


def test_the_decoder_refuses_a_rate_point_the_card_does_not_have() -> None:
    bs = seeded(points={1: {"random_seed": 0}, 2: {"random_seed": 0}}).encode(picture(), 2)
    assert unpack_bitstream(bs.data).position == 1
    with pytest.raises(CodecError, match="bitstream names rate point #1, the card has 1"):
        seeded().decode(bs)


def test_to_image_rounds_clamps_and_crops() -> None:
    x = torch.tensor([[[[0.0, 0.5, 1.2], [-0.1, 0.2, 0.999]]]]).repeat(1, 3, 1, 1)
    img = to_image(x, 2, 2)
    assert img.dtype == np.uint8 and img.shape == (2, 2, 3)
    assert img[..., 0].tolist() == [[0, 128], [0, 51]]


def test_quality_keys_are_numbers_of_the_card() -> None:
    c = seeded(points={1: {"random_seed": 0}, 0.5: {"random_seed": 0}})
    assert c.keys == [0.5, 1] and c.validate_quality("1.0") == 1 and c.validate_quality(0.5) == 0.5
    with pytest.raises(QualityError, match=r"rate point '3' has no checkpoint; this card defines 0.5, 1"):
        c.validate_quality("3")
    with pytest.raises(QualityError, match="is not a number"):
        c.validate_quality("high")


# ---- the bitstream header --------------------------------------------------------------------------------
def test_header_round_trips_multi_byte_numbers_and_refuses_damage() -> None:
    strings = [[b"abc", b""], [b"\x00" * 300]]
    data = pack_bitstream(3, 1080, 16383, (17, 200, 70000), strings)
    u = unpack_bitstream(data)
    assert (u.position, u.height, u.width, u.shape, u.strings) == (3, 1080, 16383, (17, 200, 70000), strings)
    assert u.header_bytes == len(data) - 303
    assert data[:2] == bytes([2, 3])
    with pytest.raises(CodecError, match="^learned codec: truncated bitstream payload$"):
        unpack_bitstream(data[:-1])
    with pytest.raises(CodecError, match="1 unexpected bytes after the payload"):
        unpack_bitstream(data + b"!")
    with pytest.raises(CodecError, match="^learned codec: truncated bitstream header$"):
        unpack_bitstream(data[:4])
    with pytest.raises(CodecError, match="varint too long"):
        unpack_bitstream(bytes([2, 0]) + b"\xff" * 10)
    with pytest.raises(CodecError, match="^learned codec: bitstream format 1 was written by an older vcmbench whose"):
        unpack_bitstream(bytes([1]) + data[1:])
    with pytest.raises(CodecError, match="unknown bitstream format 9"):
        unpack_bitstream(bytes([9]) + data[1:])
    with pytest.raises(CodecError, match="^learned codec: bitstream shorter than its header$"):
        unpack_bitstream(b"\x02")
    with pytest.raises(ValueError, match="negative"):
        pack_bitstream(0, -1, 1, (), [])


# ---- rate points ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "message"), [
    ({}, "non-empty mapping"),
    ({"x": "a.pt"}, "key 'x' is not a number"),
    ({1: 5}, "must be a mapping"),
    ({1: {"checkpoint": "a", "colour": 1}}, r"unknown key\(s\) \['colour'\]"),
    ({1: {"random_seed": 1, "checkpoint": "a"}}, "random_seed .* excludes checkpoint"),
    ({1: {"random_seed": "1"}}, "random_seed .* excludes"),
    ({1: {"lambda": 0.1}}, "needs checkpoint: .* or url:"),
    ({1: {"url": "https://x/y.pt"}}, "has no sha256:; add it"),
    ({1: {"checkpoint": "a", "sha256": "abc"}}, "is not 64 hex digits"),
    ({1: {"checkpoint": "a", "sha256": "a" * 64, "sha256_prefix": "abcdef12"}}, "both sha256: and sha256_prefix:"),
    ({1: {"url": "https://x/y.pt", "sha256_prefix": "abc"}}, "not a string of 8 to 63 hex digits"),
    ({1: {"checkpoint": "a", "arch_kwargs": [1]}}, "arch_kwargs must be a mapping"),
    ({1: {"checkpoint": "a", "lambda": -1}}, "lambda must be a number >= 0"),
    ({1: {"checkpoint": "a", "lambda2": "x"}}, "lambda2 must be a number >= 0"),
    ({1: {"checkpoint": "a", "alpha": 1.5}}, r"alpha .* must lie in \[0, 1\]"),
    ({1: {"checkpoint": "a", "tl_objective": "loss"}}, "tl_objective must be one of task, features"),
    ({1: "a", "1.0": "b"}, "listed twice"),
    ({i: "a" for i in range(256)}, "at most 255 rate points"),
])  # fmt: skip
def test_rate_point_errors_name_the_key_and_the_fix(raw: dict, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        parse_rate_points(raw, "codec t")


def test_rate_points_keep_every_field() -> None:
    p = parse_rate_points({"0.5": {"url": "https://x/y.pt", "sha256_prefix": "ABCDEF12", "lambda": 1, "lambda2": 2,
                                   "download_page": "p", "arch_kwargs": {"N": 8}},
                           2: {"random_seed": 3, "alpha": 0.25, "tl_objective": "task"}, 3: "c.pt"}, "codec t")  # fmt: skip
    a, b, c = p[0.5], p[2], p[3]
    assert (a.key, a.lmbda, a.lambda2, a.url, a.sha256_prefix, a.download_page, a.arch_kwargs) == (
        0.5, 1.0, 2, "https://x/y.pt", "abcdef12", "p", {"N": 8})
    assert isinstance(a.lmbda, float) and a.sha256 is None and a.checkpoint is None
    assert (b.random_seed, b.alpha, b.tl_objective, b.checkpoint) == (3, 0.25, "task", None)
    assert (c.checkpoint, c.lmbda, c.random_seed) == ("c.pt", None, None)


def test_coder_settings_are_checked() -> None:
    assert seeded().scale_levels == SCALE_LEVELS and seeded().pad_mode == "edge" and seeded().pad_multiple is None
    assert (seeded(scale_levels=2).scale_levels, seeded(pad_multiple=1).pad_multiple) == (2, 1)  # the smallest allowed
    for kw, message in (({"scale_levels": 1}, "^codec codec: scale_levels must be an integer >= 2"),
                        ({"scale_levels": True}, "scale_levels"),
                        ({"pad_multiple": 0}, r"^codec codec: pad_multiple must be a positive integer \(or null"),
                        ({"pad_multiple": True}, "pad_multiple"), ({"pad_mode": "mirror"}, "pad_mode must be one of")):  # fmt: skip
        with pytest.raises(CodecError, match=message):
            seeded(**kw)
    with pytest.raises(CodecError, match="unknown arch 'nope'"):
        LicCodec("nope", {1: {"random_seed": 0}})
