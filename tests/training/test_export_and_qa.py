"""Step 1: reading the offline store, the newest approved label per image, QA of every bad input, the manifest."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.contracts import Annotation, LabelRecord, format_event_time
from tests.training.conftest import image_bytes
from training.steps import cli
from training.steps.dataset import (
    DatasetError,
    DatasetManifest,
    ExportOptions,
    ImageNotFound,
    LocalImageStore,
    S3ImageStore,
    export_dataset,
    latest_labels,
    read_offline_store,
    write_offline_store,
)

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def record(name: str, *, at: datetime = T0, status: str = "approved", boxes=((0, 5, 5, 20, 20),), size=(64, 48)):
    return LabelRecord(
        image_uri=f"s3://data-bucket/raw-images/{name}",
        event_time=format_event_time(at),
        image_width=size[0],
        image_height=size[1],
        annotations=tuple(Annotation(c, x1, y1, x2, y2) for c, x1, y1, x2, y2 in boxes),
        review_status=status,
        labeling_job="job-1",
    )


def rows_of(records, tmp_path: Path, **kwargs) -> list[dict]:
    folder = tmp_path / "store"
    write_offline_store(records, folder, **kwargs)
    return read_offline_store(folder)


def test_reads_every_parquet_file_of_the_offline_store_layout(source):
    rows = read_offline_store(source.offline_store)
    assert len(rows) == len(source.records) == 24
    files = list(source.offline_store.rglob("*.parquet"))
    assert len(files) == 1 and files[0].parent.name.startswith("hour=")  # Feature Store's partition folders
    assert {"write_time", "api_invocation_time", "is_deleted"} <= set(rows[0])
    assert isinstance(rows[0]["image_width"], int)  # Integral features come back as integers


def test_the_newest_record_per_image_decides_and_a_later_rejection_withdraws_an_approval(tmp_path):
    records = [
        record("a.png", at=T0, status="approved"),
        record("a.png", at=T0 + timedelta(hours=1), status="rejected"),  # newest: rejected -> no label
        record("b.png", at=T0, status="rejected"),
        record("b.png", at=T0 + timedelta(hours=1), status="approved", boxes=((0, 1, 1, 9, 9),)),
        record("c.png", at=T0, status="approved"),
    ]
    labels = latest_labels(rows_of(records, tmp_path))
    assert [r.image_uri.rsplit("/", 1)[1] for r in labels.approved] == ["b.png", "c.png"]
    assert labels.approved[0].annotations == (Annotation(0, 1, 1, 9, 9),)
    assert (labels.records_read, labels.images_seen, labels.not_approved) == (5, 3, 1)


def test_equal_event_times_are_decided_by_the_api_invocation_time(tmp_path):
    first, second = record("a.png", boxes=((0, 1, 1, 5, 5),)), record("a.png", boxes=((0, 2, 2, 8, 8),))
    rows = rows_of([first], tmp_path / "one", written_at=T0 + timedelta(minutes=5))
    rows += rows_of([second], tmp_path / "two", written_at=T0 + timedelta(minutes=1))
    (chosen,) = latest_labels(rows).approved
    assert chosen.annotations == first.annotations  # written later, although listed first


def test_a_deleted_newest_record_removes_the_image(tmp_path):
    labels = latest_labels(rows_of([record("a.png"), record("b.png")], tmp_path, deleted=[True, False]))
    assert [r.image_uri for r in labels.approved] == ["s3://data-bucket/raw-images/b.png"]
    assert labels.deleted == 1


def _export(records, images: dict[str, bytes], tmp_path: Path, *, min_images=1, class_names=("scratch",)):
    folder = tmp_path / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)
    return export_dataset(
        rows_of(records, tmp_path),
        LocalImageStore(folder),
        tmp_path / "out",
        options=ExportOptions(class_names=class_names, min_images=min_images, workers=2),
        source="test-store",
    )


BAD_INPUTS = {
    "corrupt image": (record("bad.png"), {"bad.png": b"\x89PNG\r\n\x1a\n not really a png"}, r"unreadable image"),
    "truncated image": (record("cut.jpg"), {"cut.jpg": image_bytes(image_format="JPEG")[:300]}, r"unreadable image"),
    "zero-byte image": (record("empty.jpg"), {"empty.jpg": b""}, r"^empty image file \(0 bytes\)$"),
    "missing image": (record("gone.png"), {}, r"image missing: .*gone\.png"),
    "box outside the image": (
        record("out.png", boxes=((0, 40, 30, 70, 47),)),
        {"out.png": image_bytes()},
        r"box \(40\.0, 30\.0, 70\.0, 47\.0\) outside the 64x48 image",
    ),
    "degenerate box": (
        record("flat.png", boxes=((0, 10, 10, 10, 30),)),
        {"flat.png": image_bytes()},
        r"degenerate box",
    ),
    "unknown class": (
        record("what.png", boxes=((3, 1, 1, 9, 9),)),
        {"what.png": image_bytes()},
        r"unknown class id 3 \(only 1 classes\)",
    ),
    "other size than labeled": (
        record("small.png"),
        {"small.png": image_bytes(32, 24)},
        r"image is 32x24 but the label was drawn on 64x48",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_each_bad_input_is_dropped_and_reported_by_name(case, tmp_path):
    bad, files, reason = BAD_INPUTS[case]
    good = [record(f"good-{i}.png") for i in range(3)]
    images = {**files, **{f"good-{i}.png": image_bytes() for i in range(3)}}
    result = _export([*good, bad], images, tmp_path)
    assert [e.image_uri for e in result.manifest.images] == [g.image_uri for g in good]
    report = json.loads(result.report_path.read_text())
    assert report["kept"] == 3
    [dropped] = report["dropped"]
    assert dropped["image_uri"] == bad.image_uri
    assert re.search(reason, dropped["reason"]), dropped["reason"]


def test_an_invalid_record_is_reported_not_trained_on(tmp_path):
    good = record("good.png")
    rows = rows_of([good, record("bad.png")], tmp_path)
    rows[1]["annotations"] = '[{"class_id": 0, "x1": "left"}]'
    labels = latest_labels(rows)
    assert [r.image_uri for r in labels.approved] == [good.image_uri]
    assert "invalid label record" in labels.invalid[0].reason


def test_an_empty_offline_store_fails_clearly(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "empty-store").mkdir()
    with pytest.raises(DatasetError, match=r"offline store test-store holds no label records"):
        export_dataset(
            read_offline_store(tmp_path / "empty-store"),
            LocalImageStore(tmp_path / "images"),
            tmp_path / "out",
            options=ExportOptions(class_names=["scratch"], min_images=1),
            source="test-store",
        )


def test_too_few_usable_images_fail_after_writing_the_qa_report(tmp_path):
    records = [record("ok.png"), record("gone.png"), record("no.png", status="rejected")]
    with pytest.raises(DatasetError) as error:
        _export(records, {"ok.png": image_bytes(), "no.png": image_bytes()}, tmp_path, min_images=2)
    message = str(error.value)
    assert "only 1 usable image(s) after QA, at least 2 needed" in message
    assert "2 approved of 3 labeled images" in message and "gone.png: image missing" in message
    report = json.loads((tmp_path / "out" / "qa_report.json").read_text())
    assert report["kept"] == 1 and report["not_approved"] == 1 and len(report["dropped"]) == 1
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_manifest_names_the_dataset_by_its_content_and_recreates_it(tmp_path):
    records = [record("a.png"), record("b.png", boxes=())]  # an image without defects is a valid negative
    images = {"a.png": image_bytes(), "b.png": image_bytes()}
    first = _export(records, images, tmp_path / "1")
    again = _export(records, images, tmp_path / "2")
    assert first.manifest.dataset_version == again.manifest.dataset_version
    assert first.manifest.dataset_version.startswith("ds-")
    changed = _export([record("a.png", boxes=((0, 5, 5, 21, 20),)), records[1]], images, tmp_path / "3")
    assert changed.manifest.dataset_version != first.manifest.dataset_version

    manifest = DatasetManifest.read(first.manifest_path)
    assert manifest == first.manifest
    entry = manifest.images[0]
    assert entry.image_uri.endswith("a.png") and len(entry.sha256) == 64 and entry.event_time == records[0].event_time
    raw = json.loads(first.manifest_path.read_text())
    raw["images"][0]["annotations"][0]["x2"] = 30
    first.manifest_path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"edited or damaged"):
        DatasetManifest.read(first.manifest_path)


# --------------------------------------------------------------------------------------------------
# The export step as SageMaker runs it: feature group lookup, S3 offline store and images (moto)
# --------------------------------------------------------------------------------------------------


@mock_aws
def test_export_step_reads_the_feature_groups_offline_store_in_s3_and_publishes_the_manifest(source, tmp_path):
    s3 = boto3.client("s3")
    sagemaker = boto3.client("sagemaker")
    for bucket in ("data-bucket", "model-bucket"):
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_bucket_versioning(Bucket="data-bucket", VersioningConfiguration={"Status": "Enabled"})
    sagemaker.create_feature_group(
        FeatureGroupName="tag-inspect-labels",
        RecordIdentifierFeatureName="image_uri",
        EventTimeFeatureName="event_time",
        FeatureDefinitions=[{"FeatureName": "image_uri", "FeatureType": "String"}],
        OfflineStoreConfig={"S3StorageConfig": {"S3Uri": "s3://data-bucket/feature-store"}},
        RoleArn="arn:aws:iam::123456789012:role/feature-store",
    )
    resolved = sagemaker.describe_feature_group(FeatureGroupName="tag-inspect-labels")["OfflineStoreConfig"][
        "S3StorageConfig"
    ]["ResolvedOutputS3Uri"]
    prefix = resolved.removeprefix("s3://data-bucket/")
    records = [
        LabelRecord(**{**r.__dict__, "image_uri": f"s3://data-bucket/raw-images/line-1/{Path(r.image_uri).name}"})
        for r in source.records
    ]
    for sample in source.samples:
        s3.put_object(Bucket="data-bucket", Key=f"raw-images/line-1/{sample.path.name}", Body=sample.path.read_bytes())
    missing = LabelRecord(**{**records[0].__dict__, "image_uri": "s3://data-bucket/raw-images/line-1/deleted.jpg"})
    parquet = write_offline_store([*records, missing], tmp_path / "store")
    s3.put_object(
        Bucket="data-bucket",
        Key=f"{prefix}/{parquet.relative_to(tmp_path / 'store').as_posix()}",
        Body=parquet.read_bytes(),
    )
    s3.put_object(Bucket="data-bucket", Key=f"{prefix}/_SUCCESS", Body=b"")  # not parquet: ignored

    arguments = ["export", "--feature-group", "tag-inspect-labels", "--class-names", '["scratch"]']
    arguments += ["--min-images", "20", "--output", str(tmp_path / "out"), "--publish", "s3://model-bucket/datasets/"]
    assert cli.main(arguments) == 0

    report = json.loads((tmp_path / "out" / "qa_report.json").read_text())
    assert report["dropped"] == [
        {"image_uri": missing.image_uri, "reason": f"image missing: {missing.image_uri}: no such object"}
    ]
    properties = json.loads((tmp_path / "out" / "dataset.json").read_text())
    version = properties["dataset_version"]
    assert properties["image_count"] == 24
    assert properties["manifest_uri"] == f"s3://model-bucket/datasets/{version}/manifest.json"
    published = json.loads(s3.get_object(Bucket="model-bucket", Key=f"datasets/{version}/manifest.json")["Body"].read())
    assert published["dataset_version"] == version and published["source"] == resolved
    assert all(entry["version_id"] for entry in published["images"])  # the exact S3 object versions
    # A second run of the same dataset leaves the published manifest as it is (never overwritten).
    assert (
        cli.main([*arguments[:-4], "--output", str(tmp_path / "again"), "--publish", "s3://model-bucket/datasets/"])
        == 0
    )
    versions = s3.list_object_versions(Bucket="model-bucket", Prefix=f"datasets/{version}/")
    assert len(versions.get("Versions", [])) == 1


@mock_aws
def test_export_step_failure_reason_reaches_sagemaker(tmp_path, monkeypatch, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="data-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    failure = tmp_path / "opt-ml-output" / "failure"
    failure.parent.mkdir()
    monkeypatch.setattr(cli, "FAILURE_FILES", (failure,))
    arguments = ["export", "--offline-store", "s3://data-bucket/feature-store/", "--class-names", "scratch"]
    assert cli.main([*arguments, "--min-images", "5", "--output", str(tmp_path / "out")]) == 1
    assert "holds no label records" in failure.read_text()
    assert (
        "error: export: the offline store s3://data-bucket/feature-store/ holds no label records"
        in capsys.readouterr().err
    )


def test_a_local_copy_of_the_raw_images_is_found_by_key_suffix_or_file_name(tmp_path):
    (tmp_path / "edge" / "device-1").mkdir(parents=True)
    (tmp_path / "edge" / "device-1" / "frame.jpg").write_bytes(b"edge")
    (tmp_path / "tag.png").write_bytes(b"flat")
    store = LocalImageStore(tmp_path)
    assert store.fetch("s3://data/raw-images/edge/device-1/frame.jpg").data == b"edge"  # `aws s3 sync` of raw-images/
    assert store.fetch("s3://data/raw-images/line-2/tag.png").data == b"flat"  # by file name
    with pytest.raises(ImageNotFound, match=r"raw-images/edge/device-2/frame\.jpg"):
        store.fetch("s3://data/raw-images/edge/device-2/frame.jpg")


def test_an_s3_error_other_than_a_missing_image_stops_the_export_with_its_reason():
    s3 = boto3.client("s3", region_name="eu-west-1")
    with Stubber(s3) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(DatasetError, match=r"cannot read s3://data-bucket/raw-images/a\.jpg \(AccessDenied\)"):
            S3ImageStore(s3).fetch("s3://data-bucket/raw-images/a.jpg")


def test_ultralytics_leaves_pillow_s_own_error_for_a_file_that_is_not_an_image(tmp_path):
    """Importing Ultralytics would make Image.open pip-install a HEIF plugin on unknown files (and fail
    offline with ModuleNotFoundError); after offline_ultralytics() a non-image still gets Pillow's error."""
    from PIL import Image, UnidentifiedImageError

    from training.steps.train import offline_ultralytics

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image", encoding="utf-8")
    offline_ultralytics()
    import ultralytics  # noqa: F401 - imported after the call, as the training steps do

    with pytest.raises(UnidentifiedImageError):
        Image.open(not_an_image)
