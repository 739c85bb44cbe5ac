"""Paper-scale preset cards (issue 16): TCM-Large SA-ICM / Object-ICM, NeRV-S/M/L and SA-NeRV as the papers
trained them. They validate like every card, describe the published models, and a run without their
checkpoints stops before any work with a message naming the missing file and how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.errors import VcmbenchError
from vcmbench.masks import SAM_CHECKPOINTS
from vcmbench.models.nerv import NeRV, count_parameters, derive_layout, model_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("saicm_paper", "objicm_paper", "nerv_paper", "sanerv_paper")


@pytest.fixture(scope="module")
def cards() -> CardSet:
    return CardSet()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_validates_every_quality(cards: CardSet, name: str) -> None:
    card = cards.get("codec", name)
    codec = build(card)
    for q in card.qualities:
        codec.validate_quality(q)
    assert list(card.qualities) == sorted(card.qualities) and len(card.qualities) >= 3


@pytest.mark.parametrize(("name", "alphas", "lambdas"), [
    ("saicm_paper", [0.98, 0.93, 0.48], [0.05, 0.05, 0.05]),
    ("objicm_paper", [None] * 6, [0.0025, 0.0035, 0.0067, 0.013, 0.025, 0.05]),
])  # fmt: skip
def test_tcm_presets_are_tcm_large_and_name_their_missing_checkpoints(cards: CardSet, name: str, alphas: list,
                                                                      lambdas: list, monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(tmp_path))  # an empty weights folder
    codec = build(cards.get("codec", name))
    assert codec.arch == "tcm" and codec.arch_kwargs == {"N": 128, "M": 320}
    assert [codec.points[k].lmbda for k in codec.keys] == lambdas
    assert [codec.points[k].alpha for k in codec.keys] == alphas
    for key in codec.keys:
        with pytest.raises(VcmbenchError) as err:
            codec.checkpoint_path(key)
        msg = str(err.value)
        expected = REPO / codec.points[key].checkpoint
        assert str(expected) in msg and "not found" in msg and "vcmbench train" in msg
        assert "header comment" in msg  # where the recipe is


def test_nerv_paper_is_nerv_s_m_l_with_the_papers_recipe(cards: CardSet) -> None:
    """Chen et al. (NeurIPS 2021): 300 epochs at lr 5e-4, NeRV-S / M / L = 3.2M / 6.3M / 12.5M parameters on
    Big Buck Bunny (1280x720), 40 % pruned, 8 bits."""
    import torch

    for name in ("nerv_paper", "sanerv_paper"):
        codec = build(cards.get("codec", name))
        assert (codec.train.epochs, codec.train.lr, codec.train.finetune_epochs) == (300, 5e-4, 100)
        layout = derive_layout(720, 1280)
        counts = []
        for key in codec.keys:
            arch = codec.points[key].arch()
            assert codec.points[key].prune == 0.4 and codec.points[key].bits == 8
            with torch.device("meta"):
                counts.append(count_parameters(NeRV(model_config(layout, **arch))))
        for n, published in zip(counts, (3.2e6, 6.3e6, 12.5e6), strict=True):
            assert abs(n - published) / published < 0.05, (name, counts)


def test_sanerv_paper_needs_sam_and_names_the_official_file(cards: CardSet, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:  # fmt: skip
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    monkeypatch.setenv("VCMBENCH_SAM_CHECKPOINT", str(missing))
    codec = build(CardSet().get("codec", "sanerv_paper"))  # the card expands the variable when loaded
    assert codec.mask_params.source == "sam" and codec.mask_params.sam_model == "vit_h"
    with pytest.raises(VcmbenchError) as err:
        codec.identity_fields()  # planning computes the identity: the run stops before any work
    url, sha = SAM_CHECKPOINTS["vit_h"]
    msg = str(err.value)
    assert str(missing) in msg and url in msg and sha in msg
