"""Pre-labels: the newest approved model's boxes, computed with the device's own detector on the model archive."""

from __future__ import annotations

import tarfile
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from edge_deployment.components.inference.inspector.detector import load_detector, load_image
from labeling.runtime import pre_labels as pl
from labeling.runtime import rounds
from labeling.runtime.errors import ConfigurationError
from tests.edge_deployment.conftest import GROUP, MODEL_BUCKET, NEWEST_APPROVED_QUERY
from tests.labeling.conftest import BUCKET, REGION
from tests.labeling.test_rounds import RUN

PACKAGE = f"arn:aws:sagemaker:eu-west-1:123456789012:model-package/{GROUP}/7"
MODELS = MODEL_BUCKET
LIST = NEWEST_APPROVED_QUERY  # the same question the edge workflow asks the registry


def registry(*, approved: bool) -> tuple[Any, Stubber]:
    """A SageMaker client whose model registry answers as the training app's group would."""
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    stubber = Stubber(sagemaker)
    summaries = (
        [
            {
                "ModelPackageArn": PACKAGE,
                "ModelPackageGroupName": GROUP,
                "ModelPackageVersion": 7,
                "CreationTime": "2026-11-20T00:00:00Z",
                "ModelPackageStatus": "Completed",
                "ModelApprovalStatus": "Approved",
            }
        ]
        if approved
        else []
    )
    stubber.add_response("list_model_packages", {"ModelPackageSummaryList": summaries}, LIST)
    if approved:
        stubber.add_response(
            "describe_model_package",
            {
                "ModelPackageName": GROUP,
                "ModelPackageGroupName": GROUP,
                "ModelPackageVersion": 7,
                "ModelPackageArn": PACKAGE,
                "CreationTime": "2026-11-20T00:00:00Z",
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
                "ModelApprovalStatus": "Approved",
                "InferenceSpecification": {
                    "Containers": [{"Image": "x", "ModelDataUrl": f"s3://{MODELS}/packages/7/model.tar.gz"}],
                    "SupportedContentTypes": ["image/jpeg"],
                    "SupportedResponseMIMETypes": ["application/json"],
                },
            },
            {"ModelPackageName": PACKAGE},
        )
    stubber.activate()
    return sagemaker, stubber


def test_without_an_approved_model_nothing_is_pre_labeled(s3, jpeg):
    sagemaker, stubber = registry(approved=False)
    cursor = pl.pre_label_images(
        s3, sagemaker, bucket=BUCKET, run_prefix=RUN.prefix, group_name=GROUP, images=[object()] * 3
    )
    stubber.assert_no_pending_responses()
    assert (cursor.done, cursor.model, cursor.labeled, cursor.next) == (True, "", 0, 0)
    assert pl.read_pre_labels(s3, bucket=BUCKET, run_prefix=RUN.prefix) == {}


@pytest.mark.slow
def test_pre_labels_are_the_device_detectors_boxes_on_the_approved_models_archive(
    s3, featurestore, trained_model, monkeypatch, tmp_path
):
    monkeypatch.setattr(pl, "BATCH", 3)
    s3.create_bucket(Bucket=MODELS, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.upload_file(str(trained_model.archive), MODELS, "packages/7/model.tar.gz")
    for sample in trained_model.samples:
        s3.upload_file(str(sample.path), BUCKET, f"raw-images/held-out/{sample.path.name}")
    rounds.list_unlabeled_images(
        s3, featurestore, bucket=BUCKET, prefix="raw-images/", feature_group="tag-inspect-labels", run_prefix=RUN.prefix
    )
    rounds.select_images(s3, bucket=BUCKET, run_prefix=RUN.prefix, budget=100)
    images = rounds.read_selected(s3, bucket=BUCKET, run_prefix=RUN.prefix)
    sagemaker, stubber = registry(approved=True)
    calls = []
    pl._DETECTORS.clear()
    cursor = pl.pre_label_images(
        s3,
        sagemaker,
        bucket=BUCKET,
        run_prefix=RUN.prefix,
        group_name=GROUP,
        images=images,
        time_left=lambda: calls.append(1) or (120.0 if len(calls) < 2 else 10.0),  # two calls' worth of time
    )
    assert (cursor.model, cursor.model_name, cursor.next) == (
        PACKAGE,
        f"{GROUP}-v7",
        6,
    )  # two batches, then time ran out
    assert not cursor.done
    cursor = pl.pre_label_images(
        s3, sagemaker, bucket=BUCKET, run_prefix=RUN.prefix, group_name=GROUP, images=images, cursor=cursor
    )
    stubber.assert_no_pending_responses()
    assert cursor.done and cursor.labeled == len(images) == len(trained_model.samples)
    labels = pl.read_pre_labels(s3, bucket=BUCKET, run_prefix=RUN.prefix)
    # exactly what a device reports for the same file: the archive's model.onnx at model.json's thresholds
    detector = load_detector(pl.extract_model_archive(trained_model.archive, tmp_path / "device-model"))
    boxes_seen = 0
    for image in images:
        data = s3.get_object(Bucket=BUCKET, Key=image.uri.split(f"{BUCKET}/", 1)[1])["Body"].read()
        expected = detector.detect(load_image(data))
        label = labels[image.uri]
        assert [(b.class_id, b.x1, b.y1, b.x2, b.y2, b.score) for b in label.boxes] == [
            (d.class_id, *(round(v, 2) for v in d.box), round(d.score, 4)) for d in expected.detections
        ]
        boxes_seen += len(label.boxes)
    assert boxes_seen > 0  # the trained model finds scratches: the comparison is not between empty lists
    assert cursor.boxes == boxes_seen


def test_the_archive_must_hold_the_model_and_its_manifest(tmp_path):
    archive = tmp_path / "model.tar.gz"
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "model.onnx", arcname="model.onnx")
        tar.add(tmp_path / "model.onnx", arcname="../escape.onnx")
    with pytest.raises(ConfigurationError, match=r"model\.tar\.gz lacks model\.json at its root"):
        pl.extract_model_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.onnx").exists()
