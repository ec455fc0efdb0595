"""The Lambda handlers: settings from the environment, clients in, JSON out, errors by name."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber

from edge_deployment.function_config import health_bounds, rollout_policy, stages
from edge_deployment.runtime import handlers
from edge_deployment.runtime.components import VERSION_PLACEHOLDER, inference_component_version
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, EdgeDeploymentConfig
from edge_deployment.runtime.model_package import WrongModelPackageGroup
from shared.names import MODEL_ARCHIVE_PREFIX
from tests.edge_deployment.conftest import ACCOUNT, GROUP, MODEL_BUCKET, NEWEST_APPROVED_QUERY, REGION
from tests.helpers.custom_resource import CfnAnswers, cfn_event
from tests.helpers.lambda_context import LambdaContext

FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:tag-inspect-edge-step"


def _context() -> LambdaContext:
    return LambdaContext(
        function_name="tag-inspect-edge-step",
        invoked_function_arn=FUNCTION_ARN,
        memory_limit_in_mb=256,
        aws_request_id="req-1",
    )


@pytest.fixture
def clients(monkeypatch):
    made: dict[str, object] = {}

    def client(service, region=None):
        if service not in made:
            made[service] = boto3.client(service, region_name=REGION)
        return made[service]

    monkeypatch.setattr(handlers, "client", client)
    return client


@pytest.fixture
def environment(monkeypatch, settings):
    config = EdgeDeploymentConfig(
        model_package_group=GROUP,
        thing_group_name="tag-inspection-line-1",
        deployment_name="tag-inspection-line-1",
        model_component_name="com.example.tag-inspection.ScratchModel",
        component_bucket=f"tag-inspect-edge-components-{ACCOUNT}-{REGION}",
        model_bucket=MODEL_BUCKET,
        model_archive_prefix=MODEL_ARCHIVE_PREFIX,
        max_archive_bytes=512 * 1024 * 1024,
        class_names=("scratch",),
        rollout=rollout_policy(settings),
        stages=stages(settings),  # the example's: pilot, production
        health=health_bounds(settings),
        metrics_namespace="tag-inspect/Devices",
    )
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, config.to_json())
    return config


def test_an_event_for_another_group_fails_before_any_call(clients, environment):
    with Stubber(clients("sagemaker")), pytest.raises(WrongModelPackageGroup, match="group 'other-group'"):
        handlers.resolve({"model_package_group_name": "other-group", "model_package_arn": "arn:x"}, _context())


def test_the_pipeline_trigger_resolves_the_newest_approved_package(clients, environment):
    with Stubber(clients("sagemaker")) as stub:
        stub.add_response(
            "list_model_packages",
            {"ModelPackageSummaryList": []},
            NEWEST_APPROVED_QUERY,
        )
        assert handlers.resolve({"trigger": "workflow-pipeline"}, _context())["found"] is False
        stub.assert_no_pending_responses()


def _package(version: int) -> dict:
    return {"arn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/{version}", "version": version}


def _newest_approved(stub: Stubber, version: int) -> None:
    summary = {
        "ModelPackageGroupName": GROUP,
        "ModelPackageVersion": version,
        "ModelPackageArn": _package(version)["arn"],
        "CreationTime": datetime(2026, 11, 20, tzinfo=UTC),
        "ModelPackageStatus": "Completed",
        "ModelApprovalStatus": "Approved",
    }
    stub.add_response("list_model_packages", {"ModelPackageSummaryList": [summary]}, NEWEST_APPROVED_QUERY)


FLEET_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/tag-inspection-line-1"
PRODUCTION = {
    "index": 1,
    "name": "production",
    "thing_groups": [{"name": "tag-inspection-line-1", "arn": FLEET_ARN, "previous": None}],
}
CREATE_EVENT = {
    "package": _package(7),
    "stage": PRODUCTION,
    "model_component": {"name": "com.example.tag-inspection.ScratchModel", "version": "1.0.7"},
    "inference_component": {"name": "com.example.tag-inspection.ScratchDetector", "version": "1.0.99"},
    "execution_id": "arn:aws:states:eu-west-1:123456789012:execution:tag-inspect-edge-deployment:run-1",
}


def test_create_deployment_targets_the_configured_group_in_the_function_s_own_account(clients, environment, settings):
    greengrass = clients("greengrassv2")
    sent = []
    greengrass.meta.events.register(
        "provide-client-params.greengrassv2.CreateDeployment", lambda params, **_: sent.append(params)
    )
    with Stubber(greengrass) as stub, Stubber(clients("sagemaker")) as registry:
        for _ in range(3):
            _newest_approved(registry, 7)  # this run's package is the newest approved one
        for attempt in (0, 0, 1):
            stub.add_response("list_deployments", {"deployments": []})
            stub.add_response("create_deployment", {"deploymentId": f"d-{len(sent) + 1}", "iotJobId": "job-1"})
            result = handlers.create_deployment({**CREATE_EVENT, "attempt": attempt}, _context())
        registry.assert_no_pending_responses()
    assert result["superseded"] is False
    assert [d["thing_group"] for d in result["deployments"]] == ["tag-inspection-line-1"]
    assert sent[0]["targetArn"] == FLEET_ARN
    assert sent[0]["deploymentName"] == "tag-inspection-line-1"  # the app's own group keeps its deployment name
    # the stage's own rollout (production has none: edge_deployment.rollout)
    assert sent[0]["iotJobConfiguration"]["jobExecutionsRolloutConfig"]["maximumPerMinute"] == 100
    assert sent[0]["components"]["com.example.tag-inspection.ScratchDetector"]["componentVersion"] == "1.0.99"
    assert sent[1]["clientToken"] == sent[0]["clientToken"]  # a retried call of one run is the same request
    assert sent[2]["clientToken"] != sent[0]["clientToken"]  # a new attempt (REDEPLOY) is a new deployment


def test_a_package_a_newer_approved_one_overtook_deploys_nothing(clients, environment):
    with Stubber(clients("greengrassv2")) as stub, Stubber(clients("sagemaker")) as registry:
        _newest_approved(registry, 8)  # approved while this run (package 7) was preparing its component
        result = handlers.create_deployment(CREATE_EVENT, _context())
        stub.assert_no_pending_responses()  # no Greengrass call at all
    assert result["superseded"] is True and result["newer"] == _package(8)
    assert result["subject"] == "Edge rollout SUPERSEDED: model package v7 not deployed to stage production"
    assert "version 8" in result["message"] and "reject the newer package" in result["message"]


def _deployment(**group: object) -> dict:
    return {
        "started_at": datetime.now(UTC).isoformat(),
        "components": {"m": "1.0.7"},
        "deployments": [
            {"thing_group": "tag-inspection-line-1", "deployment_id": "d-1", "iot_job_id": "job-1", "reused": False}
            | group
        ],
    }


def test_check_rollout_adds_the_report_when_finished(clients, environment):
    deployment = _deployment()
    with Stubber(clients("iot")) as stub, Stubber(clients("sagemaker")) as registry:
        stub.add_response(
            "describe_job",
            {"job": {"jobId": "job-1", "status": "IN_PROGRESS", "jobProcessDetails": {"numberOfSucceededThings": 3}}},
        )
        _newest_approved(registry, 7)  # still the newest approved package: the devices run it
        result = handlers.check_rollout(
            {"deployment": deployment, "package": _package(7), "stage": PRODUCTION}, _context()
        )
        registry.assert_no_pending_responses()
    assert result["finished"] is True and result["outcome"] == "SUCCEEDED"
    assert result["subject"] == "Edge rollout SUCCEEDED: model package v7, stage production"
    assert "3 succeeded" in result["message"] and "failure" not in result


def test_check_rollout_without_report_while_devices_are_pending(clients, environment):
    deployment = _deployment()
    with Stubber(clients("iot")) as stub:
        stub.add_response(
            "describe_job",
            {"job": {"jobId": "job-1", "status": "IN_PROGRESS", "jobProcessDetails": {"numberOfInProgressThings": 1}}},
        )
        result = handlers.check_rollout({"deployment": deployment, "stage": PRODUCTION}, _context())
    assert result["finished"] is False and "message" not in result


# -- the custom resource --------------------------------------------------------------------------

TEMPLATE = json.dumps(
    {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Inference",
        "ComponentVersion": VERSION_PLACEHOLDER,
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Artifacts": [
                    {
                        "Uri": f"s3://components/artifacts/com.example.Inference/{VERSION_PLACEHOLDER}/inference.zip",
                        "Unarchive": "ZIP",
                    }
                ],
            }
        ],
    }
)


def _cfn_event(request_type: str, **extra) -> dict:
    properties = {
        "ArtifactHash": "f" * 64,
        "SourceBucket": "cdk-assets",
        "SourceKey": "f.zip",
        "Bucket": "components",
        "KeyTemplate": f"artifacts/com.example.Inference/{VERSION_PLACEHOLDER}/inference.zip",
        "RecipeTemplate": TEMPLATE,
    }
    return cfn_event(request_type, "InferenceComponentVersion", properties, **extra)


@pytest.fixture
def responses(monkeypatch):
    return CfnAnswers().install(monkeypatch).bodies


def test_the_custom_resource_publishes_and_returns_the_content_derived_version(clients, responses, monkeypatch):
    version = inference_component_version(artifact_hash="f" * 64, recipe_template=TEMPLATE)
    calls = {}

    def publish(**kwargs):
        calls.update(kwargs)
        from edge_deployment.runtime.components import PublishedComponent

        return PublishedComponent(
            name="com.example.Inference", version=version, arn=kwargs["arn"], created=True, state="DEPLOYABLE"
        )

    monkeypatch.setattr(handlers, "publish_inference_component", publish)
    handlers.inference_component(_cfn_event("Create"), _context())
    (answer,) = responses
    assert answer["Status"] == "SUCCESS"
    assert answer["Data"]["ComponentVersion"] == version
    assert (
        answer["PhysicalResourceId"]
        == f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:com.example.Inference:versions:{version}"
    )
    assert calls["key"] == f"artifacts/com.example.Inference/{version}/inference.zip"
    assert calls["recipe"]["ComponentVersion"] == version


def test_deleting_the_custom_resource_keeps_the_component_version(clients, responses):
    with Stubber(clients("greengrassv2")), Stubber(clients("s3")):  # no call allowed
        handlers.inference_component(_cfn_event("Delete", PhysicalResourceId="arn:old"), _context())
    assert responses == [responses[0]] and responses[0]["Status"] == "SUCCESS"
    assert responses[0]["PhysicalResourceId"] == "arn:old"


def test_a_failure_is_reported_to_cloudformation_with_its_reason(clients, responses):
    with Stubber(clients("greengrassv2")) as stub:
        stub.add_client_error("describe_component", "AccessDeniedException", "not allowed", http_status_code=403)
        handlers.inference_component(_cfn_event("Create"), _context())
    (answer,) = responses
    assert answer["Status"] == "FAILED"
    assert "AccessDeniedException" in answer["Reason"]
    assert answer["PhysicalResourceId"] == "InferenceComponentVersion-not-created"


def test_the_approval_event_s_package_is_resolved_even_when_it_is_not_the_newest(monkeypatch, environment):
    """The handler hands the event's package ARN on: the newest approved package is for the pipeline trigger."""
    from moto import mock_aws

    with mock_aws():
        sagemaker = boto3.client("sagemaker", region_name=REGION)
        monkeypatch.setattr(handlers, "client", lambda service, region=None: sagemaker)
        sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
        arns = [
            sagemaker.create_model_package(
                ModelPackageGroupName=GROUP,
                ModelApprovalStatus="Approved",
                InferenceSpecification={
                    "Containers": [
                        {
                            "Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/inference:1",
                            "ModelDataUrl": f"s3://tag-inspect-models-{ACCOUNT}-{REGION}/pipeline-runs/{n}/model.tar.gz",
                        }
                    ],
                    "SupportedContentTypes": ["application/json"],
                    "SupportedResponseMIMETypes": ["application/json"],
                },
            )["ModelPackageArn"]
            for n in (1, 2)
        ]
        event = {"trigger": "model-package-approved", "model_package_arn": arns[0], "model_package_group_name": GROUP}
        approved = handlers.resolve(event, _context())
        newest = handlers.resolve({"trigger": "workflow-pipeline"}, _context())
    assert (approved["package"]["arn"], approved["package"]["version"]) == (arns[0], 1)
    assert (newest["package"]["arn"], newest["package"]["version"]) == (arns[1], 2)
