"""Step 5: the gate's verdict on champion/challenger pairs, and the champion's lookup in the model registry (moto)."""

from __future__ import annotations

import re
import time

import boto3
import pytest
from moto import mock_aws

from training.steps import gate
from training.steps.gate import FAIL, NO_CHANGE, REGISTER, Champion, ChampionResult, approved_champion, decide

GROUP = "tag-inspect-scratch-detector"
ARN = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/3"


def _champion(difference: float, interval: tuple[float, float], dataset: str = "ds-old") -> ChampionResult:
    return ChampionResult(package_arn=ARN, dataset_version=dataset, difference=difference, interval=interval, images=40)


@pytest.mark.parametrize(
    ("metric", "champion", "verdict", "reason"),
    [
        # the group's first model: the threshold alone
        (0.55, None, REGISTER, r"mAP50-95 0\.5500 >= 0\.5000 \(first model\)"),
        (0.45, None, FAIL, r"mAP50-95 0\.4500 is below the threshold 0\.5000"),
        # new labels: not worse than the champion beyond the margin (point estimate of the paired difference)
        (0.61, _champion(-0.01, (-0.05, 0.03)), REGISTER, r"not worse .* margin 0\.0200: mAP50-95 -0\.0100 against"),
        (0.61, _champion(0.08, (0.02, 0.14)), REGISTER, r"\+0\.0800 against .* same 40 test images"),
        (0.55, _champion(-0.03, (-0.07, 0.01)), FAIL, r"regression beyond the margin 0\.0200: mAP50-95 -0\.0300"),
        # with a champion the threshold no longer decides: both were scored on the same images
        (0.40, _champion(0.0, (-0.02, 0.02)), REGISTER, r"interval -0\.0200 to \+0\.0200"),
        # the champion's own labels: only a model better beyond doubt is registered
        (0.70, _champion(0.05, (0.01, 0.09), dataset="ds-new"), REGISTER, r"not worse"),
        (0.70, _champion(0.02, (-0.01, 0.05), dataset="ds-new"), NO_CHANGE, r"no change: the dataset ds-new is"),
        (0.70, _champion(0.0, (0.0, 0.0), dataset="ds-new"), NO_CHANGE, r"not better beyond doubt"),
        (0.50, _champion(-0.2, (-0.3, -0.1), dataset="ds-new"), NO_CHANGE, r"no change"),  # nothing to redeploy
    ],
)
def test_the_verdict_on_champion_and_challenger(metric, champion, verdict, reason):
    decision = decide(metric, dataset_version="ds-new", threshold=0.5, margin=0.02, champion=champion)
    assert decision.verdict == verdict
    assert decision.passed is (verdict == REGISTER)
    assert re.search(reason, decision.reason), decision.reason
    written = decision.to_json()
    assert written["verdict"] == verdict and written["value"] == metric
    assert written["champion_package_arn"] == (ARN if champion else None)
    assert written["difference_interval"] == (list(champion.interval) if champion else None)


def test_a_negative_margin_is_refused():
    with pytest.raises(ValueError, match="negative"):
        decide(0.6, dataset_version="ds", threshold=0.5, margin=-0.1, champion=None)


@pytest.fixture
def registry():
    with mock_aws():
        sagemaker = boto3.client("sagemaker")
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        yield sagemaker


def _register(sagemaker, *, status: str, url: str = "s3://models/pipeline-runs/e1/package/model.tar.gz") -> str:
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/x:1", "ModelDataUrl": url}],
            "SupportedContentTypes": ["image/jpeg"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    time.sleep(0.01)  # distinct creation times
    return arn


def test_no_approved_package_means_no_champion(registry):
    _register(registry, status="PendingManualApproval")
    _register(registry, status="Rejected")
    assert approved_champion(registry, GROUP) is None
    assert gate.champion_outputs(None) == {"champion_package_arn": "none", "champion_model_url": "none"}


def test_the_newest_approved_package_is_the_champion_with_its_archive(registry):
    _register(registry, status="Approved", url="s3://models/pipeline-runs/old/package/model.tar.gz")
    newest = _register(registry, status="Approved", url="s3://models/pipeline-runs/new/package/model.tar.gz")
    _register(registry, status="PendingManualApproval", url="s3://models/x.tar.gz")  # not approved: not the champion
    champion = approved_champion(registry, GROUP)
    assert champion == Champion(newest, "s3://models/pipeline-runs/new/package/model.tar.gz")
    assert gate.champion_outputs(champion) == {
        "champion_package_arn": newest,
        "champion_model_url": "s3://models/pipeline-runs/new/package/model.tar.gz",
    }


def test_an_approved_package_without_an_archive_fails_the_lookup_naming_it():
    class Registry:  # moto refuses a package without containers; the real registry holds such (manual) ones
        def list_model_packages(self, **_):
            return {"ModelPackageSummaryList": [{"ModelPackageArn": ARN}]}

        def describe_model_package(self, **_):
            return {"ModelPackageArn": ARN, "InferenceSpecification": {"Containers": [{"Image": "x"}]}}

    with pytest.raises(ValueError, match=rf"approved model package {re.escape(ARN)} has no ModelDataUrl"):
        approved_champion(Registry(), GROUP)


def test_the_lambda_handler_returns_the_pipelines_output_parameters(registry):
    arn = _register(registry, status="Approved")
    assert gate.handler({"model_package_group": GROUP}, None) == {
        "champion_package_arn": arn,
        "champion_model_url": "s3://models/pipeline-runs/e1/package/model.tar.gz",
    }
