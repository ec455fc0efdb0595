"""The workflow stack as synthesized: devices' permissions, bucket, component version, workflow, rule.

Synthesis runs cdk-nag over every stack (a finding fails `edge_stacks`); cfn-lint runs below.
"""

from __future__ import annotations

import json
import re
from typing import Any

import boto3
import pytest
from cfnlint.api import ManualArgs, lint_file
from moto import mock_aws

from edge_deployment.runtime.components import VERSION_PLACEHOLDER, inference_component_version, render_recipe_template
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, EdgeDeploymentConfig
from shared.names import MODEL_ARCHIVE_PREFIX
from tests.edge_deployment.conftest import GROUP, REGION
from tests.edge_deployment.recipes import recipe_problems
from tests.helpers.asl import (
    SdkTask,
    check_sdk_task,
    iam_actions,
    render_token,
    role_allows,
    role_statements,
    sdk_tasks,
    state_machines,
)


def _only(template: dict[str, Any], resource_type: str) -> tuple[str, dict[str, Any]]:
    found = [(lid, r) for lid, r in template["Resources"].items() if r["Type"] == resource_type]
    assert len(found) == 1, [lid for lid, _ in found]
    return found[0]


def _of_type(template: dict[str, Any], resource_type: str) -> list[str]:
    return [lid for lid, r in template["Resources"].items() if r["Type"] == resource_type]


def _by_prefix(template: dict[str, Any], resource_type: str, prefix: str) -> tuple[str, dict[str, Any]]:
    found = [
        (lid, r) for lid, r in template["Resources"].items() if r["Type"] == resource_type and lid.startswith(prefix)
    ]
    assert len(found) == 1, (prefix, [lid for lid, _ in found])
    return found[0]


def _function_config(function: dict[str, Any]) -> EdgeDeploymentConfig:
    """The settings a workflow function runs with (a bucket it references reads `${LogicalId}`)."""
    variables = function["Properties"]["Environment"]["Variables"]
    assert {name for name in variables if not name.startswith("POWERTOOLS_")} == {ENVIRONMENT_VARIABLE}
    return EdgeDeploymentConfig.from_json(render_token(variables[ENVIRONMENT_VARIABLE], {}))


def _text(value: Any) -> str:
    return render_token(value, {}) if not isinstance(value, str) else value


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- devices ------------------------------------------------------------------------------------


def test_the_thing_group_is_named_from_the_configuration(workflow_stack, settings):
    _, group = _only(workflow_stack.template, "AWS::IoT::ThingGroup")
    assert group["Properties"]["ThingGroupName"] == settings.edge_deployment.thing_group_name


def test_the_stack_holds_no_shared_device_policy_and_no_thing_policy_variable(workflow_stack):
    """Greengrass core devices cannot use thing policy variables: register_device gives each device its own policy."""
    assert _of_type(workflow_stack.template, "AWS::IoT::Policy") == []
    assert "iot:Connection.Thing" not in json.dumps(workflow_stack.template)
    outputs = workflow_stack.template["Outputs"]
    assert _text(outputs["DevicePolicyPrefix"]["Value"]) == "tag-inspect-edge-device-"


def test_the_token_exchange_role_reads_artifacts_and_writes_the_device_s_own_frames_only(workflow_stack):
    template = workflow_stack.template
    role_id, role = _by_prefix(template, "AWS::IAM::Role", "FleetTokenExchangeRole")
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"] == [
        {"Action": "sts:AssumeRole", "Effect": "Allow", "Principal": {"Service": "credentials.iot.amazonaws.com"}}
    ]
    assert "ManagedPolicyArns" not in role["Properties"]
    _, alias = _only(template, "AWS::IoT::RoleAlias")
    assert alias["Properties"] == {
        "CredentialDurationSeconds": 3600,
        "RoleAlias": "tag-inspect-edge-token-exchange",
        "RoleArn": {"Fn::GetAtt": [role_id, "Arn"]},
        "Tags": [{"Key": "project", "Value": "edge-quality-inspection"}],  # project.tags in config.yaml
    }
    granted = {}
    policies = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::IAM::Policy" and {"Ref": role_id} in r["Properties"]["Roles"]
    ]
    for policy in policies:
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            for action in _as_list(statement["Action"]):
                granted[action] = [_text(r) for r in _as_list(statement["Resource"])]
    bucket_id, _ = _by_prefix(template, "AWS::S3::Bucket", "FleetComponentBucket")
    key_id, _ = _by_prefix(template, "AWS::KMS::Key", "FleetComponentKey")
    assert granted == {
        "s3:GetObject": [f"${{{bucket_id}.Arn}}/artifacts/*"],
        "s3:GetBucketLocation": [f"${{{bucket_id}.Arn}}"],
        "kms:Decrypt": [f"${{{key_id}.Arn}}"],
        "s3:PutObject": [
            "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/raw-images/edge/${credentials-iot:ThingName}/*"
        ],
        "kms:GenerateDataKey": ["arn:aws:kms:eu-west-1:123456789012:key/*"],
    }


def test_the_component_bucket_is_encrypted_versioned_private_and_tls_only(workflow_stack):
    template = workflow_stack.template
    _bucket_id, bucket = _by_prefix(template, "AWS::S3::Bucket", "FleetComponentBucket")
    key_id, _ = _by_prefix(template, "AWS::KMS::Key", "FleetComponentKey")
    properties = bucket["Properties"]
    rule = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]},
    }
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True
    assert "LoggingConfiguration" in properties
    assert bucket["DeletionPolicy"] == "Retain"
    _, bucket_policy = _by_prefix(template, "AWS::S3::BucketPolicy", "FleetComponentBucket")
    (deny,) = [s for s in bucket_policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# -- the inference component version --------------------------------------------------------------


def test_the_inference_component_version_is_published_from_the_repo_s_recipe(workflow_stack, settings):
    template = workflow_stack.template
    _, resource = _only(template, "Custom::GreengrassComponentVersion")
    properties = resource["Properties"]
    bucket_id, _ = _by_prefix(template, "AWS::S3::Bucket", "FleetComponentBucket")
    function_id, _ = _by_prefix(template, "AWS::Lambda::Function", "InferenceComponentPublishFunction")
    assert properties["ServiceToken"] == {"Fn::GetAtt": [function_id, "Arn"]}
    assert properties["Bucket"] == {"Ref": bucket_id}
    assert properties["SourceKey"] == f"{properties['ArtifactHash']}.zip"  # the asset the pipeline uploads
    assert (
        properties["KeyTemplate"]
        == f"artifacts/{settings.edge_deployment.inference_component_name}/{VERSION_PLACEHOLDER}/inference.zip"
    )
    recipe_template = render_token(properties["RecipeTemplate"], {bucket_id: "component-bucket"})
    version = inference_component_version(artifact_hash=properties["ArtifactHash"], recipe_template=recipe_template)
    recipe = render_recipe_template(recipe_template, version)
    assert recipe_problems(recipe) == []
    assert recipe["ComponentName"] == settings.edge_deployment.inference_component_name
    assert {a["Uri"] for m in recipe["Manifests"] for a in m["Artifacts"]} == {
        f"s3://component-bucket/artifacts/{recipe['ComponentName']}/{version}/inference.zip"
    }
    configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    edge = settings.edge_deployment
    assert configuration["uploadBucket"] == "tag-inspect-data-123456789012-eu-west-1"
    assert configuration["uploadPrefix"] == "raw-images/edge/"
    assert configuration["resultsTopic"] == edge.results_topic
    assert configuration["heartbeatTopic"] == edge.heartbeat_topic
    assert configuration["modelComponentName"] == edge.model_component_name
    assert configuration["uncertaintyBand"] == list(edge.uncertainty_band)
    assert configuration["offlineQueueMaxMB"] == edge.offline_queue_mb
    assert configuration["outboxMaxMB"] == edge.outbox_mb
    model_dependency = recipe["ComponentDependencies"][edge.model_component_name]
    assert model_dependency["DependencyType"] == "SOFT"  # a new model must not restart the inference


def test_the_publishing_function_may_write_only_its_component_s_artifacts(workflow_stack):
    template = workflow_stack.template
    _function_id, function = _by_prefix(template, "AWS::Lambda::Function", "InferenceComponentPublishFunction")
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    for action in (
        "greengrass:CreateComponentVersion",
        "greengrass:DescribeComponent",
        "greengrass:GetComponent",
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
        "kms:GenerateDataKey",
    ):
        assert role_allows(template, role_id, action), action
    assert not role_allows(template, role_id, "s3:DeleteObject")
    assert not role_allows(template, role_id, "greengrass:CreateDeployment")


# -- the workflow ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def machine(workflow_stack):
    (found,) = state_machines(workflow_stack.template).values()
    return found


def test_the_state_machine_logs_everything_and_is_traced(machine):
    properties = machine.properties
    assert properties["StateMachineName"] == "tag-inspect-edge-deployment"
    assert properties["LoggingConfiguration"]["Level"] == "ALL"
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is True
    assert properties["TracingConfiguration"] == {"Enabled": True}


def test_every_task_retries_with_backoff_and_has_a_catch(machine):
    tasks = {name: state for name, state in machine.definition["States"].items() if state["Type"] == "Task"}
    # 9 functions, DescribeModelComponent, 6 notifications and the approval request (task token)
    assert len(tasks) == 17
    for name, state in tasks.items():
        assert state.get("Retry"), f"{name} has no retry"
        assert all(retry.get("IntervalSeconds", 1) >= 1 for retry in state["Retry"]), name
        assert any(retry.get("BackoffRate", 2.0) > 1 for retry in state["Retry"]), name
        assert state.get("Catch"), f"{name} has no catch"


def test_every_sdk_task_exists_in_botocore_and_its_role_grants_the_real_iam_action(workflow_stack, machine):
    tasks = sdk_tasks(machine.definition)
    assert [task.state_name for task in tasks] == ["DescribeModelComponent"]
    for task in tasks:
        assert check_sdk_task(task) == []
        for action in iam_actions(task):
            assert action.startswith("greengrass:")  # greengrassv2 signs as greengrass
            assert role_allows(workflow_stack.template, machine.role_logical_id, action), action


def test_no_policy_of_the_stack_names_the_greengrassv2_prefix(workflow_stack):
    actions = [
        action
        for resource in workflow_stack.template["Resources"].values()
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IoT::Policy")
        for statement in resource["Properties"]["PolicyDocument"]["Statement"]
        for action in _as_list(statement["Action"])
    ]
    assert any(action.startswith("greengrass:") for action in actions)
    assert not [action for action in actions if action.startswith("greengrassv2:")]


# Every AWS call of each function (the ones the Stubber and moto tests make), with its role.
FUNCTION_CALLS = {
    "WorkflowResolveFunction": [("sagemaker", "DescribeModelPackage"), ("sagemaker", "ListModelPackages")],
    "WorkflowPrepareModelFunction": [
        ("greengrassv2", "DescribeComponent"),
        ("greengrassv2", "GetComponent"),
        ("greengrassv2", "CreateComponentVersion"),
        ("s3", "HeadObject"),
        ("s3", "GetObject"),
        ("s3", "PutObject"),
    ],
    "WorkflowCreateDeploymentFunction": [
        ("greengrassv2", "ListDeployments"),
        ("greengrassv2", "GetDeployment"),
        ("greengrassv2", "CreateDeployment"),
        ("iot", "DescribeJob"),
        ("iot", "CreateJob"),
        ("iot", "DescribeThingGroup"),
        ("sagemaker", "ListModelPackages"),
    ],
    "WorkflowCheckRolloutFunction": [
        ("greengrassv2", "GetDeployment"),
        ("iot", "DescribeJob"),
        ("iot", "ListJobExecutionsForJob"),
        ("greengrassv2", "ListEffectiveDeployments"),
        ("iot", "ListThingsInThingGroup"),
        ("greengrassv2", "ListDeployments"),
        ("sagemaker", "ListModelPackages"),
        ("sfn", "ListExecutions"),
    ],
    "WorkflowBeginStageFunction": [
        ("iot", "DescribeThingGroup"),
        ("iot", "ListThingsInThingGroup"),
        ("greengrassv2", "ListDeployments"),
        ("greengrassv2", "GetDeployment"),
        ("greengrassv2", "DescribeComponent"),
    ],
    "WorkflowCheckServingFunction": [("iot", "ListThingsInThingGroup"), ("cloudwatch", "GetMetricData")],
    "WorkflowCheckHealthFunction": [("iot", "ListThingsInThingGroup"), ("cloudwatch", "GetMetricData")],
    "WorkflowRollBackStageFunction": [
        ("greengrassv2", "CreateDeployment"),
        ("iot", "CreateJob"),
        ("iot", "DescribeThingGroup"),
        ("iot", "DescribeJob"),
    ],
    "WorkflowCheckRollbackFunction": [
        ("greengrassv2", "GetDeployment"),
        ("iot", "DescribeJob"),
        ("iot", "ListJobExecutionsForJob"),
        ("greengrassv2", "ListEffectiveDeployments"),
        ("iot", "ListThingsInThingGroup"),
    ],
    "InferenceComponentPublishFunction": [
        ("greengrassv2", "DescribeComponent"),
        ("greengrassv2", "GetComponent"),
        ("greengrassv2", "CreateComponentVersion"),
        ("s3", "HeadObject"),
        ("s3", "CopyObject"),
    ],
}


@pytest.mark.parametrize("function", sorted(FUNCTION_CALLS))
def test_each_function_s_role_grants_the_iam_actions_of_its_calls(workflow_stack, function):
    template = workflow_stack.template
    _, resource = _by_prefix(template, "AWS::Lambda::Function", function)
    role_id = resource["Properties"]["Role"]["Fn::GetAtt"][0]
    for service, operation in FUNCTION_CALLS[function]:
        call = SdkTask("call", service, operation[0].lower() + operation[1:], {}, "")
        for action in iam_actions(call):
            assert role_allows(template, role_id, action), f"{function}: {service}.{operation} needs {action}"


def test_the_stage_functions_may_reach_every_stage_s_thing_group_and_no_other(workflow_stack, settings):
    template = workflow_stack.template
    (fleet_group_id,) = [
        lid
        for lid, r in template["Resources"].items()
        if r["Type"] == "AWS::IoT::ThingGroup"
        and r["Properties"]["ThingGroupName"] == settings.edge_deployment.thing_group_name
    ]
    # the app's own group by its resource, the other stages' groups by name
    expected = {
        f"${{{fleet_group_id}.Arn}}"
        if group == settings.edge_deployment.thing_group_name
        else f"arn:aws:iot:eu-west-1:123456789012:thinggroup/{group}"
        for group in settings.edge_deployment.stage_thing_groups
    }
    assert len(expected) == 2  # the example: pilot and production
    for function, action in (
        ("WorkflowCreateDeploymentFunction", "iot:CreateJob"),
        ("WorkflowRollBackStageFunction", "iot:CreateJob"),
        ("WorkflowBeginStageFunction", "iot:ListThingsInThingGroup"),
        ("WorkflowCheckHealthFunction", "iot:ListThingsInThingGroup"),
        ("WorkflowCheckServingFunction", "iot:ListThingsInThingGroup"),
    ):
        _, resource = _by_prefix(template, "AWS::Lambda::Function", function)
        role_id = resource["Properties"]["Role"]["Fn::GetAtt"][0]
        granted = {
            render_token(arn, {"AWS::Partition": "aws", "AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012"})
            for statement in role_statements(template, role_id)
            if action in _as_list(statement["Action"])
            for arn in _as_list(statement["Resource"])
        }
        groups = {arn for arn in granted if "thinggroup/" in arn or "ThingGroup" in arn}
        assert groups == expected, (function, groups)


def test_the_prepare_function_reads_only_the_model_archives_training_writes(workflow_stack):
    template = workflow_stack.template
    _, function = _by_prefix(template, "AWS::Lambda::Function", "WorkflowPrepareModelFunction")
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    reads = [
        _text(resource)
        for statement in role_statements(template, role_id)
        if "s3:GetObject" in _as_list(statement["Action"])
        for resource in _as_list(statement["Resource"])
        if "models" in _text(resource)
    ]
    assert reads == ["arn:aws:s3:::tag-inspect-models-123456789012-eu-west-1/pipeline-runs/*"]
    assert _function_config(function).model_archive_prefix == MODEL_ARCHIVE_PREFIX


def test_the_functions_get_their_settings_from_the_configuration(workflow_stack, settings):
    template = workflow_stack.template
    edge = settings.edge_deployment
    configs = {
        prefix: _function_config(_by_prefix(template, "AWS::Lambda::Function", prefix)[1])
        for prefix in FUNCTION_CALLS
        if prefix.startswith("Workflow")
    }
    assert len(set(configs.values())) == 1, "every function of the workflow runs with the same settings"
    assert configs["WorkflowResolveFunction"].model_package_group == GROUP
    prepare = configs["WorkflowPrepareModelFunction"]
    assert prepare.model_component_name == edge.model_component_name
    assert prepare.max_archive_bytes == edge.max_model_archive_mb * 1024 * 1024
    assert list(prepare.class_names) == settings.project.class_names
    rollout = configs["WorkflowCreateDeploymentFunction"].rollout
    assert rollout.abort_failure_percentage == edge.rollout.abort_failure_percentage
    assert configs["WorkflowCreateDeploymentFunction"].deployment_name == edge.effective_deployment_name
    bucket_id, _ = _by_prefix(template, "AWS::S3::Bucket", "FleetComponentBucket")
    assert prepare.component_bucket == f"${{{bucket_id}}}"  # the fleet's bucket, by reference
    _, prepare_function = _by_prefix(template, "AWS::Lambda::Function", "WorkflowPrepareModelFunction")
    assert prepare_function["Properties"]["EphemeralStorage"]["Size"] >= 2 * edge.max_model_archive_mb


def test_the_workflow_pipeline_runs_the_state_machine_for_the_newest_approved_package(workflow_stack, machine):
    _, pipeline = _only(workflow_stack.template, "AWS::CodePipeline::Pipeline")
    actions = [a for stage in pipeline["Properties"]["Stages"] for a in stage["Actions"]]
    (invoke,) = [a for a in actions if a["ActionTypeId"]["Provider"] == "StepFunctions"]
    assert invoke["Configuration"]["StateMachineArn"] == {"Ref": machine.logical_id}
    assert json.loads(invoke["Configuration"]["Input"]) == {"trigger": "workflow-pipeline"}  # no package named


# -- the approval rule ----------------------------------------------------------------------------


def _package_event(group: str, status: str) -> dict[str, Any]:
    return {
        "Source": "aws.sagemaker",
        "DetailType": "SageMaker Model Package State Change",
        "Detail": json.dumps(
            {
                "ModelPackageGroupName": group,
                "ModelPackageVersion": 7,
                "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{group}/7",
                "ModelApprovalStatus": status,
            }
        ),
    }


def test_only_an_approved_package_of_this_group_starts_the_workflow(workflow_stack):
    _, rule = _by_prefix(workflow_stack.template, "AWS::Events::Rule", "WorkflowModelApprovedRule")
    pattern = rule["Properties"]["EventPattern"]
    assert pattern == {
        "source": ["aws.sagemaker"],
        "detail-type": ["SageMaker Model Package State Change"],
        "detail": {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved"]},
    }
    with mock_aws():
        events = boto3.client("events", region_name=REGION)
        sqs = boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="started")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="approved", EventPattern=json.dumps(pattern))
        events.put_targets(Rule="approved", Targets=[{"Id": "q", "Arn": queue_arn}])
        cases = {
            "approved": _package_event(GROUP, "Approved"),
            "merely-registered": _package_event(GROUP, "PendingManualApproval"),
            "rejected": _package_event(GROUP, "Rejected"),
            "other-group": _package_event("someone-elses-models", "Approved"),
        }
        started = []
        for name, event in cases.items():
            events.put_events(Entries=[event])
            received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
            if received:
                started.append(name)
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=received[0]["ReceiptHandle"])
    assert started == ["approved"]


def test_the_rule_passes_that_package_s_arn_to_the_workflow(workflow_stack):
    _, rule = _by_prefix(workflow_stack.template, "AWS::Events::Rule", "WorkflowModelApprovedRule")
    (target,) = rule["Properties"]["Targets"]
    transformer = target["InputTransformer"]
    assert transformer["InputPathsMap"]["detail-ModelPackageArn"] == "$.detail.ModelPackageArn"
    assert '"model_package_arn":<detail-ModelPackageArn>' in transformer["InputTemplate"]
    assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0


def test_an_approval_that_cannot_start_the_workflow_is_kept_encrypted_and_alarmed(workflow_stack):
    template = workflow_stack.template
    _, rule = _by_prefix(template, "AWS::Events::Rule", "WorkflowModelApprovedRule")
    assert rule["Properties"]["Name"] == "tag-inspect-edge-model-approved"
    (target,) = rule["Properties"]["Targets"]
    queue_id, queue = _by_prefix(template, "AWS::SQS::Queue", "WorkflowApprovalDeadLetters")
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}}
    assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 86_400
    key_id = queue["Properties"]["KmsMasterKeyId"]["Fn::GetAtt"][0]
    key_statements = template["Resources"][key_id]["Properties"]["KeyPolicy"]["Statement"]
    (events_may,) = [s for s in key_statements if s.get("Principal") == {"Service": "events.amazonaws.com"}]
    assert _text(events_may["Condition"]["ArnEquals"]["aws:SourceArn"]) == (
        "arn:aws:events:eu-west-1:123456789012:rule/tag-inspect-edge-model-approved"
    )
    _, queue_policy = _by_prefix(template, "AWS::SQS::QueuePolicy", "WorkflowApprovalDeadLetters")
    statements = queue_policy["Properties"]["PolicyDocument"]["Statement"]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
    )
    (send,) = [s for s in statements if s.get("Principal") == {"Service": "events.amazonaws.com"}]
    assert send["Action"] == "sqs:SendMessage"
    _, alarm = _by_prefix(template, "AWS::CloudWatch::Alarm", "WorkflowApprovalDeadLetters")
    properties = alarm["Properties"]
    assert properties["AlarmName"] == "tag-inspect-edge-deployment-approval-events-undelivered"
    assert properties["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert properties["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    assert (properties["ComparisonOperator"], properties["Threshold"]) == ("GreaterThanThreshold", 0)
    assert [_text(action) for action in properties["AlarmActions"]] == [
        "arn:aws:sns:eu-west-1:123456789012:tag-inspect-edge-deployment-notifications"
    ]


# -- the whole stack ------------------------------------------------------------------------------


def test_nothing_is_tied_to_one_account_region_or_device(workflow_stack, settings):
    # the configured source connection (read by the workflow pipeline) is the only ARN from the configuration
    text = json.dumps(workflow_stack.template).replace(str(settings.source.connection_arn), "<connection>")
    assert not re.search(r"(?<![\w-])\d{12}(?![\w-])", text), "an account id is written into the template"
    assert "eu-west-1" not in text and "us-east-1" not in text
    assert "thing/" not in text.replace("thing/${", "")  # no IoT thing is named


def test_the_workflow_template_passes_cfn_lint(workflow_stack):
    config = ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=["W3005"])
    assert [str(match) for match in lint_file(workflow_stack.template_file, config=config)] == []


def test_an_environment_with_a_fixed_account_and_region_synthesizes_clean():
    """-c env=prod: the toolchain stack's ARNs hold literal account and region; cdk-nag still passes."""
    from tests.helpers.cdk_assembly import stack_named, synthesized

    stacks = synthesized("edge_deployment", "prod")  # raises on any cdk-nag finding
    assert stack_named(stacks, "tag-inspect-edge-deployment-toolchain").environment == "aws://222222222222/eu-west-1"
    workflow = stack_named(stacks, "tag-inspect-edge-deployment-workflow")
    config = ManualArgs(regions=["eu-west-1"], ignore_checks=["W3005"])
    assert [str(match) for match in lint_file(workflow.template_file, config=config)] == []
