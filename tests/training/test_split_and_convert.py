"""Step 2: a stable split, exact YOLO labels for any image type, and a dataset recreated only exactly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from shared.synthetic import write_dataset
from training.local import synthetic_records
from training.steps.dataset import (
    DatasetError,
    ExportOptions,
    LocalImageStore,
    export_dataset,
    read_offline_store,
    write_offline_store,
)
from training.steps.prepare import (
    SPLITS,
    PreparedDataset,
    assign_split,
    boxes_from_label_lines,
    file_stem,
    prepare_dataset,
    yolo_label_lines,
)

FRACTIONS = {"validation_fraction": 0.1, "test_fraction": 0.1}


def _manifest(folder: Path, samples, *, min_images: int = 1):
    write_offline_store(synthetic_records(samples), folder / "store")
    return export_dataset(
        read_offline_store(folder / "store"),
        LocalImageStore(samples[0].path.parent),
        folder / "export",
        options=ExportOptions(class_names=["scratch", "dent", "stain"], min_images=min_images),
    ).manifest


def test_the_split_depends_only_on_the_image_so_adding_images_moves_none():
    uris = [f"s3://data/raw-images/line-1/frame-{i:05d}.jpg" for i in range(3000)]
    before = {uri: assign_split(uri, **FRACTIONS) for uri in uris[:2000]}
    after = {uri: assign_split(uri, **FRACTIONS) for uri in uris}  # 1000 images more
    assert all(after[uri] == split for uri, split in before.items())
    counts = Counter(after.values())
    assert 240 <= counts["test"] <= 360 and 240 <= counts["val"] <= 360  # ~10% each
    with pytest.raises(ValueError, match="fractions"):
        assign_split(uris[0], validation_fraction=0.6, test_fraction=0.5)


def test_label_files_match_the_boxes_to_the_pixel_for_jpg_png_and_other_types(tmp_path):
    samples = write_dataset(
        tmp_path / "images", 60, seed=11, width=320, height=240, num_classes=3, image_format="mixed"
    )
    bmp = samples[0].path.with_suffix(".bmp")  # any type Pillow reads: BMP is copied, GIF re-encoded
    Image.open(samples[0].path).save(bmp)
    gif = samples[1].path.with_name("gif-frame.gif")
    Image.open(samples[1].path).save(gif)
    samples[0] = type(samples[0])(bmp, samples[0].width, samples[0].height, samples[0].boxes)
    samples[1] = type(samples[1])(gif, samples[1].width, samples[1].height, samples[1].boxes)
    manifest = _manifest(tmp_path, samples)
    prepared = prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", **FRACTIONS)

    assert sum(prepared.counts.values()) == 60 and all(prepared.counts[s] > 0 for s in SPLITS)
    checked_boxes = 0
    suffixes = set()
    for sample in samples:
        uri = f"s3://local-synthetic/raw-images/{sample.path.name}"
        split, stem = prepared.splits[uri], file_stem(uri)
        (image_file,) = (prepared.root / "images" / split).glob(f"{stem}.*")
        suffixes.add(image_file.suffix)
        with Image.open(image_file) as image:
            assert image.size == (sample.width, sample.height)
        lines = (prepared.root / "labels" / split / f"{stem}.txt").read_text().splitlines()
        restored = boxes_from_label_lines(lines, sample.width, sample.height)
        assert len(restored) == len(sample.boxes)
        for (class_id, x1, y1, x2, y2), box in zip(restored, sample.boxes, strict=True):
            assert class_id == box.class_id
            assert max(abs(x1 - box.x1), abs(y1 - box.y1), abs(x2 - box.x2), abs(y2 - box.y2)) < 0.01  # px
            checked_boxes += 1
    assert checked_boxes > 60 and suffixes == {".jpg", ".png", ".bmp"}  # the GIF became a PNG
    data = json.loads((prepared.root / "data.yaml").read_text())
    assert data["names"] == {"0": "scratch", "1": "dent", "2": "stain"} and data["path"] == str(prepared.root.resolve())
    assert PreparedDataset.load(prepared.root) == prepared


def test_a_box_becomes_a_normalized_centre_size_line():
    from shared.contracts import Annotation

    assert yolo_label_lines([Annotation(1, 10, 20, 50, 60)], 200, 100) == ["1 0.150000 0.400000 0.200000 0.400000"]


def test_the_same_file_name_from_two_devices_gives_two_files():
    assert file_stem("s3://d/raw-images/edge/a/frame-1.jpg") != file_stem("s3://d/raw-images/edge/b/frame-1.jpg")


def test_an_image_that_changed_since_the_manifest_cannot_recreate_the_dataset(tmp_path):
    samples = write_dataset(tmp_path / "images", 30, seed=5)
    manifest = _manifest(tmp_path, samples)
    samples[4].path.write_bytes(samples[5].path.read_bytes())
    with pytest.raises(DatasetError, match=rf"cannot recreate the dataset: .*{samples[4].path.name} has content"):
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", **FRACTIONS)


def test_a_split_left_empty_fails_with_the_reason(tmp_path):
    samples = write_dataset(tmp_path / "images", 3, seed=2)
    manifest = _manifest(tmp_path, samples)
    with pytest.raises(DatasetError, match=r"split\(s\) of 3 images are empty .* label more images"):
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", **FRACTIONS)


def test_a_test_split_without_any_defect_cannot_measure_the_model(tmp_path):
    samples = write_dataset(tmp_path / "images", 40, seed=9, empty_fraction=1.0)  # no defect anywhere
    manifest = _manifest(tmp_path, samples)
    with pytest.raises(DatasetError, match=r"test split \(\d+ images\) has no labeled defect"):
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", **FRACTIONS)
