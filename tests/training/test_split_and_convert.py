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
    SplitPlan,
    assign_splits,
    boxes_from_label_lines,
    file_stem,
    prepare_dataset,
    yolo_label_lines,
)

# Small minimums: the mechanics on a few dozen synthetic tags (the configured ones are in config.yaml).
PLAN = SplitPlan(
    validation_fraction=0.1, test_fraction=0.1, min_validation_images=3, min_test_images=4, min_test_defects=2
)
CONFIGURED = SplitPlan(
    validation_fraction=0.1, test_fraction=0.1, min_validation_images=15, min_test_images=30, min_test_defects=20
)


def _manifest(folder: Path, samples, *, min_images: int = 1):
    write_offline_store(synthetic_records(samples), folder / "store")
    return export_dataset(
        read_offline_store(folder / "store"),
        LocalImageStore(samples[0].path.parent),
        folder / "export",
        options=ExportOptions(class_names=["scratch", "dent", "stain"], min_images=min_images),
    ).manifest


def _uris(count: int, start: int = 0) -> list[str]:
    return [f"s3://data/raw-images/line-1/frame-{i:05d}.jpg" for i in range(start, start + count)]


def test_a_large_dataset_splits_by_the_fractions_and_keeps_every_image_in_its_split_as_images_are_added():
    before = assign_splits(_uris(2000), CONFIGURED)
    after = assign_splits(_uris(3000), CONFIGURED)  # 1000 images more
    assert all(after[uri] == split for uri, split in before.items())
    counts = Counter(after.values())
    assert 240 <= counts["test"] <= 360 and 240 <= counts["val"] <= 360  # ~10% each


@pytest.mark.parametrize("total", [90, 120, 188, 250])
def test_a_small_dataset_gets_the_minimum_test_and_validation_splits(total):
    counts = Counter(assign_splits(_uris(total), CONFIGURED).values())
    assert counts["test"] >= 30 and counts["val"] >= 15
    assert counts["train"] >= total / 2


def test_as_images_are_added_no_image_ever_enters_the_test_split_from_training():
    # The test threshold only goes down: yesterday's train and validation images never become test images,
    # so a champion is never scored on an image it learned from. (Test images may move on to training.)
    previous = assign_splits(_uris(90), CONFIGURED)
    for total in range(91, 400, 7):
        current = assign_splits(_uris(total), CONFIGURED)
        entered = [uri for uri, split in previous.items() if split != "test" and current[uri] == "test"]
        assert entered == [], (total, entered)
        previous = current


def test_too_few_labeled_images_to_judge_a_model_fail_with_how_many_are_needed():
    with pytest.raises(
        DatasetError,
        match=r"80 labeled images are too few .* test split needs at least 30 images and the validation split 15, "
        r"with as many again to train on; label at least 10 more \(90 in all\)",
    ):
        assign_splits(_uris(80), CONFIGURED)
    with pytest.raises(ValueError, match="at least half of the images for training"):
        SplitPlan(
            validation_fraction=0.3, test_fraction=0.3, min_validation_images=1, min_test_images=1, min_test_defects=1
        )


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
    prepared = prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", plan=PLAN)

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
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", plan=PLAN)


def test_too_few_images_fail_before_anything_is_written(tmp_path):
    samples = write_dataset(tmp_path / "images", 12, seed=2)
    manifest = _manifest(tmp_path, samples)
    with pytest.raises(DatasetError, match=r"12 labeled images are too few .* label at least 2 more \(14 in all\)"):
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", plan=PLAN)
    assert not (tmp_path / "yolo").exists()


def test_a_test_split_without_enough_defects_cannot_measure_the_model(tmp_path):
    samples = write_dataset(tmp_path / "images", 40, seed=9, empty_fraction=1.0)  # no defect anywhere
    manifest = _manifest(tmp_path, samples)
    with pytest.raises(
        DatasetError, match=r"test split \(\d+ images\) holds 0 labeled defect\(s\), fewer than the 2 needed"
    ):
        prepare_dataset(manifest, LocalImageStore(tmp_path / "images"), tmp_path / "yolo", plan=PLAN)
