"""The synthetic tags the tests train and infer on."""

from __future__ import annotations

import json

from PIL import Image

from shared.synthetic import write_dataset


def test_dataset_is_deterministic_and_boxes_lie_inside_the_images(tmp_path):
    first = write_dataset(tmp_path / "a", 30, seed=7, width=200, height=160, num_classes=3, image_format="mixed")
    second = write_dataset(tmp_path / "b", 30, seed=7, width=200, height=160, num_classes=3, image_format="mixed")
    assert [s.boxes for s in first] == [s.boxes for s in second]
    assert {s.path.suffix for s in first} == {".jpg", ".png"}
    assert any(not s.boxes for s in first) and any(s.boxes for s in first)
    assert {b.class_id for s in first for b in s.boxes} <= {0, 1, 2}
    for sample in first:
        with Image.open(sample.path) as image:
            assert image.size == (200, 160) and image.mode == "RGB"
        for box in sample.boxes:
            assert 0 <= box.x1 < box.x2 <= 200 and 0 <= box.y1 < box.y2 <= 160


def test_labels_file_matches_the_samples(tmp_path):
    samples = write_dataset(tmp_path, 5, seed=1)
    lines = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert [line["image"] for line in lines] == [s.path.name for s in samples]
    assert [len(line["boxes"]) for line in lines] == [len(s.boxes) for s in samples]
