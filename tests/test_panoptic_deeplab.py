"""Panoptic-DeepLab: backbone structure, detectron2 key mapping, grouping post-process, the synth-trained model.

detectron2 is not installed and its model-zoo checkpoint cannot be downloaded here: the mapping is checked
against a state dict with the official key names and shapes, written out below from detectron2's module
definitions (projects/Panoptic-DeepLab/panoptic_deeplab/panoptic_seg.py, projects/DeepLab/deeplab/resnet.py,
detectron2/layers/aspp.py, detectron2/modeling/backbone/resnet.py) for the Cityscapes R52-DC5 config.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.errors import WeightsError
from vcmbench.metrics.panoptic import PanopticSample, decode_id_png, pq_compute
from vcmbench.models.panoptic_deeplab import (
    CITYSCAPES_R52_DC5,
    PanopticDeepLab,
    PanopticDeepLabConfig,
    PostProcessConfig,
    detectron2_to_ours,
    find_instance_centers,
    group_pixels,
    load_detectron2_checkpoint,
    merge_semantic_and_instance,
    panoptic_from_outputs,
)
from vcmbench.models.resnet import ResNet
from vcmbench.tasks.panoptic_deeplab import PanopticDeepLabTask, save_vcmbench_panoptic
from vcmbench.train.synth_tasks import LIGHT_PANOPTIC

REPO = Path(__file__).resolve().parent.parent
SYNTH_WEIGHTS = REPO / "weights" / "synth" / "synth_panoptic.pt"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    """One intra-op thread: on a 2-core machine shared with other jobs, two threads that wait on each other
    made these small models' inference 10x slower (torch.unique 100x); results do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- the official key names -----------------------------------------------------------------------
def detectron2_r52_dc5_keys(num_classes: int = 19) -> dict[str, tuple[int, ...]]:
    """Key -> shape of detectron2's PanopticDeepLab state dict, panoptic_deeplab_R_52_os16_mg124_poly_90k_bs32.

    detectron2 ``Conv2d`` holds its norm as ``.norm`` (SyncBN: weight, bias, running stats, num_batches_tracked);
    convs followed by a norm have no bias. Stem: DeepLabStem 3->64->64->128. Stages res2..res5 of
    BottleneckBlocks (3, 4, 6, 3), bottleneck 64..512, out 256..2048, projection ``shortcut`` in block 0.
    Heads: DeepLabV3PlusHead decoders on res2/res3/res5 (project 32/64; ASPP 256 on res5: convs.0 1x1,
    convs.1-3 atrous 3x3, convs.4 = [AvgPool, Conv2d 1x1 with bias], project 1x1 from 5*256), fuse_conv two 3x3;
    semantic decoder 256 + head (256) + predictor; instance decoder 128 + centre/offset heads (32) + predictors.
    """
    keys: dict[str, tuple[int, ...]] = {}

    def conv(prefix: str, cout: int, cin: int, k: int, norm: bool = True) -> None:
        keys[f"{prefix}.weight"] = (cout, cin, k, k)
        if norm:
            for n in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{prefix}.norm.{n}"] = (cout,)
            keys[f"{prefix}.norm.num_batches_tracked"] = ()
        else:
            keys[f"{prefix}.bias"] = (cout,)

    conv("backbone.stem.conv1", 64, 3, 3)
    conv("backbone.stem.conv2", 64, 64, 3)
    conv("backbone.stem.conv3", 128, 64, 3)
    cin, out, bott = 128, 256, 64
    for stage, n in zip((2, 3, 4, 5), (3, 4, 6, 3), strict=True):
        for b in range(n):
            p = f"backbone.res{stage}.{b}"
            i = cin if b == 0 else out
            if b == 0:
                conv(f"{p}.shortcut", out, i, 1)
            conv(f"{p}.conv1", bott, i, 1)
            conv(f"{p}.conv2", bott, bott, 3)
            conv(f"{p}.conv3", out, bott, 1)
        cin, out, bott = out, out * 2, bott * 2
    for head, dec in (("sem_seg_head", 256), ("ins_embed_head", 128)):
        a = f"{head}.decoder.res5.project_conv"
        conv(f"{a}.convs.0", 256, 2048, 1)
        for j in (1, 2, 3):
            conv(f"{a}.convs.{j}", 256, 2048, 3)
        conv(f"{a}.convs.4.1", 256, 2048, 1, norm=False)
        conv(f"{a}.project", 256, 5 * 256, 1)
        conv(f"{head}.decoder.res3.project_conv", 64, 512, 1)
        conv(f"{head}.decoder.res3.fuse_conv.0", dec, 64 + 256, 3)
        conv(f"{head}.decoder.res3.fuse_conv.1", dec, dec, 3)
        conv(f"{head}.decoder.res2.project_conv", 32, 256, 1)
        conv(f"{head}.decoder.res2.fuse_conv.0", dec, 32 + dec, 3)
        conv(f"{head}.decoder.res2.fuse_conv.1", dec, dec, 3)
    conv("sem_seg_head.head.0", 256, 256, 3)
    conv("sem_seg_head.head.1", 256, 256, 3)
    conv("sem_seg_head.predictor", num_classes, 256, 1, norm=False)
    for h, n_out in (("center", 1), ("offset", 2)):
        conv(f"ins_embed_head.{h}_head.0", 128, 128, 3)
        conv(f"ins_embed_head.{h}_head.1", 32, 128, 3)
        conv(f"ins_embed_head.{h}_predictor", n_out, 32, 1, norm=False)
    return keys


def _fake_zoo_pkl(path: Path, keys: dict[str, tuple[int, ...]], drop: set[str] = frozenset(), extra: dict | None = None) -> None:
    """A file in the model-zoo .pkl format; every array is filled with its key's index (float16, exact)."""
    model = {}
    for i, (k, shape) in enumerate(keys.items()):
        if k in drop:
            continue
        model[k] = np.full(shape, i, np.int64) if k.endswith("num_batches_tracked") else np.full(shape, i % 2000, np.float16)
    model.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)


def test_key_mapping_is_complete_and_shapes_match() -> None:
    keys = detectron2_r52_dc5_keys()
    with torch.device("meta"):
        ours = PanopticDeepLab(CITYSCAPES_R52_DC5).state_dict()
        mapped, unmatched = detectron2_to_ours({k: torch.zeros(s) for k, s in keys.items()})
    assert unmatched == []
    assert sorted(mapped) == sorted(ours), (sorted(set(ours) - set(mapped))[:5], sorted(set(mapped) - set(ours))[:5])
    assert len(keys) == len(ours) == 508
    bad = [(k, tuple(mapped[k].shape), tuple(v.shape)) for k, v in ours.items() if tuple(mapped[k].shape) != tuple(v.shape)]
    assert bad == []


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("zoo") / "model_final_bd324a.pkl"
    _fake_zoo_pkl(f, detectron2_r52_dc5_keys(), extra={"pixel_mean": np.zeros((3, 1, 1)), "pixel_std": np.ones((3, 1, 1))})
    return f


def test_load_detectron2_checkpoint_puts_every_array_in_place(zoo_file: Path) -> None:
    model, keys = load_detectron2_checkpoint(zoo_file), detectron2_r52_dc5_keys()
    state = model.state_dict()
    mapped, _ = detectron2_to_ours({k: torch.zeros(0) for k in keys})
    names = list(keys)
    for new, d2 in zip(mapped, names, strict=True):  # detectron2_to_ours keeps the order
        t = state[new]
        if not new.endswith("num_batches_tracked"):
            assert torch.all(t == float(names.index(d2) % 2000)), (d2, new)
    assert model.backbone.layer4[0].conv2.dilation == (2, 2) and model.backbone.layer4[2].conv2.dilation == (8, 8)
    assert model.backbone.layer4[0].conv2.stride == (1, 1) and model.backbone.layer4[0].downsample[0].stride == (1, 1)
    assert not model.training


def test_detectron2_checkpoint_errors(tmp_path: Path) -> None:
    keys = detectron2_r52_dc5_keys()
    f = tmp_path / "missing.pkl"
    _fake_zoo_pkl(f, keys, drop={"sem_seg_head.predictor.weight"})
    with pytest.raises(WeightsError, match=r"missing 1: \['semantic_predictor.weight'\]"):
        load_detectron2_checkpoint(f)
    g = tmp_path / "extra.pkl"
    _fake_zoo_pkl(g, keys, extra={"roi_heads.box_predictor.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(WeightsError, match="unexpected 1"):
        load_detectron2_checkpoint(g)
    h = tmp_path / "coco.pkl"  # a 133-class (COCO) checkpoint does not fit the 19-class config
    _fake_zoo_pkl(h, detectron2_r52_dc5_keys(num_classes=133))
    with pytest.raises(WeightsError, match="shape mismatch"):
        load_detectron2_checkpoint(h)
    evil = tmp_path / "evil.pkl"  # a pickle that would call a function when loaded is refused
    evil.write_bytes(pickle.dumps({"model": {}, "x": print}))
    with pytest.raises(WeightsError, match="builtins.print is not allowed"):
        load_detectron2_checkpoint(evil)
    # without num_batches_tracked (older checkpoints) it still loads
    nb = tmp_path / "nonbt.pkl"
    _fake_zoo_pkl(nb, keys, drop={k for k in keys if k.endswith("num_batches_tracked")})
    assert isinstance(load_detectron2_checkpoint(nb), PanopticDeepLab)


def test_r52_backbone_strides() -> None:
    net = ResNet(depth=50, stem="deeplab", stem_channels=128, res5_dilation=2, res5_multi_grid=(1, 2, 4))
    feats = net(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "res2": (256, 16, 24), "res3": (512, 8, 12), "res4": (1024, 4, 6), "res5": (2048, 4, 6)}  # fmt: skip
    assert tuple(net.stem.conv1.weight.shape) == (64, 3, 3, 3) and tuple(net.stem.conv3.weight.shape) == (128, 64, 3, 3)


def test_infer_keeps_the_input_size() -> None:
    torch.manual_seed(0)
    net = PanopticDeepLab(LIGHT_PANOPTIC).eval()
    with torch.inference_mode():
        out = net.infer(torch.rand(2, 3, 70, 100) * 255)
    assert out["semantic"].shape == (2, 14, 70, 100)
    assert out["center"].shape == (2, 1, 70, 100) and out["offset"].shape == (2, 2, 70, 100)


# ---- post-process --------------------------------------------------------------------------------
def test_find_instance_centers() -> None:
    h = torch.zeros(1, 40, 40)
    h[0, 5, 5] = 0.9
    h[0, 5, 8] = 0.5  # inside the 7x7 window of the stronger peak: suppressed
    h[0, 20, 20] = 0.3
    h[0, 30, 30] = 0.05  # below the threshold
    c = find_instance_centers(h, threshold=0.1, nms_kernel=7, top_k=200)
    assert sorted(map(tuple, c.tolist())) == [(5, 5), (20, 20)]
    assert find_instance_centers(h, 0.1, 7, top_k=1).tolist() == [[5, 5]]
    assert find_instance_centers(h, 0.1, 7, top_k=2).tolist() == [[5, 5], [20, 20]]
    assert find_instance_centers(h, 0.95, 7, top_k=1).tolist() == []
    assert sorted(map(tuple, find_instance_centers(h, 0.1, 1, None).tolist())) == [(5, 5), (5, 8), (20, 20)]


def test_group_pixels_follows_offsets() -> None:
    centers = torch.tensor([[2, 2], [2, 12]])
    offset = torch.zeros(2, 6, 16)
    yy, xx = torch.meshgrid(torch.arange(6.0), torch.arange(16.0), indexing="ij")
    # every pixel points at centre 2 (2, 12), although the left half is nearer to centre 1
    offset[0], offset[1] = 2 - yy, 12 - xx
    mask = torch.ones(6, 16, dtype=torch.bool)
    mask[:, 0] = False
    ids = group_pixels(centers, offset, mask)
    assert (ids[:, 1:] == 2).all() and (ids[:, 0] == 0).all()
    offset.zero_()
    ids = group_pixels(centers, offset, mask)  # zero offsets: the nearest centre
    assert (ids[:, 1:7] == 1).all() and (ids[:, 8:] == 2).all()


def test_merge_majority_vote_and_stuff_area() -> None:
    pp = PostProcessConfig(thing_classes=(1, 2), stuff_area=10, label_divisor=1000)
    semantic = torch.zeros(10, 10, dtype=torch.long)  # stuff class 0 everywhere
    semantic[0:3, 0:9] = 3  # stuff class 3: 27 px, but 9 of them belong to instance 1 below
    semantic[5:9, 0:4] = 1  # thing pixels, class 1 ...
    semantic[5:9, 0] = 2  # ... with a minority of class 2
    semantic[9, 9] = 4  # a 1-px stuff region: below stuff_area -> void
    instance = torch.zeros(10, 10, dtype=torch.long)
    instance[5:9, 0:4] = 1
    thing = torch.isin(semantic, torch.tensor([1, 2]))
    pan = merge_semantic_and_instance(semantic, instance, thing, pp)
    assert (pan[5:9, 0:4] == 1001).all()  # the whole instance takes the majority class 1
    assert (pan[0:3, 0:9] == 3000).all() and pan[9, 9] == -1
    assert (pan[semantic == 0] == 0).all()


def _synthetic_outputs(gt: np.ndarray, sem_of: dict[int, int], things: set[int], n_cls: int) -> tuple[torch.Tensor, ...]:
    """Perfect network outputs for a GT id map: one-hot logits, Gaussian centres, exact offsets."""
    h, w = gt.shape
    logits = torch.full((n_cls, h, w), -5.0)
    center = torch.zeros(1, h, w)
    offset = torch.zeros(2, h, w)
    yy, xx = np.mgrid[:h, :w]
    for sid, cls in sem_of.items():
        m = gt == sid
        logits[cls][torch.from_numpy(m)] = 5.0
        if cls in things:
            cy, cx = yy[m].mean(), xx[m].mean()
            g = np.exp(-((yy - round(cy)) ** 2 + (xx - round(cx)) ** 2) / (2 * 3.0**2))
            center[0] = torch.maximum(center[0], torch.from_numpy(g).float())
            offset[0][torch.from_numpy(m)] = torch.from_numpy(cy - yy[m]).float()
            offset[1][torch.from_numpy(m)] = torch.from_numpy(cx - xx[m]).float()
    return logits, center, offset


def test_post_process_of_perfect_outputs_gives_pq_one() -> None:
    gt = np.full((48, 64), 10, np.int64)  # stuff class 2 (3072 - 768 - 645 thing px = 1659 px)
    gt[:12] = 11  # stuff class 3
    gt[15:30, 5:20] = 1  # two things of class 0, one of class 1, touching
    gt[15:30, 20:32] = 2
    gt[32:44, 40:60] = 3
    sem_of = {10: 2, 11: 3, 1: 0, 2: 0, 3: 1}
    logits, center, offset = _synthetic_outputs(gt, sem_of, {0, 1}, 4)
    pp = PostProcessConfig(thing_classes=(0, 1), center_threshold=0.1, nms_kernel=7, top_k=200, stuff_area=50)
    ids, segs = panoptic_from_outputs(logits, center, offset, pp)
    assert sorted((s["class"], s["isthing"], s["area"]) for s in segs) == [(0, 1, 180), (0, 1, 225), (1, 1, 240),
                                                                           (2, 0, 1659), (3, 0, 768)]  # fmt: skip
    assert all(0 < s["score"] <= 1 for s in segs if s["isthing"])
    cats = [{"id": c, "isthing": int(c < 2)} for c in range(4)]
    gt_segs = [{"id": sid, "category_id": cls, "iscrowd": 0} for sid, cls in sem_of.items()]
    pred_segs = [{"id": s["id"], "category_id": s["class"]} for s in segs]
    assert pq_compute([PanopticSample(0, gt, gt_segs, ids, pred_segs)], cats)["pq"] == 1.0


def test_cityscapes_card_path_end_to_end(zoo_file: Path, tmp_path: Path) -> None:
    """The default card's path on a Cityscapes fixture: the R52-DC5 module with detectron2-format weights
    predicts; evaluation maps model classes (train ids) to label ids and scores with cityscapesscripts."""
    from tests.test_cityscapes import write_cityscapes
    from vcmbench.datasets.cityscapes import CityscapesDataset
    from vcmbench.metrics.panoptic import encode_id_png

    write_cityscapes(tmp_path / "cs", n_per_city=1)
    ds = CityscapesDataset(tmp_path / "cs", cache=tmp_path / "cache")
    # min_size null: the 64x128 fixture at its own size (the card would scale it to 1024x2048 like Cityscapes)
    card = CardSet().get("task", "panoptic_deeplab").with_settings(weights=str(zoo_file), device="cpu", min_size=None)
    task = build(card)
    items = ds.items()
    preds = {it.id: p for it, p in zip(items, task.predict([ds.load_image(it) for it in items]), strict=True)}
    assert all(decode_id_png(p["png"]).shape == (64, 128) for p in preds.values())
    assert task._pp is not None and task._pp.thing_classes == tuple(range(11, 19))
    m = task.evaluate(preds, ds)
    assert {"pq", "pq_th", "pq_st", "sq", "rq", "ap", "ap50", "ap_car"} <= set(m)  # AP from the instanceIds maps
    # the ground truth written as predictions, with classes as train ids, scores 1 through the same path
    gt = ds.panoptic_gt()
    train_id = {c["id"]: i for i, c in enumerate(gt.categories)}
    perfect = {}
    for it in items:
        ids, segs = gt.load(it.id)
        keep = [s for s in segs if not s["iscrowd"]]
        ids = np.where(np.isin(ids, [s["id"] for s in keep]), ids, 0)
        perfect[it.id] = {"png": encode_id_png(ids), "segments_info": [
            {"id": s["id"], "class": train_id[s["category_id"]], "isthing": int(s["id"] >= 1000), "score": 0.9}
            for s in keep]}  # fmt: skip
    m = task.evaluate(perfect, ds)
    assert m["pq"] == 1.0 and m["pq_th"] == 1.0 and m["pq_st"] == 1.0
    assert m["ap"] == 1.0 and m["ap50"] == 1.0 and m["ap_car"] == 1.0 and m["ap_person"] == 1.0


# ---- task + the synth-trained model --------------------------------------------------------------
@pytest.fixture(scope="session")
def synth_val(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as mp:  # the cache conftest gives every test (session fixtures run first)
        mp.setenv("VCMBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "vcmbench-cache"))
        ds = build(CardSet().get("dataset", "synth"))
        ds.check()
        ds.items()
    return ds


def _random_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    f = tmp_path / "random_panoptic.pt"
    save_vcmbench_panoptic(f, PanopticDeepLab(LIGHT_PANOPTIC).eval(), list(range(8)), {"note": "random weights"})
    return f


def _predict_all(task: PanopticDeepLabTask, ds: Any, items: list[Any]) -> dict[str, Any]:
    out = {}
    for i in range(0, len(items), 8):
        chunk = items[i : i + 8]
        for it, p in zip(chunk, task.predict([ds.load_image(x) for x in chunk]), strict=True):
            out[it.id] = p
    return out


def test_task_output_format_and_batching(tmp_path: Path, synth_val: Any) -> None:
    task = PanopticDeepLabTask(format="vcmbench", weights=str(_random_file(tmp_path)), min_size=None, max_size=None,
                               stuff_area=64, device="cpu")  # fmt: skip
    items = synth_val.items(limit=3)
    images = [synth_val.load_image(it) for it in items]
    preds = task.predict(images)
    json.dumps(preds)
    p = preds[0]
    assert (p["height"], p["width"]) == (240, 320)
    ids = decode_id_png(p["png"])
    assert ids.shape == (240, 320)
    assert sorted(int(v) for v in np.unique(ids) if v) == sorted(s["id"] for s in p["segments_info"])
    for s in p["segments_info"]:
        assert s["area"] == int((ids == s["id"]).sum()) and 0 <= s["class"] < 14
    (alone,) = task.predict(images[2:])  # batched with others or alone: the same segmentation
    same = decode_id_png(alone["png"]) == decode_id_png(preds[2]["png"])
    assert same.mean() > 0.999 and len(alone["segments_info"]) == len(preds[2]["segments_info"])
    assert task._pp is not None and task._pp.thing_classes == tuple(range(8))
    assert task.version().startswith("1+vcmbench+weights.sha256:")


def test_resize_path_maps_back_to_the_image(tmp_path: Path, synth_val: Any) -> None:
    """With min_size set the image is resized (detectron2's ResizeShortestEdge) and outputs come back at its size."""
    task = PanopticDeepLabTask(format="vcmbench", weights=str(_random_file(tmp_path)), min_size=120, max_size=1000,
                               device="cpu")  # fmt: skip
    assert task._input_size(240, 320) == (120, 160)
    assert PanopticDeepLabTask(min_size=1024, max_size=2048)._input_size(1024, 2048) == (1024, 2048)
    assert PanopticDeepLabTask(min_size=800, max_size=1000)._input_size(480, 1000) == (480, 1000)
    (p,) = task.predict([synth_val.load_image(synth_val.items(limit=1)[0])])
    assert decode_id_png(p["png"]).shape == (240, 320)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="format must be"):
        PanopticDeepLabTask(format="onnx")
    with pytest.raises(ValueError, match="nms_kernel"):
        PanopticDeepLabTask(nms_kernel=4)
    with pytest.raises(ValueError, match="unknown Panoptic-DeepLab config keys"):
        PanopticDeepLabTask(config={"depth": 50, "heads": 3})
    with pytest.raises(ValueError, match="carries its own config"):
        PanopticDeepLabTask(format="vcmbench", config={"depth": 18})
    assert PanopticDeepLabConfig.from_dict(CITYSCAPES_R52_DC5.to_dict()) == CITYSCAPES_R52_DC5


def test_synth_model_beats_random_weights(tmp_path: Path, synth_val: Any) -> None:
    """The trained light model scores well on synth val; the same architecture with random weights does not."""
    trained = build(CardSet().get("task", "synth_panoptic"))
    assert Path(trained.weights_path()) == SYNTH_WEIGHTS
    items = synth_val.items(limit=16)
    m = trained.evaluate(_predict_all(trained, synth_val, items), synth_val)
    rand = PanopticDeepLabTask(format="vcmbench", weights=str(_random_file(tmp_path)), min_size=None, max_size=None,
                               stuff_area=256)  # fmt: skip
    r = rand.evaluate(_predict_all(rand, synth_val, items), synth_val)
    assert r["pq"] < 0.1 and r["pq_th"] < 0.02, r
    # measured on these 16 images: pq 0.549, pq_th 0.287, pq_st 0.897, ap50 0.311 (random: pq 0.003)
    assert m["pq"] > 0.4 and m["pq_th"] > 0.2 and m["pq_st"] > 0.7, m
    assert m["ap50"] > 0.2, m
