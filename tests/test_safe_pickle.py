"""No pickled checkpoint runs code: YOLOv5, YOLOv7 and Ultralytics checkpoints are unpickled by the restricted
unpickler of vcmbench/models/safe_pickle.py, whatever their sha256, and the real ones still load.

Each malicious file below is a real ``torch.save`` checkpoint whose pickle, if executed, writes a marker file;
every loader must refuse it with an error naming the file and the refused global, and leave no marker.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vcmbench.errors import WeightsError
from vcmbench.media.hashing import file_sha256
from vcmbench.models.safe_pickle import (  # noqa: E402
    FAMILIES,
    RestrictedUnpickler,
    UnsafeCheckpointError,
    load_checkpoint,
)

REPO = Path(__file__).resolve().parent.parent
SYNTH = REPO / "weights" / "synth"


def write_marker(path: str) -> None:
    """What a malicious pickle calls: a function that writes a file."""
    Path(path).write_text("ran")


class Reduces:
    """Pickles as ``func(*args)``: any function a pickle names is called while it is loaded."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _yolov5_config_with_code(marker: Path) -> dict[str, Any]:
    """A YOLOv5 model config whose module name is Python that writes ``marker``: yolov5's parse_model evals it
    when ``DetectionModel(cfg)`` is *called* (the restricted unpickler only ever rebuilds model classes)."""
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') and Conv"
    return {"nc": 1, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": [[10, 13, 16, 30, 33, 23]],
            "backbone": [[-1, 1, code, [16, 3, 2]]], "head": [[[0], 1, "Detect", ["nc", "anchors"]]]}  # fmt: skip


def _payloads(marker: Path) -> dict[str, tuple[Any, str]]:
    """name -> (object whose pickle writes ``marker`` when loaded, the refused global it must be named by)."""
    inner = io.BytesIO()
    torch.save({"model": Reduces(write_marker, str(marker))}, inner)
    out = {
        "os.system": (Reduces(os.system, f"echo ran > {marker}"), f"{os.system.__module__}.system"),
        "builtins.exec": (Reduces(builtins.exec, f"open({str(marker)!r}, 'w').write('ran')"), "builtins.exec"),
        "a function that writes a file": (Reduces(write_marker, str(marker)), f"{__name__}.write_marker"),
        "a nested torch.load": (Reduces(torch.storage._load_from_bytes, inner.getvalue()),
                                "torch.storage._load_from_bytes"),  # fmt: skip
    }
    if _has("yolov5"):
        import yolov5.models.yolo as v5_yolo

        out["a model class called"] = (Reduces(v5_yolo.DetectionModel, _yolov5_config_with_code(marker)),
                                       "yolov5.models.yolo.DetectionModel")  # fmt: skip
    return out


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _malicious(tmp_path: Path, kind: str) -> tuple[Path, Path, str]:
    marker = tmp_path / f"marker-{abs(hash(kind))}.txt"
    payload, refused = _payloads(marker)[kind]
    path = tmp_path / "evil.pt"
    torch.save({"epoch": -1, "model": payload, "ema": None, "optimizer": None}, path)
    assert not marker.exists()
    return path, marker, refused


KINDS = ["os.system", "builtins.exec", "a function that writes a file", "a nested torch.load", "a model class called"]


def _yolov5_task(path: Path, sha: str) -> Any:
    from vcmbench.tasks.yolov5 import YOLOv5Task  # yolov5 is a core dependency: no skip

    return YOLOv5Task(weights=str(path), sha256=sha, device="cpu")


def _yolov7_task(path: Path, sha: str) -> Any:
    from vcmbench.tasks.yolov7 import YOLOv7Task  # yolov5 and yolov7-package are core dependencies: no skip

    return YOLOv7Task(weights=str(path), sha256=sha, device="cpu")


def _ultralytics_task(path: Path, sha: str) -> Any:
    from vcmbench.tasks.ultralytics_yolo import UltralyticsDetectTask

    return UltralyticsDetectTask(weights=str(path), sha256=sha, device="cpu")


LOADERS: dict[str, Callable[[Path, str], Any]] = {
    "yolov5 load": lambda p, sha: _yolov5_task(p, sha).load(),
    "yolov5 class names": lambda p, sha: _yolov5_task(p, sha).class_names(),
    "yolov7 load": lambda p, sha: _yolov7_task(p, sha).load(),
    "yolov7 class names": lambda p, sha: _yolov7_task(p, sha).class_names(),
    "ultralytics load": lambda p, sha: _ultralytics_task(p, sha).load(),
    "ultralytics class names": lambda p, sha: _ultralytics_task(p, sha).names(),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loader", LOADERS)
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, loader: str, kind: str) -> None:
    """Refused even with the file's own sha256 set: a matching checksum says the file is the one named, not
    that it is safe."""
    if kind == "a model class called" and not _has("yolov5"):
        pytest.skip("needs the yolov5 package")
    path, marker, refused = _malicious(tmp_path, kind)
    with pytest.raises(UnsafeCheckpointError, match=rf"refused to load checkpoint {path}: it references .*{refused}"):
        LOADERS[loader](path, file_sha256(path))
    assert not marker.exists(), "the checkpoint ran code"


def test_synth_export_refuses_a_malicious_training_checkpoint(tmp_path: Path) -> None:
    from vcmbench.train.synth_yolo import export_checkpoint

    path, marker, refused = _malicious(tmp_path, "os.system")
    dest = tmp_path / "out" / "synth_det.pt"
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}.*{refused}"):
        export_checkpoint(path, dest)
    assert not marker.exists() and not dest.exists()


# -- the restricted unpickler itself -------------------------------------------------------------------------
def _unpickler(data: bytes, family: str = "yolov5") -> RestrictedUnpickler:
    return RestrictedUnpickler(io.BytesIO(data), family=FAMILIES[family], source="test.pt")


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "__import__"), ("torch", "load"),
     ("torch.serialization", "load"), ("torch.storage", "_load_from_bytes"), ("subprocess", "Popen"),
     ("torch.hub", "load"), ("torch.nn.modules.module", "register_module_forward_hook"),
     ("yolov5.utils.general", "check_requirements"), ("models.yolo", "Detect.forward")],
)  # fmt: skip
def test_globals_outside_the_allow_list_are_refused(module: str, name: str) -> None:
    with pytest.raises(UnsafeCheckpointError, match=rf"test.pt: it references the global .*{name}"):
        _unpickler(b"").find_class(module, name)


def test_a_refused_module_is_not_even_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported.txt"
    (tmp_path / "vcm_evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\nthing = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = b"\x80\x02cvcm_evil_module\nthing\nK\x01\x85R."  # vcm_evil_module.thing(1)
    with pytest.raises(UnsafeCheckpointError, match="vcm_evil_module.thing"):
        _unpickler(data).load()
    assert not marker.exists() and "vcm_evil_module" not in sys.modules


def test_model_classes_are_rebuilt_never_called_and_state_never_set_on_a_class() -> None:
    import yolov5.models.yolo as v5_yolo

    u = _unpickler(b"")
    assert u.find_class("models.yolo", "DetectionModel") is v5_yolo.DetectionModel  # upstream name remapped
    assert u.find_class("torch.nn.modules.conv", "Conv2d") is torch.nn.Conv2d
    assert u.find_class("torch", "float16") is torch.float16
    inst = b"\x80\x02(X\x01\x00\x00\x00xq\x00imodels.yolo\nDetectionModel\n."  # protocol-0 INST with an argument
    with pytest.raises(UnsafeCheckpointError, match="a call of yolov5.models.yolo.DetectionModel"):
        _unpickler(inst).load()
    build = b"\x80\x02ccollections\nOrderedDict\n}X\x03\x00\x00\x00keyK\x01sb."  # BUILD on the class itself
    with pytest.raises(UnsafeCheckpointError, match="state set on <class 'collections.OrderedDict'>"):
        _unpickler(build).load()
    ok = pickle.dumps({"a": [1, 2.0, {3}], "b": np.float64(0.5), "c": np.arange(3), "d": b"x"}, protocol=2)
    loaded = _unpickler(ok).load()
    assert loaded["a"] == [1, 2.0, {3}] and loaded["b"] == 0.5 and loaded["c"].tolist() == [0, 1, 2]


def test_getattr_reaches_module_attributes_only() -> None:
    """Ultralytics checkpoints pickle e.g. ``getattr(head, "forward")``; nothing else may be reached."""
    relu = torch.nn.ReLU()
    ok = pickle.dumps(Reduces(getattr, relu, "forward"), protocol=2)
    assert _unpickler(ok, "ultralytics").load().__func__ is torch.nn.ReLU.forward
    for target, name in ((relu, "__class__"), (torch.nn.ReLU, "__init__"), ("x", "join"), ({}, "clear")):
        data = pickle.dumps(Reduces(getattr, target, name), protocol=2)
        with pytest.raises(pickle.UnpicklingError, match="refused getattr"):
            _unpickler(data, "ultralytics").load()


def test_a_name_missing_from_the_model_code_is_a_plain_load_error() -> None:
    """A foreign checkpoint (a YOLOv5 class the yolov7 code lacks) is not reported as a threat."""
    with pytest.raises(pickle.UnpicklingError, match="yolov7_package.models.common.C3 does not exist") as err:
        _unpickler(b"", "yolov7").find_class("models.common", "C3")
    assert not isinstance(err.value, UnsafeCheckpointError)


# -- the real checkpoints still load ----------------------------------------------------------------------------
def test_official_yolov5n_loads(yolov5n_weights: Path) -> None:
    ckpt = load_checkpoint(yolov5n_weights, "yolov5")
    model = ckpt["model"]
    assert type(model).__module__ == "yolov5.models.yolo" and len(model.names) == 80 and model.yaml["nc"] == 80
    assert 1.8e6 < sum(p.numel() for p in model.parameters()) < 2e6  # yolov5n: 1.9 M parameters


@pytest.mark.parametrize("name", ["synth_det", "synth_seg"])
def test_committed_synth_weights_load_and_predict_without_an_unrestricted_load(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ultralytics' own loader is replaced while the model loads; the predictor then reuses the loaded model
    (no torch.load of its own)."""
    from vcmbench.tasks.ultralytics_yolo import UltralyticsDetectTask, UltralyticsSegmentTask

    path = SYNTH / f"{name}.pt"
    cls = UltralyticsDetectTask if name == "synth_det" else UltralyticsSegmentTask
    task = cls(weights=str(path), sha256=file_sha256(path), device="cpu", img_size=64)
    task.load()
    assert sorted(task.names().values()) == sorted(["disc", "ball", "crate", "panel", "kite", "star", "pill", "face"])

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an unrestricted torch.load")

    monkeypatch.setattr(torch, "load", no_load)
    (pred,) = task.predict([np.zeros((48, 64, 3), np.uint8)])
    assert isinstance(pred, (list, dict))


def test_synth_export_of_a_training_checkpoint(tmp_path: Path) -> None:
    """What Ultralytics' trainer saves (EMA model with its args namespace, optimizer state, numpy metrics,
    paths) loads through the restricted unpickler and is exported without the optimizer."""
    from ultralytics.utils import IterableSimpleNamespace

    from vcmbench.train.synth_yolo import export_checkpoint

    model = load_checkpoint(SYNTH / "synth_det.pt", "ultralytics")["model"].float()
    model.args = IterableSimpleNamespace(imgsz=320, data="/tmp/x/data.yaml")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # an optimizer state of tensors per parameter
    src = tmp_path / "best.pt"
    torch.save({"epoch": 3, "best_fitness": np.float64(0.5), "model": None, "ema": model, "updates": 10,
                "optimizer": opt.state_dict(), "scaler": {}, "train_args": {"data": "/tmp/x/data.yaml", "imgsz": 320},
                "train_metrics": {"metrics/mAP50(B)": np.float64(0.7)}, "train_results": {"epoch": [1, 2, 3]},
                "date": "2025-01-01T00:00:00", "version": "8", "git": {"root": None}, "license": "AGPL-3.0",
                "docs": "https://docs.ultralytics.com"}, src)  # fmt: skip
    sha = export_checkpoint(src, tmp_path / "synth_det.pt")
    out = load_checkpoint(tmp_path / "synth_det.pt", "ultralytics")
    assert sha == file_sha256(tmp_path / "synth_det.pt") and out["optimizer"] is None
    assert out["train_args"]["data"] == "data.yaml" and next(out["model"].parameters()).dtype == torch.float16


def test_unsafe_checkpoint_error_is_a_weights_error() -> None:
    assert issubclass(UnsafeCheckpointError, WeightsError)
