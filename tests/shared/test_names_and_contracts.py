"""Interface names and the data contracts between the apps."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.contracts import (
    LABEL_FEATURES,
    Annotation,
    ContractError,
    LabelRecord,
    ModelManifest,
    ModelVariant,
    format_event_time,
    latest_per_image,
)
from shared.names import EDGE_UPLOAD_PREFIX, RAW_IMAGE_PREFIX, app_slug, resource_names, upstream_app

LONGEST_REGION = "ap-southeast-5"
ACCOUNT = "123456789012"


def test_names_are_a_pure_function_of_the_settings(settings):
    owner = resource_names(settings, account=ACCOUNT, region="eu-west-1")
    reader = resource_names(settings, account=ACCOUNT, region="eu-west-1")
    assert owner == reader
    assert owner.data_bucket == "tag-inspect-data-123456789012-eu-west-1"
    assert owner.label_feature_group == "tag-inspect-labels"
    assert owner.model_package_group == "tag-inspect-scratch-detector"
    assert owner.workflow_pipeline("edge_deployment") == "tag-inspect-edge-deployment-workflow-pipeline"


def test_names_satisfy_the_services_rules_for_the_longest_prefix(settings):
    longest = settings.model_copy(update={"project": settings.project.model_copy(update={"prefix": "a" * 20})})
    names = resource_names(longest, account=ACCOUNT, region=LONGEST_REGION)
    for bucket in (names.data_bucket, names.model_bucket):  # S3: 3-63 lowercase, digits, dots, hyphens
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket), bucket
    for group in (names.label_feature_group, names.model_package_group):  # SageMaker: 63, alnum + hyphen
        assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", group), group
    for glue in (names.label_catalog_database, names.label_catalog_table):  # Glue: lowercase, underscores
        assert re.fullmatch(r"[a-z0-9_]{1,255}", glue), glue
    assert len(names.training_pipeline) <= 256
    # Secrets Manager: 1-512 of letters, digits and /_+=.@-
    assert re.fullmatch(r"[A-Za-z0-9/_+=.@-]{1,512}", names.label_studio_api_token_secret)
    assert re.fullmatch(r"alias/[a-zA-Z0-9/_-]{1,250}", names.label_studio_key_alias)  # KMS, not alias/aws/
    for app in ("labeling", "training", "edge_deployment"):
        assert len(names.workflow_state_machine(app)) <= 80  # Step Functions
        assert len(names.asset_pipeline(app)) <= 100  # CodePipeline
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,256}", names.notification_topic(app))  # SNS
        assert len(names.toolchain_stack(app)) <= 128


def test_raw_image_prefix_contains_the_edge_uploads():
    assert EDGE_UPLOAD_PREFIX.startswith(RAW_IMAGE_PREFIX)


def test_app_chain_order():
    assert upstream_app("labeling") is None
    assert upstream_app("training") == "labeling"
    assert upstream_app("edge_deployment") == "training"
    assert app_slug("edge_deployment") == "edge-deployment"
    with pytest.raises(ValueError, match="unknown app 'inference'"):
        app_slug("inference")


def _record(**changes):
    values = {
        "image_uri": "s3://bucket/raw-images/line-1/a.jpg",
        "event_time": "2026-11-22T10:00:00.000Z",
        "image_width": 320,
        "image_height": 240,
        "annotations": (Annotation(class_id=0, x1=10, y1=20.5, x2=30, y2=40),),
        "review_status": "approved",
        "labeling_job": "tag-inspect-labeling-1",
    }
    values.update(changes)
    return LabelRecord(**values)


def test_label_record_round_trips_through_feature_store_form():
    record = _record()
    as_put = record.to_feature_store()
    assert [item["FeatureName"] for item in as_put] == list(LABEL_FEATURES)
    assert all(isinstance(item["ValueAsString"], str) for item in as_put)
    assert LabelRecord.from_feature_store(as_put) == record
    assert json.loads({i["FeatureName"]: i["ValueAsString"] for i in as_put}["annotations"]) == [
        {"class_id": 0, "x1": 10, "y1": 20.5, "x2": 30, "y2": 40}
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image_uri": "raw-images/a.jpg"}, "must be an s3:// URI"),
        ({"event_time": "yesterday"}, "not an ISO-8601 timestamp"),
        ({"image_width": 0}, "image size must be positive"),
        ({"review_status": "maybe"}, "review_status must be one of"),
        ({"labeling_job": ""}, "labeling_job must not be empty"),
    ],
)
def test_invalid_label_records_are_refused(changes, message):
    with pytest.raises(ContractError, match=message):
        _record(**changes)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"annotations": "not json"}, "annotations are not JSON"),
        ({"annotations": '{"x1": 1}'}, "must be a JSON list"),
        ({"annotations": '[{"class_id": 0, "x1": 1}]'}, "needs numeric class_id, x1, y1, x2, y2"),
        ({"annotations": '[{"class_id": -1, "x1": 1, "y1": 1, "x2": 2, "y2": 2}]'}, "non-negative integer"),
        ({"annotations": '[{"class_id": 0, "x1": "NaN", "y1": 1, "x2": 2, "y2": 2}]'}, "finite numbers"),
        ({"review_status": ""}, "missing feature"),
        ({"schema_version": "2"}, "newer than 1"),
    ],
)
def test_malformed_stored_records_are_named(values, message):
    base = {item["FeatureName"]: item["ValueAsString"] for item in _record().to_feature_store()}
    with pytest.raises(ContractError, match=message):
        LabelRecord.from_values({**base, **values})


def test_box_problems():
    box = Annotation(class_id=2, x1=5, y1=5, x2=50, y2=50)
    assert box.problem(100, 100) is None
    assert "unknown class id 2" in box.problem(100, 100, num_classes=2)
    assert "outside the 40x100 image" in box.problem(40, 100)
    assert "degenerate" in Annotation(class_id=0, x1=5, y1=5, x2=5, y2=9).problem(100, 100)


def test_newest_record_per_image_wins():
    old = _record(event_time="2026-11-01T00:00:00.000Z", review_status="approved")
    new = _record(event_time="2026-11-02T00:00:00.000Z", review_status="rejected")
    other = _record(image_uri="s3://bucket/raw-images/b.jpg")
    newest = latest_per_image([new, old, other])
    assert newest[old.image_uri] is new
    assert not newest[old.image_uri].approved
    assert newest[other.image_uri] is other


def test_event_time_format_is_utc_with_milliseconds():
    moment = datetime(2026, 11, 22, 11, 0, 0, 123456, tzinfo=timezone(timedelta(hours=1)))
    assert format_event_time(moment) == "2026-11-22T10:00:00.123Z"
    with pytest.raises(ContractError, match="timezone-aware"):
        format_event_time(datetime(2026, 1, 1))
    assert format_event_time(datetime(2026, 1, 1, tzinfo=UTC)).endswith("00.000Z")


def _manifest(**changes):
    values = {
        "class_names": ["scratch"],
        "input_size": 640,
        "confidence_threshold": 0.25,
        "iou_threshold": 0.45,
        "metrics": {"precision": 0.9, "recall": 0.8, "mAP50": 0.85, "mAP50-95": 0.6},
        "dataset_version": "ds-1",
    }
    values.update(changes)
    return values


def test_model_manifest_round_trip():
    manifest = ModelManifest.from_json(_manifest())
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    assert manifest.to_json()["model_file"] == "model.onnx"
    assert manifest.test_statistics is None and "test_statistics" not in manifest.to_json()  # older archives


def test_the_test_splits_statistics_travel_with_the_model():
    statistics = {"images": 4, "detection_rate": 0.5, "top_scores": [0.9, 0.55, 0.2, 0.0]}
    manifest = ModelManifest.from_json(_manifest(test_statistics=statistics))
    assert ModelManifest.from_json(manifest.to_json()) == manifest
    held = manifest.test_statistics
    assert held is not None and held.detection_rate == 0.5
    assert held.share_between(0.3, 0.7) == 0.25  # one image in a device's uncertainty band
    assert held.share_between(0.0, 0.3) == 0.5 and held.share_between(0.95, 1.0) == 0.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_names": []}, "class_names must not be empty"),
        ({"input_size": 100}, "multiple of 32"),
        ({"confidence_threshold": 1.5}, "confidence_threshold must be between 0 and 1"),
        ({"metrics": {"precision": 1.0}}, "metrics lack recall, mAP50, mAP50-95"),
        ({"input_size": None}, "missing or invalid field"),
        ({"test_statistics": {"images": 2, "detection_rate": 1.5, "top_scores": []}}, "detection_rate in"),
        ({"test_statistics": {"images": 1, "detection_rate": 0.5, "top_scores": [2.0]}}, "top_scores must be in"),
        ({"test_statistics": {"images": 1}}, "test_statistics: missing or invalid field"),
    ],
)
def test_bad_model_manifests(changes, message):
    with pytest.raises(ContractError, match=message):
        ModelManifest.from_json(_manifest(**changes))


INT8_METRICS = {"precision": 0.89, "recall": 0.8, "mAP50": 0.845, "mAP50-95": 0.59}


def _int8(**changes):
    return {"file": "model.int8.onnx", "metrics": dict(INT8_METRICS), **changes}


def test_a_version_1_manifest_without_precisions_is_the_fp32_model_alone():
    manifest = ModelManifest.from_json({**_manifest(), "schema_version": 1})
    assert manifest.variants == ()
    assert manifest.model_files == ("model.onnx",)
    fp32 = manifest.variant("fp32")
    assert fp32 is not None and (fp32.file, fp32.metrics) == ("model.onnx", manifest.metrics)
    assert manifest.variant("int8") is None
    assert manifest.to_json()["precisions"] == {"fp32": {"file": "model.onnx", "metrics": manifest.metrics}}


def test_a_manifest_says_which_file_is_fp32_and_which_int8_with_each_ones_metrics():
    manifest = ModelManifest.from_json(_manifest())
    with_int8 = manifest.with_variant(
        ModelVariant(precision="int8", file="model.int8.onnx", metrics=INT8_METRICS, details={"calibration_images": 8})
    )
    document = with_int8.to_json()
    assert document["schema_version"] == 2
    assert document["model_file"] == "model.onnx" and document["metrics"] == manifest.metrics
    assert document["precisions"] == {
        "fp32": {"file": "model.onnx", "metrics": manifest.metrics},
        "int8": {"file": "model.int8.onnx", "metrics": INT8_METRICS, "details": {"calibration_images": 8}},
    }
    read_back = ModelManifest.from_json(json.loads(json.dumps(document)))
    assert read_back == with_int8
    assert read_back.model_files == ("model.onnx", "model.int8.onnx")
    assert read_back.variant("int8").metrics["mAP50"] == 0.845
    replaced = read_back.with_variant(ModelVariant(precision="int8", file="model.int8.onnx", metrics=manifest.metrics))
    assert [v.metrics for v in replaced.variants] == [manifest.metrics]  # one INT8 entry, the newer one


@pytest.mark.parametrize(
    ("precisions", "message"),
    [
        ({"int8": _int8(file="models/model.int8.onnx")}, "precisions.int8: file must be an .onnx file at the archive"),
        ({"int8": _int8(file="model.int8.bin")}, "file must be an .onnx file"),
        ({"int8": _int8(file="model.onnx")}, "the FP32 model is model.onnx and only it"),
        ({"fp32": _int8(file="model.fp32.onnx")}, "precisions.fp32: the FP32 model is model.onnx"),
        ({"int8": _int8(metrics={"mAP50": 0.8})}, "precisions.int8: metrics lack precision, recall, mAP50-95"),
        ({"int8": _int8(metrics={"mAP50": "high"})}, "precisions.int8: missing or invalid field"),
        ({"int8": "model.int8.onnx"}, "precisions.int8 must be an object with file and metrics"),
        ({"int4": _int8(file="model.int4.onnx")}, "precisions.int4: unknown precision"),
        (["int8"], "precisions must be an object keyed by precision"),
        (
            {"fp32": {"file": "model.onnx", "metrics": INT8_METRICS}},
            "precisions.fp32.metrics differ from metrics",
        ),
    ],
)
def test_bad_precisions_in_a_manifest(precisions, message):
    with pytest.raises(ContractError, match=re.escape(message)):
        ModelManifest.from_json(_manifest(precisions=precisions))


def test_the_fp32_model_is_never_a_variant():
    manifest = ModelManifest.from_json(_manifest())
    with pytest.raises(ContractError, match="the FP32 model is model_file and metrics, not a variant"):
        manifest.with_variant(ModelVariant(precision="fp32", file="model.onnx", metrics=INT8_METRICS))
