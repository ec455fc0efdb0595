"""Step 5: the gate rule, and the real lookup of the approved model's metrics in the model registry (moto)."""

from __future__ import annotations

import json
import re
import time

import boto3
import pytest
from moto import mock_aws

from training.steps import gate
from training.steps.gate import Baseline, GateError, approved_baseline, baseline_outputs, decide

GROUP = "tag-inspect-scratch-detector"
BUCKET = "tag-inspect-models-123456789012-eu-west-1"


@pytest.mark.parametrize(
    ("metric", "baseline", "passed", "reason"),
    [
        (0.55, None, True, r"mAP50-95 0\.5500 >= 0\.5000 \(first model\)"),
        (0.45, None, False, r"below the threshold 0\.5000"),
        (0.61, 0.62, True, r"approved model 0\.6200 - margin 0\.0200"),  # within the margin
        (0.59, 0.62, False, r"regresses from the approved model .* \(0\.6200\) by more than the margin 0\.0200"),
        (0.45, 0.40, False, r"below the threshold"),  # an approved model below today's threshold
    ],
)
def test_threshold_and_no_regression_beyond_the_margin(metric, baseline, passed, reason):
    approved = Baseline("arn:aws:sagemaker:eu-west-1:123456789012:model-package/g/3", baseline) if baseline else None
    decision = decide(metric, threshold=0.5, baseline=approved, margin=0.02)
    assert decision.passed is passed
    assert re.search(reason, decision.reason), decision.reason
    assert decision.to_json()["regression_floor"] == pytest.approx(max(0.0, (baseline or 0.02) - 0.02))


def test_the_floor_never_goes_below_zero_and_a_negative_margin_is_refused():
    assert gate.regression_floor(Baseline("arn", 0.01), 0.02) == 0.0
    with pytest.raises(ValueError, match="negative"):
        gate.regression_floor(None, -0.1)


@pytest.fixture
def registry():
    with mock_aws():
        sagemaker, s3 = boto3.client("sagemaker"), boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        yield sagemaker, s3


def _register(sagemaker, s3, *, metric: float | None, status: str, metadata: dict | None = None) -> str:
    arguments = {
        "ModelPackageGroupName": GROUP,
        "ModelApprovalStatus": status,
        "InferenceSpecification": {
            "Containers": [
                {"Image": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/x:1", "ModelDataUrl": "s3://b/m.tar.gz"}
            ],
            "SupportedContentTypes": ["image/jpeg"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    }
    if metric is not None:
        key = f"pipeline-runs/{time.monotonic_ns()}/evaluation/evaluation.json"
        s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps({"metrics": {"mAP50-95": metric}}).encode())
        arguments["ModelMetrics"] = {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": f"s3://{BUCKET}/{key}"}}
        }
    if metadata:
        arguments["CustomerMetadataProperties"] = metadata
    arn = sagemaker.create_model_package(**arguments)["ModelPackageArn"]
    time.sleep(0.01)  # distinct creation times
    return arn


def test_no_approved_package_means_threshold_only(registry):
    sagemaker, s3 = registry
    _register(sagemaker, s3, metric=0.9, status="PendingManualApproval")
    _register(sagemaker, s3, metric=0.9, status="Rejected")
    assert approved_baseline(sagemaker, s3, GROUP) is None
    assert baseline_outputs(None, 0.02) == {
        "regression_floor": 0.0,
        "baseline_metric": -1.0,
        "baseline_package_arn": "none",
        "has_baseline": False,
    }


def test_the_newest_approved_package_is_the_baseline_and_its_report_gives_the_metric(registry):
    sagemaker, s3 = registry
    _register(sagemaker, s3, metric=0.50, status="Approved")
    newest = _register(sagemaker, s3, metric=0.64, status="Approved")
    _register(sagemaker, s3, metric=0.99, status="PendingManualApproval")  # not approved: not a baseline
    baseline = approved_baseline(sagemaker, s3, GROUP)
    assert baseline == Baseline(newest, 0.64)
    assert baseline_outputs(baseline, 0.02)["regression_floor"] == pytest.approx(0.62)


def test_a_package_without_a_report_falls_back_to_its_metadata_and_without_either_fails(registry):
    sagemaker, s3 = registry
    arn = _register(sagemaker, s3, metric=None, status="Approved", metadata={"mAP50-95": "0.58"})
    assert approved_baseline(sagemaker, s3, GROUP) == Baseline(arn, 0.58)
    bare = _register(sagemaker, s3, metric=None, status="Approved")
    with pytest.raises(GateError, match=rf"approved model package {bare} has no mAP50-95"):
        approved_baseline(sagemaker, s3, GROUP)


def test_the_lambda_handler_returns_the_pipelines_output_parameters(registry):
    sagemaker, s3 = registry
    arn = _register(sagemaker, s3, metric=0.7, status="Approved")
    outputs = gate.handler({"model_package_group": GROUP, "regression_margin": 0.05}, None)
    assert outputs == {
        "regression_floor": pytest.approx(0.65),
        "baseline_metric": 0.7,
        "baseline_package_arn": arn,
        "has_baseline": True,
    }
