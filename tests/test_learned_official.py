"""The SA-ICM authors' released checkpoints: cards, strict loading through the real TCM model, the release's
entropy-coder settings (64-scale table, zero padding centred to 128); and SA-ICM's α as a checked rate-point key."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.cli import main
from vcmbench.codecs.learned import LearnedCodec, LicCodec, SAICMCodec, parse_rate_points
from vcmbench.errors import CodecError, WeightsError
from vcmbench.masks import MaskError, MaskParams, make_masks, read_manifest
from vcmbench.models.lic import ModelError, build_model, load_checkpoint, save_checkpoint, scale_table
from vcmbench.models.tcm import TCM


def natural_image(h: int, w: int) -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[40 : 40 + h, 150 : 150 + w])


@pytest.fixture(scope="module")
def tcm_large_state() -> dict[str, torch.Tensor]:
    """A freshly initialised TCM-Large (N=128, M=320) state dict: the release's key names and shapes (the
    release's model class, SA-ICM models/icm.py ``ICM``, has the same module layout as LIC_TCM's TCM)."""
    torch.manual_seed(0)
    return TCM(N=128, M=320).state_dict()


def release_file(path: Path, state: dict[str, torch.Tensor], prefix: str = "module.") -> Path:
    """A checkpoint laid out as the authors' training script saves it (LIC_TCM train.py ``save_checkpoint``)."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    blob = {"epoch": 49, "state_dict": {prefix + k: v for k, v in state.items()}, "loss": torch.tensor(0.3),
            "optimizer": opt.state_dict(), "aux_optimizer": opt.state_dict(),
            "lr_scheduler": torch.optim.lr_scheduler.MultiStepLR(opt, [45, 48]).state_dict()}  # fmt: skip
    torch.save(blob, path)
    return path


# ---- cards ------------------------------------------------------------------------------------------------
def test_official_cards_validate_and_name_the_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.delenv("VCMBENCH_WEIGHTS_DIR", raising=False)
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    for kind, name in (("codec", "saicm_official"), ("task", "yolov5_saicm78"), ("task", "yolov5_saicm93")):
        assert re.search(rf"^ok +{kind} +{name}$", out, re.M), name
    cards = CardSet()
    codec = build(cards.get("codec", "saicm_official").with_settings(base_dir=str(tmp_path)))
    assert isinstance(codec, SAICMCodec) and (codec.arch, codec.arch_kwargs) == ("tcm", {"N": 128, "M": 320})
    assert (codec.scale_levels, codec.pad_multiple, codec.pad_mode) == (64, 128, "centre-zeros")
    assert [(p.lmbda, p.alpha, p.sha256) for p in codec.points.values()] == [(0.05, 0.93, None), (0.05, 0.78, None)]
    with pytest.raises(WeightsError, match=r"icm_93\.pth\.tar of rate point 1 not found.*drive\.google\.com"):
        codec.identity()  # what a run asks first: it stops before any work
    for a in (78, 93):
        task = build(cards.get("task", f"yolov5_saicm{a}").with_settings(weights=str(tmp_path / f"yolov5_{a}.pt")))
        with pytest.raises(WeightsError, match=rf"yolov5_{a}\.pt not found for task yolov5_saicm{a}"):
            task.weights_path()


def test_a_checkpoint_in_the_weights_dir_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24)
    save_checkpoint(model, tmp_path / "w" / "q.pt", "mbt2018-mean", {"N": 16, "M": 24})
    codec = LicCodec("mbt2018-mean", {1: {"checkpoint": "not/here/q.pt"}}, device="cpu", base_dir=str(tmp_path))
    with pytest.raises(WeightsError, match="train it"):
        codec.checkpoint_path(1)
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(tmp_path / "w"))
    assert codec.checkpoint_path(1) == tmp_path / "w" / "q.pt"


# ---- strict loading through the real TCM ------------------------------------------------------------------
def test_the_release_layout_loads_into_tcm_large(tcm_large_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    for prefix in ("module.", ""):  # DataParallel training or not: both load
        path = release_file(tmp_path / f"icm{len(prefix)}.pth.tar", tcm_large_state, prefix)
        ck = load_checkpoint(path, "tcm", {"N": 128, "M": 320}, scale_levels=64)
        loaded = ck.model.state_dict()
        for k in ("g_a.0.conv1.weight", "atten_mean.4.0.non_local_block.block_2.msa.relative_position_params",
                  "entropy_bottleneck.matrices.0", "lrp_transforms.4.4.bias"):  # fmt: skip
            assert torch.equal(loaded[k], tcm_large_state[k]), k
        assert not ck.had_tables and ck.meta == {}
        assert ck.model.gaussian_conditional.scale_table.numel() == 64  # tables built as the release's update()
        assert torch.equal(ck.model.gaussian_conditional.scale_table, scale_table(64))


def test_strict_keys_and_shapes_name_the_culprit(tcm_large_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    missing = dict(tcm_large_state)
    del missing["h_a.0.conv1.weight"]
    extra = {**tcm_large_state, "g_a.10.weight": torch.zeros(3)}
    wrong = dict(tcm_large_state)
    wrong["cc_mean_transforms.2.0.weight"] = torch.zeros(224, 10, 3, 3)
    cases = ((missing, r"missing: h_a\.0\.conv1\.weight"), (extra, r"unexpected: g_a\.10\.weight"),
             (wrong, r"wrong shape: cc_mean_transforms\.2\.0\.weight \(file \(224, 10, 3, 3\), model "
                     r"\(224, 448, 3, 3\)\)"))  # fmt: skip
    for i, (state, message) in enumerate(cases):
        path = release_file(tmp_path / f"bad{i}.pth.tar", state)
        with pytest.raises(ModelError, match=message):
            load_checkpoint(path, "tcm", {"N": 128, "M": 320}, scale_levels=64)
    # the wrong size for the card (TCM-S weights under a TCM-L card) fails the same way
    with pytest.raises(ModelError, match=r"wrong shape: g_a\.0\.conv1\.weight"):
        load_checkpoint(release_file(tmp_path / "l.pth.tar", tcm_large_state), "tcm", {"N": 64, "M": 320})


def test_tables_in_the_file_must_match_the_scale_levels(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24)
    path = save_checkpoint(model, tmp_path / "t.pt", "mbt2018-mean", {"N": 16, "M": 24})  # tables for 256 scales
    assert load_checkpoint(path).model.gaussian_conditional.scale_table.numel() == 256
    with pytest.raises(ModelError, match="tables for 256 scales, but the card says scale_levels: 64"):
        load_checkpoint(path, scale_levels=64)


# ---- the release's entropy-coder settings -----------------------------------------------------------------
def test_release_coder_settings_give_the_release_bitstream() -> None:
    """With scale_levels 64 and centred zero padding to 128 the strings are those of the model's compress() on the
    input the release's pad() makes, with the tables the release's update() builds; vcmbench's defaults differ."""
    settings = {"arch": "tcm", "arch_kwargs": {"N": 32, "M": 160}, "rate_points": {1: {"random_seed": 5}},
                "device": "cpu"}  # fmt: skip
    release = LearnedCodec(**settings, scale_levels=64, pad_multiple=128, pad_mode="centre-zeros")
    ours = LearnedCodec(**settings)
    image = natural_image(100, 140)  # padded to 128 x 256: 14 rows above, 14 below, 58 columns left, 58 right
    torch.manual_seed(5)
    model = build_model("tcm", N=32, M=160).eval()
    model.update(force=True)  # CompressAI's default table: 64 scales
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255
    padded = F.pad(x, (58, 58, 14, 14), mode="constant", value=0)
    with torch.no_grad():
        expected = model.compress(padded)
    bs = release.encode(image, 1)
    from vcmbench.codecs.learned import unpack_bitstream

    u = unpack_bitstream(bs.data)
    assert u.strings == [[bytes(s) for s in g] for g in expected["strings"]]
    assert u.shape == tuple(expected["shape"])
    decoded = release.decode(bs)
    assert decoded.shape == image.shape
    assert np.array_equal(decoded, release.estimate(image, 1)["image"])
    assert ours.encode(image, 1).data != bs.data  # the settings matter to the bits
    assert ours.identity() != release.identity()


def test_coder_settings_are_checked() -> None:
    points = {1: {"random_seed": 1}}
    with pytest.raises(CodecError, match="scale_levels must be an integer >= 2"):
        LearnedCodec("mbt2018-mean", points, scale_levels=1)
    with pytest.raises(CodecError, match="pad_mode must be one of edge, centre-zeros"):
        LearnedCodec("mbt2018-mean", points, pad_mode="mirror")
    odd = LearnedCodec("mbt2018-mean", points, arch_kwargs={"N": 16, "M": 24}, pad_multiple=96, device="cpu")
    with pytest.raises(CodecError, match="pad_multiple 96 is not a multiple of the model's stride 64"):
        odd.encode(natural_image(64, 64), 1)


# ---- α: a checked rate-point key of saicm -----------------------------------------------------------------
def saicm_checkpoint(path: Path, masks_params: dict[str, object] | None) -> Path:
    torch.manual_seed(0)
    model = build_model("mbt2018-mean", N=16, M=24)
    meta = {"loss": "saicm", "lambda": 0.05, "masks_params": masks_params}
    return save_checkpoint(model, path, "mbt2018-mean", {"N": 16, "M": 24}, meta)


def test_alpha_is_checked_against_the_masks_the_checkpoint_was_trained_on(tmp_path: Path) -> None:
    sam = saicm_checkpoint(tmp_path / "sam.pt", {"params": {"source": "sam", "alpha": 0.93}, "params_hash": "x"})
    image = natural_image(64, 64)

    def codec(path: Path, alpha: float) -> SAICMCodec:
        return SAICMCodec("mbt2018-mean", {1: {"checkpoint": str(path), "alpha": alpha}}, device="cpu")

    codec(sam, 0.93).encode(image, 1)
    with pytest.raises(CodecError, match=r"says alpha 0\.78 but checkpoint .* trained with alpha 0\.93"):
        codec(sam, 0.78).encode(image, 1)
    fz = saicm_checkpoint(tmp_path / "fz.pt", {"params": {"source": "felzenszwalb"}, "params_hash": "y"})
    with pytest.raises(CodecError, match="'felzenszwalb' masks, which have no alpha"):
        codec(fz, 0.93).encode(image, 1)
    with pytest.raises(CodecError, match=r"alpha \(SAM pred_iou_thresh\) must lie in \[0, 1\]"):
        parse_rate_points({1: {"checkpoint": "a.pt", "alpha": 93}}, "codec x")
    with pytest.raises(CodecError, match="alpha belongs to saicm checkpoints"):
        LicCodec("mbt2018-mean", {1: {"checkpoint": str(sam), "alpha": 0.93}})


def test_masks_are_made_and_kept_per_alpha(tmp_path: Path) -> None:
    """α is in the mask folder's parameter hash: a folder made with another α is refused unless overwritten, and
    a checkpoint trained on it records that α (what the codec checks)."""
    from PIL import Image

    from vcmbench.masks import MaskItem
    from vcmbench.train.commands import card_keys
    from vcmbench.train.lic import TrainConfig, train

    images = tmp_path / "img"
    images.mkdir()
    Image.fromarray(natural_image(96, 96)).save(images / "a.png")
    items = [MaskItem("a", images / "a.png")]

    def params(alpha: float) -> MaskParams:
        return MaskParams("sam", sam_model="tiny-random", alpha=alpha, stability_score_thresh=0.0, points_per_side=2)

    made = make_masks(items, tmp_path / "m", params(0.0), progress=False, device="cpu")
    assert made.made == 1 and read_manifest(tmp_path / "m")["params"]["alpha"] == 0.0
    with pytest.raises(MaskError, match=r"alpha: 0\.0 -> 0\.5"):
        make_masks(items, tmp_path / "m", params(0.5), progress=False, device="cpu")
    again = make_masks(items, tmp_path / "m", params(0.0), progress=False, device="cpu")
    assert (again.made, again.skipped) == (0, 1)  # the same α: cached
    redone = make_masks(items, tmp_path / "m", params(0.5), progress=False, device="cpu", overwrite=True)
    assert redone.made == 1 and read_manifest(tmp_path / "m")["params"]["alpha"] == 0.5
    cfg = TrainConfig(codec="saicm", train_dir=str(images), out=str(tmp_path / "run"), masks=str(tmp_path / "m"),
                      lmbda=0.05, arch_kwargs={"N": 16, "M": 24}, steps=1, batch_size=1, crop=64, threads=1,
                      tensorboard=False, progress=False)  # fmt: skip
    ckpt = train(cfg).checkpoint
    assert card_keys(ckpt) == "lambda: 0.05, alpha: 0.5, "  # what `vcmbench train` prints as the card entry
    spec = {"checkpoint": str(ckpt), "lambda": 0.05}
    SAICMCodec("mbt2018-mean", {1: {**spec, "alpha": 0.5}}, device="cpu").encode(natural_image(64, 64), 1)
    with pytest.raises(CodecError, match=r"trained with alpha 0\.5"):
        SAICMCodec("mbt2018-mean", {1: {**spec, "alpha": 0.93}}, device="cpu").encode(natural_image(64, 64), 1)
