"""The request check every test runs under (tests/helpers/strict_params.py) catches what botocore lets through."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber

from tests.helpers.strict_params import StrictParamError, problems


def _input(service: str, operation: str):
    return boto3.client(service, region_name="eu-west-1").meta.service_model.operation_model(operation).input_shape


def test_it_reports_a_too_long_value_a_pattern_mismatch_and_an_unknown_enum_value():
    greengrass = _input("greengrassv2", "CreateComponentVersion")
    assert problems({"clientToken": "a" * 65}, greengrass, "gg") == [
        "gg.clientToken: 65 characters, at most 64 allowed"
    ]
    assert problems({"clientToken": "name.with.dots-1.0.7"}, greengrass, "gg")[0].startswith(
        "gg.clientToken: 'name.with.dots-1.0.7' does not match"
    )
    sagemaker = _input("sagemaker", "ListModelPackages")
    assert problems({"SortBy": "Size"}, sagemaker, "sm") == ["sm.SortBy: 'Size' is not one of ['Name', 'CreationTime']"]
    assert problems({"ModelPackageGroupName": "tag-inspect-scratch-detector", "SortBy": "Name"}, sagemaker, "sm") == []


def test_every_client_in_the_tests_refuses_such_a_request_before_it_is_sent():
    client = boto3.client("sagemaker", region_name="eu-west-1")
    with Stubber(client) as stub:
        stub.add_response("list_model_packages", {"ModelPackageSummaryList": []})
        with pytest.raises(StrictParamError, match="ModelPackageGroupName: 'not a name!' does not match"):
            client.list_model_packages(ModelPackageGroupName="not a name!")
        client.list_model_packages(ModelPackageGroupName="tag-inspect-scratch-detector")


def test_the_state_machine_checks_apply_the_same_rules_to_literal_task_parameters():
    from tests.helpers.asl import SdkTask, check_sdk_task

    bad = SdkTask("List", "sagemaker", "listModelPackages", {"ModelPackageGroupName": "g" * 171, "SortBy": "Size"}, "")
    errors = check_sdk_task(bad)
    assert "state 'List' ().ModelPackageGroupName: 171 characters, at most 170 allowed" in errors
    assert "state 'List' ().SortBy: 'Size' is not one of ['Name', 'CreationTime']" in errors
    good = SdkTask(
        "List", "sagemaker", "listModelPackages", {"ModelPackageGroupName": "${Group}", "SortBy": "Name"}, ""
    )
    assert check_sdk_task(good) == []
