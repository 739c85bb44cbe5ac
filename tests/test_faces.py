"""Face recall (privacy metric): MTCNN from the facenet-pytorch wheel on original and decoded images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from vcmbench.adapters import build
from vcmbench.cards import CardSet
from vcmbench.datasets.coco import CocoDataset
from vcmbench.tasks.faces import FacesTask, box_iou, match_count

pytest.importorskip("facenet_pytorch", reason="pip install facenet-pytorch --no-deps")


@pytest.fixture(scope="module")
def face_dataset(tmp_path_factory: pytest.TempPathFactory) -> CocoDataset:
    """A two-image COCO-layout folder: scikit-image's astronaut portrait (one face) and a coffee cup (none), at half size."""
    from skimage import data

    root = tmp_path_factory.mktemp("faces")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    images = []
    for i, img in ((1, data.astronaut()[::2, ::2]), (2, data.coffee()[::2, ::2])):
        name = f"{i:012d}.jpg"
        Image.fromarray(np.ascontiguousarray(img)).save(root / "val2017" / name, quality=95)
        images.append({"id": i, "file_name": name, "width": img.shape[1], "height": img.shape[0]})
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": [], "categories": []})
    )
    ds = CocoDataset(root)
    ds.check()
    return ds


@pytest.fixture(scope="module")
def task() -> FacesTask:
    t = build(CardSet().get("task", "faces"))
    t.load()
    return t


def test_matching() -> None:
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=float)
    b = np.array([[1, 1, 11, 11], [50, 50, 60, 60]], dtype=float)
    assert box_iou(a, b)[0, 0] == pytest.approx(81 / 119)
    assert match_count(a, b, 0.5) == 1
    assert match_count(a, b[:0], 0.5) == 0
    assert match_count(a, np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=float), 0.5) == 1  # one-to-one


def test_face_recall_on_original_jpeg_and_blurred(face_dataset: CocoDataset, task: FacesTask) -> None:
    original = face_dataset.load_image(face_dataset.all_items()[0])
    ref = task.predict([original])[0]
    assert len(ref) == 1 and ref[0][4] > 0.99
    x1, y1, x2, y2 = ref[0][:4]
    assert 75 < (x1 + x2) / 2 < 150 and 20 < (y1 + y2) / 2 < 100  # the astronaut's face
    coffee = face_dataset.load_image(face_dataset.all_items()[1])
    assert task.predict([coffee])[0] == []

    def recall(image: np.ndarray) -> dict[str, float]:
        return task.evaluate({"1": task.predict([image])[0], "2": []}, face_dataset)

    same = recall(original)
    assert same["face_recall"] == 1.0 and same["faces_ref"] == 1 and same["images_with_faces"] == 1
    buf = io.BytesIO()
    Image.fromarray(original).save(buf, "JPEG", quality=30)
    assert recall(np.asarray(Image.open(buf)))["face_recall"] == 1.0  # mild coding keeps the face
    blurred = np.asarray(Image.fromarray(original).filter(ImageFilter.GaussianBlur(8)))
    gone = recall(blurred)
    assert gone["face_recall"] == 0.0 and gone["faces_ref"] == 1
    # reference detections were cached on disk by image content
    cached = list(task._cache_file("x").parent.glob("*.json"))
    assert len(cached) == 2


def test_faces_in_a_run_and_in_the_report(face_dataset: CocoDataset, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from vcmbench.cli import main
    from vcmbench.run import RunConfig, run

    cfg = RunConfig(codecs=["jpeg"], tasks=["faces"], datasets=["coco"], data_roots={"*": str(face_dataset.root)},
                    qualities={"jpeg": [2, 50]}, out=str(tmp_path / "out"), progress=False)  # fmt: skip
    report = run(cfg)
    assert report.ok
    rows = {(r["codec"], r["quality"], r["metric"]): r for r in report.rows}
    assert rows[("uncompressed", None, "face_recall")]["value"] == 1.0
    assert rows[("uncompressed", None, "face_recall")]["headline"]
    assert rows[("jpeg", "50", "face_recall")]["value"] == 1.0
    assert rows[("jpeg", "50", "face_recall")]["lower_is_better"]  # the privacy metric: lower = more private
    assert not rows[("jpeg", "50", "faces_ref")]["lower_is_better"]
    assert rows[("jpeg", "2", "faces_ref")]["value"] == 1.0
    assert main(["report", str(tmp_path / "out"), "--anchor", "jpeg"]) == 0
    assert "face_recall" in capsys.readouterr().out
