"""The CI/CD backbone: asset pipeline, workflow pipeline, triggers, chaining, schedule, notifications.

These tests build the toolchain around a minimal stage, so they protect the backbone itself; the
apps' own stages are covered by their tests and by test_apps.py.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Match

from shared.building_blocks import python_function, workflow_state_machine
from shared.code_bundle import code_bundle
from shared.config import NotificationSettings
from shared.guardrails import apply_guardrails
from shared.names import resource_names
from shared.pipelines import AppToolchainStack, WorkflowPipeline, cdk_cli_version
from tests.helpers.cdk_assembly import SynthesizedStack, new_app, stacks_of

REPO_ROOT = Path(__file__).resolve().parents[2]


class _MinimalStage(cdk.Stage):
    def __init__(self, scope, construct_id, *, settings, app="training", bad_bucket=False, file_asset=False, **kwargs):
        super().__init__(scope, construct_id, **kwargs)
        stack = cdk.Stack(self, "Workflow", stack_name=f"{settings.project.prefix}-{app.replace('_', '-')}-workflow")
        names = resource_names(settings, account=stack.account, region=stack.region)
        machine = workflow_state_machine(
            stack,
            "Workflow",
            state_machine_name=names.workflow_state_machine(app),
            definition=sfn.Succeed(stack, "Done"),
            timeout=cdk.Duration.minutes(5),
        )
        WorkflowPipeline(stack, "WorkflowPipeline", settings=settings, app=app, state_machine=machine)
        if bad_bucket:
            s3.Bucket(stack, "Unencrypted")  # no TLS policy, no logs: cdk-nag must catch it
        if file_asset:  # makes CDK Pipelines add its asset publishing stage and role
            python_function(
                stack,
                "WithAsset",
                code_dir=code_bundle("shared-runtime", ["shared/runtime"]),
                handler="shared.runtime.path_filter.handler",
                description="A function whose code is a file asset",
                powertools=False,
            )


def _toolchain(
    settings, app: str = "training", *, bad_bucket: bool = False
) -> tuple[SynthesizedStack, SynthesizedStack]:
    cdk_app = new_app(outdir=Path(tempfile.mkdtemp(prefix="cdk-toolchain-")))

    def stage_factory(scope, construct_id, *, settings):
        return _MinimalStage(scope, construct_id, settings=settings, app=app, bad_bucket=bad_bucket)

    AppToolchainStack(cdk_app, "Toolchain", settings=settings, app=app, stage_factory=stage_factory)
    apply_guardrails(cdk_app)
    stacks = stacks_of(cdk_app.synth())
    toolchain = next(s for s in stacks if s.stack_name.endswith("-toolchain"))
    workflow = next(s for s in stacks if s.stack_name.endswith("-workflow"))
    return toolchain, workflow


@pytest.fixture(scope="module")
def training(settings):
    return _toolchain(settings, "training")


@pytest.fixture(scope="module")
def labeling(settings):
    return _toolchain(settings, "labeling")


def _with(settings, **sections: dict[str, Any]):
    return settings.model_copy(
        update={name: getattr(settings, name).model_copy(update=values) for name, values in sections.items()}
    )


def _build_specs(stack: SynthesizedStack) -> dict[str, str]:
    """Project logical id -> buildspec text."""
    return {
        logical_id: resource["Properties"]["Source"]["BuildSpec"]
        for logical_id, resource in stack.resources("AWS::CodeBuild::Project").items()
    }


def _rule_with(stack: SynthesizedStack, predicate) -> list[dict[str, Any]]:
    return [r["Properties"] for r in stack.resources("AWS::Events::Rule").values() if predicate(r["Properties"])]


# -- asset pipeline ---------------------------------------------------------------------------------


def test_stack_and_pipeline_names(training):
    toolchain, workflow = training
    assert toolchain.stack_name == "tag-inspect-training-toolchain"
    assert workflow.stack_name == "tag-inspect-training-workflow"
    toolchain.assertions.has_resource_properties(
        "AWS::CodePipeline::Pipeline", {"Name": "tag-inspect-training-asset-pipeline", "PipelineType": "V2"}
    )


def test_push_trigger_is_filtered_to_the_app_and_common_code(training):
    toolchain, _ = training
    pipeline = toolchain.assertions.find_resources(
        "AWS::CodePipeline::Pipeline", {"Properties": {"Name": "tag-inspect-training-asset-pipeline"}}
    )
    properties = next(iter(pipeline.values()))["Properties"]
    (trigger,) = properties["Triggers"]
    assert trigger["ProviderType"] == "CodeStarSourceConnection"
    (push,) = trigger["GitConfiguration"]["Push"]
    assert push["Branches"] == {"Includes": ["main"]}
    assert push["FilePaths"]["Includes"] == ["**"]
    excludes = push["FilePaths"]["Excludes"]
    assert {"labeling/**", "edge_deployment/**", "tests/labeling/**", "tests/edge_deployment/**"} <= set(excludes)
    assert not any(pattern.startswith(("training", "shared", "tests/training")) for pattern in excludes)
    source = properties["Stages"][0]["Actions"][0]
    # a filtered trigger replaces the source's own change detection
    assert source["Configuration"]["DetectChanges"] is False
    assert source["Configuration"]["FullRepositoryId"] == "example-org/edge-quality-inspection"


def test_synth_step_runs_the_apps_tests_then_synthesizes_it(training, settings):
    toolchain, _ = training
    synth_specs = [spec for spec in _build_specs(toolchain).values() if "make synth" in spec]
    assert len(synth_specs) == 1
    commands = json.loads(synth_specs[0])["phases"]["build"]["commands"]
    assert commands == ["make test APP=training", "make synth APP=training DEPLOY=true"]
    # with an environment, the pipeline synthesizes for that environment
    prod = settings.model_copy(update={"environment_name": "prod"})
    toolchain_prod, _ = _toolchain(prod, "training")
    spec = next(s for s in _build_specs(toolchain_prod).values() if "make synth" in s)
    assert "make synth APP=training ENV=prod DEPLOY=true" in json.loads(spec)["phases"]["build"]["commands"]


def test_codebuild_runs_node_22_and_the_pinned_cdk_cli(training):
    toolchain, _ = training
    specs = [json.loads(spec) for spec in _build_specs(toolchain).values()]
    assert all(spec["phases"]["install"]["runtime-versions"]["nodejs"] == "22" for spec in specs)
    version = cdk_cli_version()
    assert version == json.loads((REPO_ROOT / "package.json").read_text())["devDependencies"]["aws-cdk"]
    self_mutation = [s for s in specs if "cdk -a . deploy" in json.dumps(s)]
    assert self_mutation, "the pipeline must mutate itself"
    assert f"npm install -g aws-cdk@{version}" in json.dumps(self_mutation[0])


def test_cli_version_must_be_exact(tmp_path):
    package = tmp_path / "package.json"
    package.write_text(json.dumps({"devDependencies": {"aws-cdk": "^2.1148.0"}}))
    with pytest.raises(ValueError, match="must be an exact version"):
        cdk_cli_version(package)


def test_codebuild_logs_go_to_a_retained_log_group(training):
    toolchain, _ = training
    toolchain.assertions.has_resource_properties("AWS::Logs::LogGroup", {"RetentionInDays": 90})
    retained = {
        logical_id
        for logical_id, group in toolchain.resources("AWS::Logs::LogGroup").items()
        if group["Properties"].get("RetentionInDays") == 90
    }
    projects = toolchain.resources("AWS::CodeBuild::Project")
    assert projects, "the asset pipeline should have CodeBuild projects"
    for project in projects.values():
        logs = project["Properties"]["LogsConfig"]["CloudWatchLogs"]
        assert logs["Status"] == "ENABLED"
        assert logs["GroupName"].get("Ref") in retained, logs["GroupName"]


def test_artifact_buckets_are_kms_encrypted_logged_and_tls_only(training):
    for stack in training:
        stack.assertions.has_resource_properties(
            "AWS::S3::Bucket",
            {
                "BucketEncryption": {
                    "ServerSideEncryptionConfiguration": [
                        {
                            "ServerSideEncryptionByDefault": {
                                "SSEAlgorithm": "aws:kms",
                                "KMSMasterKeyID": Match.any_value(),
                            }
                        }
                    ]
                },
                "LoggingConfiguration": Match.object_like({"DestinationBucketName": Match.any_value()}),
                "VersioningConfiguration": {"Status": "Enabled"},
            },
        )
        stack.assertions.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [Match.object_like({"Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})]
                    )
                }
            },
        )
        pipelines = stack.resources("AWS::CodePipeline::Pipeline")
        assert pipelines, f"{stack.stack_name} has no pipeline"
        for pipeline in pipelines.values():
            assert pipeline["Properties"]["ArtifactStore"]["EncryptionKey"]["Type"] == "KMS"


def _start_workflow_step(toolchain: SynthesizedStack) -> tuple[list[str], dict[str, Any]]:
    """The StartWorkflow step: its build commands and its CodePipeline action."""
    (spec,) = [spec for spec in _build_specs(toolchain).values() if "start-pipeline-execution" in spec]
    pipeline = next(iter(toolchain.resources("AWS::CodePipeline::Pipeline").values()))
    deploy_actions = next(s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Deploy")["Actions"]
    action = next(a for a in deploy_actions if a["Name"] == "StartWorkflow")
    return json.loads(spec)["phases"]["build"]["commands"], action


def test_asset_pipeline_starts_the_workflow_pipeline_after_deploying(training):
    toolchain, _ = training
    commands, start_action = _start_workflow_step(toolchain)
    assert any(
        "aws codepipeline start-pipeline-execution --name tag-inspect-training-workflow-pipeline" in c for c in commands
    )
    # the step knows which asset pipeline execution it belongs to
    variables = json.loads(start_action["Configuration"]["EnvironmentVariables"])
    assert {
        "name": "ASSET_PIPELINE_EXECUTION_ID",
        "type": "PLAINTEXT",
        "value": "#{codepipeline.PipelineExecutionId}",
    } in variables
    statements = [
        statement
        for policy in toolchain.resources("AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "workflow-pipeline" in json.dumps(statement) or "ListPipelineExecutions" in json.dumps(statement)
    ]
    granted = {
        (action, json.dumps(statement["Resource"]).split(":")[-1].strip('"]}'))
        for statement in statements
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert granted == {
        ("codepipeline:StartPipelineExecution", "tag-inspect-training-workflow-pipeline"),
        ("codepipeline:GetPipeline", "tag-inspect-training-workflow-pipeline"),
        ("codepipeline:ListPipelineExecutions", "tag-inspect-training-asset-pipeline"),
    }
    pipeline = next(iter(toolchain.resources("AWS::CodePipeline::Pipeline").values()))
    stage_names = [stage["Name"] for stage in pipeline["Properties"]["Stages"]]
    assert stage_names.index("Deploy") > stage_names.index("Build")
    deploy_actions = next(s for s in pipeline["Properties"]["Stages"] if s["Name"] == "Deploy")["Actions"]
    deploy_orders = [a["RunOrder"] for a in deploy_actions if a["Name"] != "StartWorkflow"]
    assert start_action["RunOrder"] > max(deploy_orders)


FAKE_AWS = """#!/usr/bin/env python3
import json, os, sys
answers = json.loads(os.environ["FAKE_AWS_ANSWERS"])
with open(os.environ["FAKE_AWS_CALLS"], "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
operation = sys.argv[2]
if operation == "list-pipeline-executions":
    print(answers["own_start"])
elif operation == "get-pipeline":
    print(answers["created"])
"""


@pytest.mark.parametrize(
    ("own_start", "created", "starts"),
    [
        # first deploy: this run created the workflow pipeline, and CodePipeline started it by itself
        ("2026-11-20T10:00:00.123000+00:00", "2026-11-20T10:14:31.900000+00:00", False),
        # a later deploy (or the chain): the workflow pipeline existed before this run
        ("2026-11-27T09:00:00.000000+00:00", "2026-11-20T10:14:31.900000+00:00", True),
        # this run is not among the listed executions: start it (twice is better than never)
        ("None", "2026-11-20T10:14:31.900000+00:00", True),
    ],
)
def test_the_workflow_runs_once_on_first_deploy_and_after_every_later_one(
    training, tmp_path, own_start, created, starts
):
    toolchain, _ = training
    commands, _ = _start_workflow_step(toolchain)
    fake = tmp_path / "bin" / "aws"
    fake.parent.mkdir()
    fake.write_text(FAKE_AWS)
    fake.chmod(0o755)
    calls = tmp_path / "calls"
    environment = {
        "PATH": f"{fake.parent}:/usr/bin:/bin",
        "FAKE_AWS_ANSWERS": json.dumps({"own_start": own_start, "created": created}),
        "FAKE_AWS_CALLS": str(calls),
        "ASSET_PIPELINE_EXECUTION_ID": "e-1",
    }
    for command in commands:  # CodeBuild runs them with sh, failing the build on the first error
        subprocess.run(["sh", "-e", "-c", command], env=environment, check=True, capture_output=True)
    made = calls.read_text().splitlines()
    assert made[0].startswith(
        "codepipeline list-pipeline-executions --pipeline-name tag-inspect-training-asset-pipeline"
    )
    assert "pipelineExecutionId=='e-1'" in made[0]
    started = [call for call in made if call.startswith("codepipeline start-pipeline-execution")]
    assert started == (
        ["codepipeline start-pipeline-execution --name tag-inspect-training-workflow-pipeline"] if starts else []
    )


# -- workflow pipeline ---------------------------------------------------------------------------


def test_workflow_pipeline_runs_the_state_machine_and_is_started_only_explicitly(training):
    _, workflow = training
    pipeline = next(iter(workflow.resources("AWS::CodePipeline::Pipeline").values()))["Properties"]
    assert pipeline["Name"] == "tag-inspect-training-workflow-pipeline"
    source, run = pipeline["Stages"]
    assert source["Actions"][0]["Configuration"]["DetectChanges"] is False
    assert "Triggers" not in pipeline
    action = run["Actions"][0]
    assert action["ActionTypeId"] == {"Category": "Invoke", "Owner": "AWS", "Provider": "StepFunctions", "Version": "1"}
    assert action["Configuration"]["StateMachineArn"] == {
        "Ref": next(iter(workflow.resources("AWS::StepFunctions::StateMachine")))
    }


# -- events ------------------------------------------------------------------------------------------


def test_training_is_chained_after_the_labeling_workflow(training):
    toolchain, _ = training
    rules = _rule_with(toolchain, lambda p: p.get("EventPattern", {}).get("detail", {}).get("state") == ["SUCCEEDED"])
    assert len(rules) == 1
    pattern = rules[0]["EventPattern"]
    assert pattern["source"] == ["aws.codepipeline"]
    assert pattern["detail-type"] == ["CodePipeline Pipeline Execution State Change"]
    assert pattern["detail"]["pipeline"] == ["tag-inspect-labeling-workflow-pipeline"]
    (target,) = rules[0]["Targets"]
    asset_pipeline = next(
        logical_id
        for logical_id, resource in toolchain.resources("AWS::CodePipeline::Pipeline").items()
        if resource["Properties"]["Name"] == "tag-inspect-training-asset-pipeline"
    )
    assert {"Ref": asset_pipeline} in target["Arn"]["Fn::Join"][1]


def test_edge_deployment_is_chained_after_training(settings):
    toolchain, _ = _toolchain(settings, "edge_deployment")
    rules = _rule_with(toolchain, lambda p: p.get("EventPattern", {}).get("detail", {}).get("state") == ["SUCCEEDED"])
    assert [r["EventPattern"]["detail"]["pipeline"] for r in rules] == [["tag-inspect-training-workflow-pipeline"]]


def test_labeling_starts_the_chain_on_the_configured_schedule(labeling, training):
    toolchain, _ = labeling
    assert not _rule_with(
        toolchain, lambda p: p.get("EventPattern", {}).get("detail", {}).get("state") == ["SUCCEEDED"]
    )
    (schedule,) = _rule_with(toolchain, lambda p: "ScheduleExpression" in p)
    assert schedule["ScheduleExpression"] == "cron(0 3 ? * MON *)"
    assert ":tag-inspect-labeling-workflow-pipeline" in json.dumps(schedule["Targets"][0]["Arn"])
    assert not _rule_with(training[0], lambda p: "ScheduleExpression" in p)


def test_schedule_can_be_turned_off(settings):
    toolchain, _ = _toolchain(_with(settings, retraining={"schedule": None}), "labeling")
    assert not _rule_with(toolchain, lambda p: "ScheduleExpression" in p)


def test_failures_of_both_pipelines_are_notified(training):
    toolchain, _ = training
    (rule,) = _rule_with(toolchain, lambda p: p.get("EventPattern", {}).get("detail", {}).get("state") == ["FAILED"])
    assert rule["EventPattern"]["detail"]["pipeline"] == [
        "tag-inspect-training-asset-pipeline",
        "tag-inspect-training-workflow-pipeline",
    ]
    topic_id = next(iter(toolchain.resources("AWS::SNS::Topic")))
    assert rule["Targets"][0]["Arn"] == {"Ref": topic_id}
    assert "failed" in rule["Targets"][0]["InputTransformer"]["InputTemplate"]


def _key_statements(stack: SynthesizedStack, principal: str) -> list[dict[str, Any]]:
    return [
        statement
        for key in stack.resources("AWS::KMS::Key").values()
        for statement in key["Properties"]["KeyPolicy"]["Statement"]
        if statement.get("Principal") == {"Service": principal}
    ]


def test_notification_topic_is_encrypted_and_subscribes_the_configured_targets(training, settings):
    toolchain, _ = training
    toolchain.assertions.has_resource_properties(
        "AWS::SNS::Topic", {"TopicName": "tag-inspect-training-notifications", "KmsMasterKeyId": Match.any_value()}
    )
    toolchain.assertions.resource_count_is("AWS::SNS::Subscription", 0)
    toolchain.assertions.resource_count_is("AWS::Chatbot::SlackChannelConfiguration", 0)
    targets = {
        "email": ["ops@factory.test", "line-lead@factory.test"],
        "slack": {"workspace_id": "T0123ABCD", "channel_id": "C0456EFGH"},
    }
    notifications = NotificationSettings.model_validate(targets)
    with_targets, _ = _toolchain(settings.model_copy(update={"notifications": notifications}), "training")
    subscriptions = [r["Properties"] for r in with_targets.resources("AWS::SNS::Subscription").values()]
    assert sorted((s["Protocol"], s["Endpoint"]) for s in subscriptions) == [
        ("email", "line-lead@factory.test"),
        ("email", "ops@factory.test"),
    ]
    (channel,) = with_targets.resources("AWS::Chatbot::SlackChannelConfiguration").values()
    topic_id = next(iter(with_targets.resources("AWS::SNS::Topic")))
    assert channel["Properties"]["SlackWorkspaceId"] == "T0123ABCD"
    assert channel["Properties"]["SlackChannelId"] == "C0456EFGH"
    assert channel["Properties"]["SnsTopicArns"] == [{"Ref": topic_id}]
    assert channel["Properties"]["ConfigurationName"] == "tag-inspect-training-notifications"
    # the channel's role may do nothing: it only shows notifications
    (role_id,) = [lid for lid in with_targets.resources("AWS::IAM::Role") if "Slack" in lid]
    assert not [
        p for p in with_targets.resources("AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]
    ]


def test_only_this_topic_and_this_accounts_alarms_may_use_the_notification_key(training):
    toolchain, _ = training
    topic_arn = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":sns:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":tag-inspect-training-notifications",
            ],
        ]
    }
    # EventBridge (pipeline failures): SNS's encryption context pins the grant to this one topic
    (events,) = _key_statements(toolchain, "events.amazonaws.com")
    assert sorted(events["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert events["Condition"] == {"StringEquals": {"kms:EncryptionContext:aws:sns:topicArn": topic_arn}}
    # CloudWatch alarms (dead-letter queues): this account's alarms of this app only
    alarms = {
        "Fn::Join": [
            "",
            [
                "arn:",
                {"Ref": "AWS::Partition"},
                ":cloudwatch:",
                {"Ref": "AWS::Region"},
                ":",
                {"Ref": "AWS::AccountId"},
                ":alarm:tag-inspect-training-*",
            ],
        ]
    }
    (cloudwatch,) = _key_statements(toolchain, "cloudwatch.amazonaws.com")
    assert cloudwatch["Condition"] == {
        "StringEquals": {
            "aws:SourceAccount": {"Ref": "AWS::AccountId"},
            "kms:EncryptionContext:aws:sns:topicArn": topic_arn,
        },
        "ArnLike": {"aws:SourceArn": alarms},
    }
    (policy,) = toolchain.resources("AWS::SNS::TopicPolicy").values()
    by_service = {
        statement["Principal"]["Service"]: statement
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if "Service" in statement.get("Principal", {})
    }
    assert by_service["cloudwatch.amazonaws.com"]["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}},
        "ArnLike": {"aws:SourceArn": alarms},
    }
    # EventBridge's guide: no Condition blocks in SNS topic policies for EventBridge (see NotificationTopic)
    assert "Condition" not in by_service["events.amazonaws.com"]


# -- CodeCommit source ----------------------------------------------------------------------------


def test_codecommit_source_filters_paths_with_a_function(settings):
    codecommit = _with(
        settings, source={"provider": "codecommit", "repository": "edge-inspection", "connection_arn": None}
    )
    toolchain, workflow = _toolchain(codecommit, "labeling")
    pipeline = next(iter(toolchain.resources("AWS::CodePipeline::Pipeline").values()))["Properties"]
    assert "Triggers" not in pipeline
    source = pipeline["Stages"][0]["Actions"][0]
    assert source["ActionTypeId"]["Provider"] == "CodeCommit"
    assert source["Configuration"]["PollForSourceChanges"] is False
    toolchain.assertions.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": "shared.runtime.path_filter.handler",
            "Environment": {
                "Variables": Match.object_like(
                    {
                        "PIPELINE_NAME": "tag-inspect-labeling-asset-pipeline",
                        "TRIGGER_PATHS": Match.string_like_regexp("training/\\*\\*"),
                    }
                )
            },
        },
    )
    (push_rule,) = _rule_with(toolchain, lambda p: p.get("EventPattern", {}).get("source") == ["aws.codecommit"])
    assert push_rule["EventPattern"]["detail"]["referenceName"] == ["main"]
    workflow_pipeline = next(iter(workflow.resources("AWS::CodePipeline::Pipeline").values()))["Properties"]
    assert workflow_pipeline["Stages"][0]["Actions"][0]["Configuration"]["PollForSourceChanges"] is False


# -- guardrails ---------------------------------------------------------------------------------


def test_cdk_nag_checks_stacks_inside_stages(settings):
    with pytest.raises(RuntimeError, match="ValidationFailed") as error:
        _toolchain(settings, "training", bad_bucket=True)
    assert "Toolchain/Deploy/Workflow/Unencrypted/Resource" in str(error.value)
    assert "AwsSolutions-S1" in str(error.value)
    assert "AwsSolutions-S10" in str(error.value)


# -- connection permissions -------------------------------------------------------------------------


def _source_role_actions(stack: SynthesizedStack) -> dict[str, set[str]]:
    """Connection ARN -> the IAM actions the source action's role has on it."""
    pipeline = next(iter(stack.resources("AWS::CodePipeline::Pipeline").values()))["Properties"]
    source = pipeline["Stages"][0]["Actions"][0]
    role_id = source["RoleArn"]["Fn::GetAtt"][0]
    granted: dict[str, set[str]] = {}
    for policy in stack.resources("AWS::IAM::Policy").values():
        if {"Ref": role_id} not in policy["Properties"]["Roles"]:
            continue
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            for resource in resources:
                if isinstance(resource, str) and ":connection/" in resource:
                    granted.setdefault(resource, set()).update(actions)
    return granted


def test_source_actions_may_use_a_codeconnections_connection(training, settings):
    # IAM matches the action's service prefix to the ARN's: a codeconnections ARN needs codeconnections:UseConnection
    arn = str(settings.source.connection_arn)
    assert ":codeconnections:" in arn
    for stack in training:  # the asset pipeline (toolchain) and the workflow pipeline (workflow stack)
        assert "codeconnections:UseConnection" in _source_role_actions(stack)[arn], stack.stack_name


def test_source_actions_may_use_a_codestar_connections_connection(settings):
    arn = "arn:aws:codestar-connections:eu-west-1:111111111111:connection/00000000-0000-0000-0000-000000000000"
    for stack in _toolchain(_with(settings, source={"connection_arn": arn}), "training"):
        assert _source_role_actions(stack) == {arn: {"codestar-connections:UseConnection"}}, stack.stack_name


def test_asset_publishing_acknowledgements_cover_only_the_publishing_constructs(settings):
    """The publishing role's wildcards are CDK's; the same wildcard on another pipeline role must still fail."""
    cdk_app = new_app(outdir=Path(tempfile.mkdtemp(prefix="cdk-toolchain-")))

    def stage_factory(scope, construct_id, *, settings):
        return _MinimalStage(scope, construct_id, settings=settings, file_asset=True)

    toolchain = AppToolchainStack(cdk_app, "Toolchain", settings=settings, app="training", stage_factory=stage_factory)
    assert toolchain.pipeline.node.try_find_child("Assets") is not None, "the stage should have a file asset"
    (start_workflow_role,) = [
        c for c in toolchain.node.find_all() if isinstance(c, iam.Role) and "/StartWorkflow/" in c.node.path
    ]
    start_workflow_role.add_to_principal_policy(
        iam.PolicyStatement(actions=["codepipeline:ListPipelines"], resources=["*"])
    )
    apply_guardrails(cdk_app)
    with pytest.raises(RuntimeError, match="ValidationFailed") as error:
        cdk_app.synth()
    report = str(error.value)
    assert "AwsSolutions-IAM5" in report and "Resource::*" in report
    assert "StartWorkflow" in report
    assert "Assets/FileRole" not in report
