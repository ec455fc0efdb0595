"""Step 1: the package the approval event names, or the newest approved one; none yet is not an error."""

from __future__ import annotations

import time

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from edge_deployment.runtime.model_package import (
    ModelPackageNotDeployable,
    WrongModelPackageGroup,
    resolve_model_package,
)
from tests.edge_deployment.conftest import ACCOUNT, GROUP, MODEL_BUCKET, NEWEST_APPROVED_QUERY, REGION

OTHER_GROUP = "someone-elses-models"


@pytest.fixture
def sagemaker():
    with mock_aws():
        client = boto3.client("sagemaker", region_name=REGION)
        for group in (GROUP, OTHER_GROUP):
            client.create_model_package_group(ModelPackageGroupName=group)
        yield client


def register(sagemaker, status: str, *, group: str = GROUP, url: str | None = None) -> str:
    arn = sagemaker.create_model_package(
        ModelPackageGroupName=group,
        ModelApprovalStatus=status,
        InferenceSpecification={
            "Containers": [
                {
                    "Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/inference:1",
                    "ModelDataUrl": url or f"s3://{MODEL_BUCKET}/packages/{time.time_ns()}/model.tar.gz",
                }
            ],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    time.sleep(0.01)  # distinct creation times
    return arn


def test_the_event_s_package_is_deployed_not_the_newest(sagemaker):
    named = register(sagemaker, "Approved", url=f"s3://{MODEL_BUCKET}/first/model.tar.gz")
    register(sagemaker, "Approved")  # newer, but not the one the event is about
    result = resolve_model_package(sagemaker, group_name=GROUP, model_package_arn=named)
    assert result["found"] is True
    assert result["package"]["arn"] == named
    assert result["package"]["version"] == 1
    assert result["package"]["model_data_url"] == f"s3://{MODEL_BUCKET}/first/model.tar.gz"
    assert result["package"]["group_name"] == GROUP
    assert "named by the approval event" in result["message"]


def test_the_pipeline_deploys_the_newest_approved_package(sagemaker):
    register(sagemaker, "Approved")
    newest_approved = register(sagemaker, "Approved")
    register(sagemaker, "PendingManualApproval")  # newer still, but not approved
    register(sagemaker, "Rejected")
    register(sagemaker, "Approved", group=OTHER_GROUP)
    result = resolve_model_package(sagemaker, group_name=GROUP)
    assert result["package"]["arn"] == newest_approved
    assert result["package"]["version"] == 2


def test_no_approved_package_yet_is_a_message_not_an_error(sagemaker):
    register(sagemaker, "PendingManualApproval")
    result = resolve_model_package(sagemaker, group_name=GROUP)
    assert result == {
        "found": False,
        "package": None,
        "message": f"No approved model package in group {GROUP} yet: nothing to deploy.",
    }


def test_a_pending_package_named_by_hand_is_refused(sagemaker):
    pending = register(sagemaker, "PendingManualApproval")
    with pytest.raises(ModelPackageNotDeployable, match=r"is PendingManualApproval, not Approved"):
        resolve_model_package(sagemaker, group_name=GROUP, model_package_arn=pending)


def test_a_package_of_another_group_is_refused_before_any_aws_call():
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    other = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{OTHER_GROUP}/3"
    with Stubber(sagemaker) as stub:  # no response queued: any call would fail the test
        with pytest.raises(WrongModelPackageGroup, match=rf"belongs to group '{OTHER_GROUP}'.*nothing was created"):
            resolve_model_package(sagemaker, group_name=GROUP, model_package_arn=other)
        stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    "arn",
    [
        "not-an-arn",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package-group/{GROUP}",
        f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}",
    ],
)
def test_an_arn_that_is_not_a_versioned_package_is_refused(arn):
    with pytest.raises(ModelPackageNotDeployable, match="not the ARN of a versioned model package"):
        resolve_model_package(boto3.client("sagemaker", region_name=REGION), group_name=GROUP, model_package_arn=arn)


def test_the_group_is_checked_again_from_the_description():
    """Group names in ARNs are lower-cased by SageMaker; the description has the real name."""
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/4"
    with Stubber(sagemaker) as stub:
        stub.add_response(
            "describe_model_package",
            {
                "ModelPackageName": GROUP,
                "ModelPackageGroupName": GROUP.upper(),
                "ModelPackageVersion": 4,
                "ModelPackageArn": arn,
                "CreationTime": "2026-11-20T10:00:00Z",
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": []},
                "ModelApprovalStatus": "Approved",
            },
            {"ModelPackageName": arn},
        )
        with pytest.raises(WrongModelPackageGroup, match=rf"belongs to group '{GROUP.upper()}'"):
            resolve_model_package(sagemaker, group_name=GROUP, model_package_arn=arn)
        stub.assert_no_pending_responses()  # refused after the description, not from the ARN


def test_a_package_without_model_archive_is_refused():
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    arn = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/5"
    with Stubber(sagemaker) as stub:
        stub.add_response(
            "describe_model_package",
            {
                "ModelPackageName": GROUP,
                "ModelPackageGroupName": GROUP,
                "ModelPackageVersion": 5,
                "ModelPackageArn": arn,
                "CreationTime": "2026-11-20T10:00:00Z",
                "ModelPackageStatus": "Completed",
                "ModelPackageStatusDetails": {"ValidationStatuses": []},
                "ModelApprovalStatus": "Approved",
            },
            {"ModelPackageName": arn},
        )
        with pytest.raises(ModelPackageNotDeployable, match="has no InferenceSpecification"):
            resolve_model_package(sagemaker, group_name=GROUP, model_package_arn=arn)


def test_the_newest_approved_query_is_exactly_creation_time_descending():
    """The request is checked against SageMaker's API model and the expected parameters."""
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    with Stubber(sagemaker) as stub:
        stub.add_response(
            "list_model_packages",
            {"ModelPackageSummaryList": []},
            NEWEST_APPROVED_QUERY,
        )
        assert resolve_model_package(sagemaker, group_name=GROUP)["found"] is False
        stub.assert_no_pending_responses()


def test_a_group_that_does_not_exist_yet_means_nothing_to_deploy():
    sagemaker = boto3.client("sagemaker", region_name=REGION)
    with Stubber(sagemaker) as stub:
        stub.add_client_error("list_model_packages", "ResourceNotFound", "Model package group not found")
        assert resolve_model_package(sagemaker, group_name=GROUP)["found"] is False
