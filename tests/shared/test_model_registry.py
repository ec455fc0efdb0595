"""The one registry question the three apps ask: the group's newest approved package (moto's SageMaker)."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from shared.runtime.model_registry import model_data_url, newest_approved_package_arn

REGION = "eu-west-1"
GROUP = "tag-inspect-scratch-detector"


def _register(sagemaker, status: str) -> str:
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [{"Image": "image:1", "ModelDataUrl": f"s3://models/{status}-{time.time_ns()}.tar.gz"}],
            "SupportedContentTypes": ["application/x-image"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    time.sleep(0.01)  # distinct creation times
    return str(arn)


def test_the_newest_approved_package_wins_over_older_approved_and_newer_pending_ones():
    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        assert newest_approved_package_arn(sagemaker, group_name=GROUP) is None, "no approved package yet"
        _register(sagemaker, "Approved")
        newest = _register(sagemaker, "Approved")
        _register(sagemaker, "PendingManualApproval")
        _register(sagemaker, "Rejected")
        assert newest_approved_package_arn(sagemaker, group_name=GROUP) == newest
        described = sagemaker.describe_model_package(ModelPackageName=newest)
        assert model_data_url(described).startswith("s3://models/Approved-")


@pytest.mark.parametrize("code", ["ResourceNotFound", "ResourceNotFoundException"])
def test_a_group_that_does_not_exist_yet_has_no_approved_package(code):
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    with Stubber(sagemaker) as stub:
        stub.add_client_error("list_model_packages", code, http_status_code=400)
        assert newest_approved_package_arn(sagemaker, group_name=GROUP) is None


def test_any_other_error_is_the_caller_s_to_handle():
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    with Stubber(sagemaker) as stub:
        stub.add_client_error("list_model_packages", "ThrottlingException", http_status_code=400)
        with pytest.raises(Exception, match="ThrottlingException"):
            newest_approved_package_arn(sagemaker, group_name=GROUP)


@pytest.mark.parametrize(
    ("described", "url"),
    [
        ({"InferenceSpecification": {"Containers": [{"ModelDataUrl": "s3://m/a.tar.gz"}]}}, "s3://m/a.tar.gz"),
        ({"InferenceSpecification": {"Containers": [{"Image": "x"}]}}, None),
        ({"InferenceSpecification": {"Containers": []}}, None),
        ({}, None),
    ],
)
def test_the_model_archive_of_a_described_package(described, url):
    assert model_data_url(described) == url
