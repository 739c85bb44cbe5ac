"""Codec cost beside BD-rate: counted MACs and parameters of learned codecs, measured coding time per
megapixel, and the machine those times are of (docs/codec-cost.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vcmbench.cli import main as cli
from vcmbench.codecs.base import Codec
from vcmbench.codecs.jpeg import JpegCodec
from vcmbench.codecs.learned import LicCodec
from vcmbench.models.complexity import count_macs
from vcmbench.provenance import machine, machine_label
from vcmbench.report import load_results
from vcmbench.report.tables import COST_COLUMNS, bd_table, cost_note, points_table
from vcmbench.run import RunConfig, run
from vcmbench.store import Store


class _FunctionalGain(nn.Module):
    """A GDN-like channel mixing done with ``F.conv2d`` (a module-level counter would not see it)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.conv2d(x, self.weight)


def test_count_macs_is_the_hand_count_of_a_conv_stack() -> None:
    """MACs = Cout*Cin*k*k*Hout*Wout per convolution, Cin*Cout*k*k*Hin*Win per transposed one (each input
    pixel meets every weight once), C*C*H*W for the functional 1x1 mixing; activations count nothing."""
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(),  # 40x56 -> 20x28
        _FunctionalGain(8),  # at 20x28
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.LeakyReLU(),  # -> 10x14
        nn.ConvTranspose2d(16, 4, 5, stride=2, padding=2, output_padding=1),  # 10x14 -> 20x28
    )
    macs, out = count_macs(net, torch.zeros(1, 3, 40, 56))
    hand = 8 * 3 * 5 * 5 * 20 * 28 + 8 * 8 * 20 * 28 + 16 * 8 * 3 * 3 * 10 * 14 + 16 * 4 * 5 * 5 * 10 * 14
    assert out.shape == (1, 4, 20, 28)
    assert macs == hand


def _mbt2018_mean_macs(n: int, m: int, hp: int, wp: int) -> tuple[int, int]:
    """Hand count of CompressAI's mbt2018-mean (MeanScaleHyperprior) on an hp x wp input: 5x5 convolutions with
    stride 2 and GDN (a 1x1 channel mixing) in g_a; h_a = conv3x3 stride 1 (M->N), two 5x5 stride 2 (N->N);
    h_s = two 5x5 transposed (N->M, M->3M/2), conv3x3 (3M/2->2M); g_s = four 5x5 transposed with IGDN."""

    def px(s: int) -> int:  # pixels at 1/s of the input
        return (hp // s) * (wp // s)

    g_a = 3 * n * 25 * px(2) + n * n * px(2) + n * n * 25 * px(4) + n * n * px(4) + n * n * 25 * px(8) \
        + n * n * px(8) + n * m * 25 * px(16)
    h_a = m * n * 9 * px(16) + n * n * 25 * px(32) + n * n * 25 * px(64)
    h_s = n * m * 25 * px(64) + m * (3 * m // 2) * 25 * px(32) + (3 * m // 2) * (2 * m) * 9 * px(16)
    g_s = m * n * 25 * px(16) + n * n * px(8) + n * n * 25 * px(8) + n * n * px(4) + n * n * 25 * px(4) \
        + n * n * px(2) + n * 3 * 25 * px(2)
    return g_a + h_a, h_s + g_s


def test_learned_codec_complexity_is_the_hand_count_per_pixel() -> None:
    """A 70x50 image is padded to 128x64 (the model's multiple 64): the MACs of that input, per pixel of the
    70x50 image; parameters = every tensor of the rate point's model."""
    codec = LicCodec("mbt2018-mean", {1: {"random_seed": 5}}, arch_kwargs={"N": 8, "M": 12}, device="cpu")
    cx = codec.complexity(1, 70, 50)
    enc, dec = _mbt2018_mean_macs(8, 12, 64, 128)
    assert (cx.encoder_macs, cx.decoder_macs) == (enc, dec)
    cols = cx.columns()
    assert cols["enc_kMAC_px"] == pytest.approx(enc / (70 * 50) / 1000)
    assert cols["dec_kMAC_px"] == pytest.approx(dec / (70 * 50) / 1000)
    assert cols["params"] == sum(p.numel() for p in codec.model(1).parameters())
    assert cols["kMAC_at"] == "70x50"
    assert cx.counted == "encoder g_a+h_a, decoder h_s+g_s" and cx.not_counted == ("entropy_bottleneck",)
    assert JpegCodec().complexity(10, 70, 50) is None and Codec.complexity(JpegCodec(), 10, 70, 50) is None


def _learned_card(cards: Path) -> None:
    (cards / "codecs").mkdir(parents=True)
    (cards / "codecs" / "tiny.yaml").write_text(
        "name: tiny\nadapter: lic\nversion: 1\nqualities: [1]\nsettings:\n  arch: mbt2018-mean\n"
        "  arch_kwargs: {N: 8, M: 12}\n  device: cpu\n  rate_points:\n    1: {random_seed: 2}\n"
    )


def _unit_figures(store: Store, codec: str, quality: str) -> tuple[float, float, int]:
    """(encode seconds, decode seconds, pixels) of a codec's finished encodes at a quality, from the store."""
    row = store.conn.execute(
        "SELECT SUM(encode_s), SUM(decode_s), SUM(width * height) FROM encodes WHERE codec=? AND quality=? "
        "AND status='done'", (codec, quality),
    ).fetchone()  # fmt: skip
    return float(row[0]), float(row[1]), int(row[2])


def test_a_run_records_times_per_megapixel_their_machine_and_learned_macs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Synth + JPEG + a tiny learned codec: the time columns are the store's seconds over the store's pixels,
    timed_on names this machine, the learned codec's MACs are those of its size; a rerun (all cached) names
    the machine that encoded, not its own."""
    _learned_card(tmp_path / "cards")
    cfg = RunConfig(codecs=["jpeg", "tiny"], tasks=["synth_det"], datasets=["synth"], limit=3,
                    qualities={"jpeg": [10, 40], "tiny": [1]}, cards_dirs=[str(tmp_path / "cards")],
                    out=str(tmp_path / "out"), progress=False)  # fmt: skip
    first = run(cfg)
    assert first.ok, first.failures
    df = load_results(first.run_dir / "results.csv")
    here = machine_label(machine())
    coded = df[df.codec != "uncompressed"]
    assert set(coded.timed_on) == {here} and df[df.codec == "uncompressed"].timed_on.isna().all()
    assert coded[coded.codec == "jpeg"].params.isna().all()

    points = points_table(df).set_index(["codec", "quality"])
    bd, _ = bd_table(df, anchor="jpeg")
    store = Store(tmp_path / "out")
    try:
        for codec, q in (("jpeg", "10"), ("jpeg", "40"), ("tiny", "1")):
            enc, dec, pixels = _unit_figures(store, codec, q)
            assert points.loc[(codec, q), "enc_s_per_MP"] == pytest.approx(enc / (pixels / 1e6))
            assert points.loc[(codec, q), "dec_s_per_MP"] == pytest.approx(dec / (pixels / 1e6))
        sizes = store.conn.execute("SELECT DISTINCT width, height FROM encodes WHERE codec='tiny'").fetchall()
    finally:
        store.close()
    assert len(sizes) == 1
    w, h = sizes[0]
    enc_macs, dec_macs = _mbt2018_mean_macs(8, 12, -(-h // 64) * 64, -(-w // 64) * 64)
    tiny = points.loc[("tiny", "1")]
    assert tiny.enc_kMAC_px == pytest.approx(enc_macs / (w * h) / 1000)
    assert tiny.dec_kMAC_px == pytest.approx(dec_macs / (w * h) / 1000)
    assert tiny.params == LicCodec("mbt2018-mean", {1: {"random_seed": 2}}, arch_kwargs={"N": 8, "M": 12},
                                   device="cpu").complexity(1, w, h).params  # fmt: skip
    assert list(bd.columns[-len(COST_COLUMNS) - 1 : -1]) == COST_COLUMNS
    row = bd[bd.codec == "tiny"].iloc[0]
    assert row.enc_kMAC_px == pytest.approx(tiny.enc_kMAC_px) and row.params == tiny.params

    # the report prints the columns and names the machine
    assert cli(["report", str(first.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "enc_s_per_MP" in out and "dec_kMAC_px" in out and f"measured on {here}" in out
    assert "Coding time" in (first.run_dir / "report.md").read_text()

    # the same encodes reused by a later run keep the machine of the run that encoded them
    store = Store(tmp_path / "out")
    try:
        prov = json.loads(store.run_info(first.run_id)["provenance"])
        prov["machine"] = {**prov["machine"], "hostname": "encoder-box", "gpus": ["Test GPU"]}
        store.conn.execute("UPDATE runs SET provenance=? WHERE run_id=?", (json.dumps(prov), first.run_id))
    finally:
        store.close()
    again = run(cfg)
    assert again.work["encodes"] == 0 and again.run_id != first.run_id
    redone = load_results(again.run_dir / "results.csv")
    elsewhere = redone[redone.codec != "uncompressed"].timed_on
    assert set(elsewhere) == {machine_label(prov["machine"])} and "encoder-box" in elsewhere.iloc[0]
    assert any("encoder-box" in line and "GPU Test GPU" in line for line in cost_note(redone))


def test_old_results_without_cost_columns_still_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A results.csv written before the cost columns (no times, no pixels, no machine): tables keep the cost
    columns, empty; the report runs; a file with times but no machine says it does not name one."""
    rows = []
    for codec, pts in (("jpeg", [(0.2, 0.1), (0.5, 0.3), (1.0, 0.4), (2.0, 0.5)]),
                       ("vvenc", [(0.1, 0.12), (0.3, 0.33), (0.6, 0.42), (1.2, 0.5)])):  # fmt: skip
        for i, (bpp, value) in enumerate(pts):
            rows.append({"dataset": "coco", "task": "yolov5", "codec": codec, "quality": str(i), "metric": "map",
                         "headline": True, "value": value, "bpp": bpp, "psnr": 30.0 + i, "n_items": 5,
                         "n_failed": 0})  # fmt: skip
    old = pd.DataFrame(rows)
    path = tmp_path / "results.csv"
    old.to_csv(path, index=False)
    assert cli(["report", str(path), "--anchor", "jpeg"]) == 0
    out = capsys.readouterr().out
    assert "enc_s_per_MP" in out and "Coding time" not in out and "Complexity" not in out
    df = load_results(path)
    points, (bd, _) = points_table(df), bd_table(df, anchor="jpeg")
    assert points[COST_COLUMNS].isna().all().all() and bd[COST_COLUMNS].isna().all().all()
    assert np.isfinite(bd.bd_rate.iloc[0])

    timed = old.assign(encode_s=2.0, decode_s=1.0, pixels=4_000_000)
    assert points_table(timed).enc_s_per_MP.tolist() == [0.5] * 8
    note = cost_note(timed)
    assert len(note) == 1 and "does not name" in note[0]
