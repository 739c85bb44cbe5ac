"""The CTC card set for SFU-HW-Objects-v1 (ctc/sfu_hw/): the values equal those of the cited CTC tooling,
every card builds, the intra period follows the CTC's rule by frame rate, and a plan over an SFU-HW layout
picks each sequence's own frame range and QP ladder."""

from __future__ import annotations

from pathlib import Path

import pytest

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.codecs.vtm import VTMCodec
from vcmbench.plan import DatasetSelection, expand_grid

CTC = Path(__file__).resolve().parent.parent / "ctc" / "sfu_hw"

# Copied from InterDigitalInc/CompressAI-Vision@31165daf62af4e7fff02b39ba23b39e8c24278b1
# scripts/datasets/sfu_dicts.py (from MPEG m59143): fr_dict = (IntraPeriod, FrameRate, FramesToBeEncoded, FrameSkip)
FR_DICT = {
    "Traffic": (32, 30, 33, 117), "Kimono": (32, 24, 33, 207), "ParkScene": (32, 24, 33, 207),
    "Cactus": (64, 50, 97, 403), "BQTerrace": (64, 60, 129, 471), "BasketballDrive": (64, 50, 97, 403),
    "BQMall": (64, 60, 129, 471), "BasketballDrill": (64, 50, 97, 403), "PartyScene": (64, 50, 97, 403),
    "RaceHorsesC": (32, 30, 65, 235), "BQSquare": (64, 60, 129, 471), "BasketballPass": (64, 50, 97, 403),
    "BlowingBubbles": (64, 50, 97, 403), "RaceHorsesD": (32, 30, 65, 235),  # CompressAI-Vision: "RaceHorses" (D)
}  # fmt: skip

# Copied from skwak-kaist/VCM-RS-filter-network@6fb3026b66d95fb44bcec487d8292b617d0119b5 Scripts/sfu_config.py,
# "current CTC scenarios - after Geneva 149": __get_qp_list(start, step) -> 6 QPs start, start + step, ...
RA_LD_INNER = {
    "Traffic": (32, 4), "ParkScene": (16, 4), "BasketballDrive": (26, 4), "BQTerrace": (26, 4),
    "BasketballDrill": (12, 4), "BQMall": (22, 4), "PartyScene": (18, 4), "RaceHorsesC": (14, 4),
    "BasketballPass": (10, 4), "BQSquare": (12, 4), "BlowingBubbles": (14, 4), "RaceHorsesD": (14, 4),
    "Kimono": (22, 4), "Cactus": (20, 4),
}  # fmt: skip
AI_INNER = {
    "Traffic": (26, 4), "ParkScene": (16, 4), "BasketballDrive": (20, 4), "BQTerrace": (22, 4),
    "BasketballDrill": (10, 4), "BQMall": (20, 4), "PartyScene": (16, 4), "RaceHorsesC": (14, 4),
    "BasketballPass": (10, 4), "BQSquare": (12, 4), "BlowingBubbles": (14, 4), "RaceHorsesD": (12, 4),
    "Kimono": (20, 4), "Cactus": (22, 4),
}  # fmt: skip
CONFIGS = {"ra": RA_LD_INNER, "ld": RA_LD_INNER, "ai": AI_INNER}


def qp_list(start: int, step: int) -> list[int]:
    return [start + step * k for k in range(6)]


@pytest.fixture(scope="module")
def cards() -> CardSet:
    return CardSet([CTC])


def ctc_names(cards: CardSet, kind: str) -> list[str]:
    return [n for n in cards.names(kind) if cards.get(kind, n).path.is_relative_to(CTC)]  # type: ignore[union-attr]


def test_every_ctc_card_validates(cards: CardSet) -> None:
    codecs = ctc_names(cards, "codec")
    assert sorted(codecs) == sorted(f"vtm_ctc_{vc}_{seq}" for vc in CONFIGS for seq in FR_DICT)
    assert ctc_names(cards, "dataset") == ["sfu_hw_ctc"]
    for name in codecs:
        card = cards.get("codec", name)
        codec = build(card)
        assert [codec.validate_quality(q) for q in card.qualities] == list(card.qualities)
    assert build(cards.get("dataset", "sfu_hw_ctc")).frame_ranges  # the dataset card builds too


def test_ctc_values_equal_the_cited_sources(cards: CardSet) -> None:
    for vc, ladders in CONFIGS.items():
        for seq, (start, step) in ladders.items():
            card = cards.get("codec", f"vtm_ctc_{vc}_{seq}")
            assert list(card.qualities) == qp_list(start, step), card.name
            assert card.settings["video_config"] == vc
            ip = card.settings["intra_period"]
            assert ip == (FR_DICT[seq][0] if vc == "ra" else None), card.name
            assert "6fb3026b" in card.description and "31165daf" in card.description  # the citation
    ranges = cards.get("dataset", "sfu_hw_ctc").settings["frame_ranges"]
    assert ranges == {seq: [skip, skip + n] for seq, (_, _, n, skip) in FR_DICT.items()}


@pytest.mark.parametrize("seq", sorted(FR_DICT))
def test_intra_period_follows_the_frame_rate_rule(seq: str, cards: CardSet) -> None:
    intra_period, fps, _, _ = FR_DICT[seq]
    assert intra_period == {24: 32, 30: 32, 50: 64, 60: 64}[fps]  # CTC: 32 below 50 fps, 64 at 50/60 fps
    card_ip = cards.get("codec", f"vtm_ctc_ra_{seq}").settings["intra_period"]
    assert card_ip == intra_period
    assert VTMCodec(video_config="ra").intra_period(fps) == card_ip  # the adapter's own null rule agrees


def write_ctc_layout(root: Path) -> dict[str, tuple[str, int, int]]:
    """SFU-HW layout with three sequences of their full CTC length at 32x24 (grey frames, no labels needed
    to plan): ClassC/RaceHorses (RaceHorsesC), ClassD/RaceHorses (RaceHorsesD), ClassD/BQSquare."""
    layout = {"RaceHorsesC": ("C", 30, 300), "RaceHorsesD": ("D", 30, 300), "BQSquare": ("D", 60, 600)}
    for seq, (cls, fps, frames) in layout.items():
        name = seq.removesuffix(cls) if seq.startswith("RaceHorses") else seq
        folder = root / f"Class{cls}"
        (folder / "Annotations" / name).mkdir(parents=True, exist_ok=True)
        frame = bytes([128]) * (32 * 24 * 3 // 2)
        (folder / f"{name}_32x24_{fps}Hz_8bit_P420.yuv").write_bytes(frame * frames)
    return layout


def test_plan_over_sfu_layout_picks_each_sequences_range_and_qps(tmp_path: Path, cards: CardSet) -> None:
    layout = write_ctc_layout(tmp_path)
    ds = build(cards.get("dataset", "sfu_hw_ctc").with_settings(root=str(tmp_path), classes=["C", "D"]))
    items = {it.id: it for it in ds.all_items()}
    assert sorted(items) == sorted(layout)
    for seq, item in items.items():
        _, fps, n, skip = FR_DICT[seq]
        assert (item.meta["start"], item.meta["frames"], item.meta["fps"]) == (skip, n, fps)
    for vc, ladders in CONFIGS.items():
        for seq in items:
            card = cards.get("codec", f"vtm_ctc_{vc}_{seq}")
            selection = DatasetSelection("sfu_hw_ctc", "ds", (seq,), (f"sha-{seq}",))
            units = expand_grid([selection], [("det", "t")], [(card.name, card.digest(), list(card.qualities))],
                                reference=False)  # fmt: skip
            assert [u.quality for u in units] == qp_list(*ladders[seq])
            assert {u.item_ids for u in units} == {(seq,)}
    # sequences of one class have different ladders: one card for the class could not carry them
    assert qp_list(*RA_LD_INNER["BQSquare"]) != qp_list(*RA_LD_INNER["RaceHorsesD"])
