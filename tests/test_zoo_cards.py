"""The CompressAI zoo anchors (codecs/bmshj2018-hyperprior.yaml, mbt2018-mean.yaml, cheng2020-anchor.yaml): their
cards name the zoo's own files and published hashes; weights come through vcmbench.weights, checked against the
sha256 prefix in the file name; offline with $VCMBENCH_WEIGHTS_DIR (a file in the zoo's state-dict layout that the
test writes: the real weights cannot be downloaded here)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.codecs.base import Bitstream
from vcmbench.codecs.learned import LearnedCodec, parse_rate_points, unpack_bitstream
from vcmbench.errors import CodecError, WeightsError
from vcmbench.media.hashing import file_sha256
from vcmbench.weights import resolve_weights

ZOO = {"bmshj2018-hyperprior": range(1, 9), "mbt2018-mean": range(1, 9), "cheng2020-anchor": range(1, 7)}


def _zoo() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from compressai.zoo import image_models
        from compressai.zoo.image import cfgs, model_urls
    return model_urls, cfgs, image_models


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty $VCMBENCH_WEIGHTS_DIR and a private cache (nothing found in the user's cache, nothing downloaded)."""
    d = tmp_path / "weights"
    d.mkdir()
    monkeypatch.setenv("VCMBENCH_WEIGHTS_DIR", str(d))
    monkeypatch.setenv("VCMBENCH_CACHE", str(tmp_path / "cache"))
    return d


def _codec(name: str) -> LearnedCodec:
    codec = build(CardSet().get("codec", name))
    assert isinstance(codec, LearnedCodec)
    return codec


def _write_zoo_file(codec: LearnedCodec, arch: str, quality: int, folder: Path) -> Path:
    """A randomly initialised zoo model of ``arch`` at ``quality`` (built by compressai.zoo itself), its state
    dict saved under the zoo's file name for that quality, as torch.hub would have saved the download."""
    _, _, image_models = _zoo()
    torch.manual_seed(quality)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = image_models[arch](quality=quality, metric="mse", pretrained=False)
    path = folder / codec.download_name(quality)
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_card_names_the_zoo_files_hashes_and_sizes_of_each_quality(arch: str) -> None:
    model_urls, cfgs, _ = _zoo()
    card = CardSet().get("codec", arch)
    codec = _codec(arch)
    assert list(card.qualities) == list(ZOO[arch]) == sorted(model_urls[arch]["mse"])
    assert codec.arch == arch and codec.keys == list(ZOO[arch])
    for q in ZOO[arch]:
        point = codec.points[q]
        assert point.url == model_urls[arch]["mse"][q]
        published = re.fullmatch(r".*-([0-9a-f]{8})\.pth\.tar", point.url).group(1)  # type: ignore[union-attr]
        assert point.sha256_prefix == published and point.sha256 is None
        assert codec.point_arch_kwargs(q) == dict(zip(("N", "M"), cfgs[arch][q], strict=False))
        assert codec.download_name(q) == point.url.rsplit("/", 1)[1]
    # coded as CompressAI's eval_model codes them
    assert (codec.scale_levels, codec.pad_multiple, codec.pad_mode) == (64, 64, "centre-zeros")


def test_a_file_that_fails_the_published_prefix_is_refused_naming_it_and_the_fix(weights_dir: Path) -> None:
    codec = _codec("bmshj2018-hyperprior")
    path = _write_zoo_file(codec, "bmshj2018-hyperprior", 1, weights_dir)
    actual = file_sha256(path)
    assert not actual.startswith("7eb97409"), "a random model cannot have the published weights' hash"
    with pytest.raises(WeightsError) as err:
        codec.checkpoint_path(1)
    msg = str(err.value)
    assert str(path) in msg and actual in msg and "does not start with 7eb97409" in msg
    assert "Fix: delete or replace" in msg and codec.points[1].url in msg  # type: ignore[operator]


@pytest.mark.parametrize("arch", sorted(ZOO))
def test_a_file_with_the_published_prefix_loads_and_codes_a_real_image(
    arch: str, weights_dir: Path, coco_mini: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    codec = _codec(arch)
    quality = 1
    path = _write_zoo_file(codec, arch, quality, weights_dir)
    prefix = file_sha256(path)[:8]
    # the published hash of this quality, as if the zoo had published the file the test wrote
    monkeypatch.setitem(codec.points, quality, dataclasses.replace(codec.points[quality], sha256_prefix=prefix))
    assert codec.checkpoint_path(quality) == path
    model = codec.model(quality)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    compared = 0
    for key, tensor in model.state_dict().items():  # the file's weights (and sizes), not a fresh initialisation
        if key.rsplit(".", 1)[-1] not in ("_quantized_cdf", "_offset", "_cdf_length", "scale_table"):
            assert torch.equal(tensor, saved[key]), key
            compared += 1
    assert compared > 20

    image_path = sorted((coco_mini / "val2017").glob("*.jpg"))[0]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    bs = codec.encode(image, quality)
    written = weights_dir.parent / "stream.bin"
    written.write_bytes(bs.data)
    # rate = every byte written: the header plus the entropy-coded strings, nothing else
    u = unpack_bitstream(written.read_bytes())
    assert written.stat().st_size == len(bs.data) == u.header_bytes + sum(len(s) for g in u.strings for s in g)
    assert (u.height, u.width) == image.shape[:2] and sum(len(s) for g in u.strings for s in g) > 0
    decoded = codec.decode(Bitstream(written.read_bytes(), width=image.shape[1], height=image.shape[0]))
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.array_equal(codec.decode(bs), decoded), "decoding is deterministic"


def test_prefix_checked_on_download_too(tmp_path: Path, weights_dir: Path) -> None:
    """A download (file:// here) whose sha256 fails the published prefix is discarded; a matching one is kept."""
    payload = b"zoo weights stand-in\n" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    src = tmp_path / "src" / f"model-1-{digest[:8]}.pth.tar"
    src.parent.mkdir()
    src.write_bytes(payload)
    url = src.as_uri()
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    with pytest.raises(WeightsError, match=f"does not start with {wrong}") as err:
        resolve_weights(None, url, None, src.name, "codec zoo", sha256_prefix=wrong)
    assert "The download was discarded" in str(err.value)
    assert not (tmp_path / "cache" / "weights" / src.name).exists()
    got = resolve_weights(None, url, None, src.name, "codec zoo", sha256_prefix=digest[:8])
    assert got == tmp_path / "cache" / "weights" / src.name and got.read_bytes() == payload
    with pytest.raises(WeightsError, match="not 8 to 64 hex digits"):
        resolve_weights(None, url, None, src.name, "codec zoo", sha256_prefix="7eb9")


def test_rate_point_sha256_prefix_rules() -> None:
    url = "https://example.org/m-1-7eb97409.pth.tar"
    points = parse_rate_points({1: {"url": url, "sha256_prefix": "7EB97409", "arch_kwargs": {"N": 8}}}, "codec z")
    assert points[1].sha256_prefix == "7eb97409" and points[1].arch_kwargs == {"N": 8}
    with pytest.raises(CodecError, match="both sha256: and sha256_prefix:"):
        parse_rate_points({1: {"url": url, "sha256": "a" * 64, "sha256_prefix": "7eb97409"}}, "codec z")
    with pytest.raises(CodecError, match="quote it in YAML"):
        parse_rate_points({1: {"url": url, "sha256_prefix": 23852949}}, "codec z")
    with pytest.raises(CodecError, match="not a string of 8 to 63 hex"):
        parse_rate_points({1: {"url": url, "sha256_prefix": "7eb9"}}, "codec z")
    with pytest.raises(CodecError, match="has no sha256"):
        parse_rate_points({1: {"url": url}}, "codec z")
    with pytest.raises(CodecError, match="arch_kwargs must be a mapping"):
        parse_rate_points({1: {"url": url, "sha256_prefix": "7eb97409", "arch_kwargs": [8]}}, "codec z")
