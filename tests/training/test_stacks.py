"""The training app's stacks: synthesis with cdk-nag and cfn-lint, the registry, least-privilege roles, the
workflow state machine (checked against botocore and run in moto's Step Functions executor)."""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import assertions
from cfnlint.api import ManualArgs, lint_file
from moto import mock_aws
from moto.sagemaker.models import SageMakerModelBackend
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_aws_sdk

from shared.config import ConfigError
from shared.names import ResourceNames
from tests.helpers.asl import check_sdk_task, iam_actions, role_allows, role_statements, sdk_tasks, state_machines
from tests.helpers.cdk_assembly import CDK_CONTEXT, synthesized
from tests.helpers.state_machine import MotoStateMachine
from tests.training.cfn import render
from training import pipeline_definition as pd
from training.dlc_registry import DLC_REGISTRY_ACCOUNTS

REGISTRY, WORKFLOW = "tag-inspect-training-registry", "tag-inspect-training-workflow"
WORKFLOW_PIPELINE = ResourceNames("tag-inspect", "123456789012", "eu-west-1").workflow_pipeline("training")
Match = assertions.Match


def test_the_app_synthesizes_as_app_py_builds_it_with_cdk_nag():
    stacks = {stack.stack_name for stack in synthesized("training")}
    assert stacks == {"tag-inspect-training-toolchain", REGISTRY, WORKFLOW}


def test_the_training_stacks_pass_cdk_nag_and_cfn_lint(training_stacks):
    assert set(training_stacks) == {REGISTRY, WORKFLOW}  # synthesized with cdk-nag: no finding left
    config = ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=["W3005"])
    problems = [
        f"{s.stack_name}: {m}" for s in training_stacks.values() for m in lint_file(s.template_file, config=config)
    ]
    assert problems == []


def test_nothing_points_at_another_stack(training_stacks):
    for stack in training_stacks.values():
        text = json.dumps(stack.template)
        assert "Fn::ImportValue" not in text and not stack.template.get("Outputs")


# --------------------------------------------------------------------------------------------------
# Registry stack
# --------------------------------------------------------------------------------------------------


def test_the_model_bucket_key_and_package_group_are_named_encrypted_and_retained(training_stacks):
    stack = training_stacks[REGISTRY]
    template = stack.assertions
    template.has_resource(
        "AWS::S3::Bucket",
        {
            "DeletionPolicy": "Retain",
            "Properties": Match.object_like(
                {
                    "BucketName": {
                        "Fn::Join": [
                            "",
                            ["tag-inspect-models-", {"Ref": "AWS::AccountId"}, "-", {"Ref": "AWS::Region"}],
                        ]
                    },
                    "VersioningConfiguration": {"Status": "Enabled"},
                    "BucketEncryption": {
                        "ServerSideEncryptionConfiguration": [
                            Match.object_like(
                                {"ServerSideEncryptionByDefault": Match.object_like({"SSEAlgorithm": "aws:kms"})}
                            )
                        ]
                    },
                }
            ),
        },
    )
    template.has_resource_properties("AWS::KMS::Alias", {"AliasName": "alias/tag-inspect-models"})
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource(
        "AWS::SageMaker::ModelPackageGroup",
        {
            "DeletionPolicy": "Retain",
            "Properties": Match.object_like({"ModelPackageGroupName": "tag-inspect-scratch-detector"}),
        },
    )


def test_only_caches_and_checkpoints_expire_in_the_model_bucket(training_stacks, settings):
    buckets = training_stacks[REGISTRY].resources("AWS::S3::Bucket")
    (model_bucket,) = [b for b in buckets.values() if "BucketName" in b["Properties"]]
    rules = model_bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    expiring = {rule.get("Prefix"): rule.get("ExpirationInDays") for rule in rules if rule.get("ExpirationInDays")}
    cache = settings.training.cache_days + 60
    assert expiring == {"prepared/": cache, "training-jobs/": cache, "checkpoints/": 30}
    # Dataset manifests and the archives model packages point to are kept.
    assert not any(prefix.startswith(("datasets", "pipeline-runs")) for prefix in expiring)


# --------------------------------------------------------------------------------------------------
# Workflow stack: pipeline, roles, Lambda
# --------------------------------------------------------------------------------------------------


def _role_id(stack, prefix: str) -> str:
    (role,) = [i for i in stack.resources("AWS::IAM::Role") if i.startswith(prefix)]
    return role


def _actions(template: dict, role: str) -> set[str]:
    found: set[str] = set()
    for statement in role_statements(template, role):
        actions = statement["Action"]
        found.update(actions if isinstance(actions, list) else [actions])
    return found


def _resources(template: dict, role: str, action: str) -> list[str]:
    found = []
    for statement in role_statements(template, role):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action in actions:
            resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            found.extend(render(r, mappings=template.get("Mappings")) for r in resources)
    return found


def test_the_pipeline_resource_runs_as_its_own_role(workflow_stack):
    (pipeline,) = workflow_stack.resources("AWS::SageMaker::Pipeline").values()
    properties = pipeline["Properties"]
    assert properties["PipelineName"] == "tag-inspect-training"
    assert properties["RoleArn"] == {"Fn::GetAtt": [_role_id(workflow_stack, "TrainingPipelinePipelineRole"), "Arn"]}
    assert set(properties["PipelineDefinition"]) == {"PipelineDefinitionBody"}


def test_no_role_has_a_managed_policy_or_a_service_wide_action(workflow_stack):
    for role_id, role in workflow_stack.resources("AWS::IAM::Role").items():
        assert not role["Properties"].get("ManagedPolicyArns"), role_id  # no SageMakerFullAccess & co.
        for action in _actions(workflow_stack.template, role_id):
            assert not action.endswith(":*") and action != "*", (role_id, action)


def test_the_pipeline_role_only_runs_this_pipelines_jobs(workflow_stack):
    template, role = workflow_stack.template, _role_id(workflow_stack, "TrainingPipelinePipelineRole")
    assert _actions(template, role) == {
        "sagemaker:CreateProcessingJob",
        "sagemaker:DescribeProcessingJob",
        "sagemaker:StopProcessingJob",
        "sagemaker:CreateTrainingJob",
        "sagemaker:DescribeTrainingJob",
        "sagemaker:StopTrainingJob",
        "sagemaker:CreateHyperParameterTuningJob",
        "sagemaker:DescribeHyperParameterTuningJob",
        "sagemaker:StopHyperParameterTuningJob",
        "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
        "sagemaker:AddTags",
        "sagemaker:CreateModelPackage",
        "sagemaker:DescribeModelPackage",
        "iam:PassRole",
        "lambda:InvokeFunction",
        "s3:GetObject",
        "kms:Decrypt",
    }
    job_role = _role_id(workflow_stack, "TrainingPipelineJobRole")
    assert _resources(template, role, "iam:PassRole") == [f"${{{job_role}.Arn}}"]
    (pass_role,) = [s for s in role_statements(template, role) if s["Action"] == "iam:PassRole"]
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert _resources(template, role, "sagemaker:CreateTrainingJob") == [
        "arn:aws:sagemaker:eu-west-1:123456789012:training-job/pipelines-*"
    ]
    assert _resources(template, role, "sagemaker:CreateHyperParameterTuningJob") == [
        "arn:aws:sagemaker:eu-west-1:123456789012:hyper-parameter-tuning-job/*"
    ]
    assert set(_resources(template, role, "sagemaker:CreateModelPackage")) == {
        "arn:aws:sagemaker:eu-west-1:123456789012:model-package-group/tag-inspect-scratch-detector",
        "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/*",
    }
    assert _resources(template, role, "s3:GetObject") == [
        "arn:aws:s3:::tag-inspect-models-123456789012-eu-west-1/pipeline-runs/*"
    ]


def test_the_job_role_reads_other_apps_data_by_name_and_writes_only_its_prefixes(workflow_stack):
    template, role = workflow_stack.template, _role_id(workflow_stack, "TrainingPipelineJobRole")
    assert not any(a.startswith(("sagemaker:Create", "iam:")) for a in _actions(template, role))
    writes = _resources(template, role, "s3:PutObject")
    assert writes and all(w.startswith("arn:aws:s3:::tag-inspect-models-123456789012-eu-west-1/") for w in writes)
    reads = _resources(template, role, "s3:GetObject")
    assert "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/raw-images/*" in reads
    assert "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/feature-store/*" in reads
    assets = [r for r in reads if r.startswith("arn:aws:s3:::cdk-hnb659fds-assets-123456789012-eu-west-1/")]
    assert len(assets) == 2  # the step code, as a zip (processing jobs) and a tar.gz (training and tuning jobs)
    assert all(re.fullmatch(r"arn:aws:s3:::[\w-]+/[0-9a-f]{64}\.(zip|gz)", r) for r in assets)
    assert _resources(template, role, "sagemaker:DescribeFeatureGroup") == [
        "arn:aws:sagemaker:eu-west-1:123456789012:feature-group/tag-inspect-labels"
    ]
    assert set(_resources(template, role, "ecr:BatchGetImage")) == {
        "arn:aws:ecr:eu-west-1:763104351884:repository/pytorch-training"
    }
    kms = [s for s in role_statements(template, role) if "kms:Decrypt" in s["Action"]]
    aliases = {s["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"] for s in kms}
    assert aliases == {"alias/tag-inspect-models", "alias/tag-inspect-data"}


def _images_and_repositories(stack: cdk.Stack) -> tuple[dict[str, str], list[str]]:
    template = assertions.Template.from_stack(stack).to_json()
    (pipeline,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::Pipeline"]
    body = json.loads(
        render(
            pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"], mappings=template.get("Mappings")
        )
    )
    images = {}
    for step in pd.iter_steps(body["Steps"]):
        arguments = step.get("Arguments", {})
        arguments = arguments.get("TrainingJobDefinition", arguments)  # a tuning step's training jobs
        image = arguments.get("AppSpecification", {}).get("ImageUri") or arguments.get(
            "AlgorithmSpecification", {}
        ).get("TrainingImage")
        if image:
            images[step["Name"]] = image
    assert {"TrainSpot", "TuneSpot", "EvaluateSpot", "ExportDataset"} <= set(images)
    role = next(lid for lid in template["Resources"] if lid.startswith("TrainingPipelineJobRole"))
    return images, _resources(template, role, "ecr:BatchGetImage")


@pytest.mark.parametrize(
    ("region", "account", "suffix"),
    [
        ("af-south-1", "626614931356", "amazonaws.com"),  # AWS's table: not 763104351884 in these regions
        ("eu-central-2", "380420809688", "amazonaws.com"),
        ("eu-west-1", "763104351884", "amazonaws.com"),
    ],
)
def test_the_containers_come_from_the_deep_learning_containers_registry_of_the_region(
    settings, region, account, suffix
):
    from training.stacks import WorkflowStack

    app = cdk.App(context=dict(CDK_CONTEXT))
    stack = WorkflowStack(
        app, "Workflow", settings=settings, env=cdk.Environment(account="123456789012", region=region)
    )
    images, repositories = _images_and_repositories(stack)
    assert images and all(
        image.startswith(f"{account}.dkr.ecr.{region}.{suffix}/pytorch-training:") for image in images.values()
    ), images
    assert repositories == [f"arn:aws:ecr:{region}:{account}:repository/pytorch-training"]


def test_an_environment_agnostic_stack_looks_the_registry_up_in_the_published_table(workflow_stack):
    mapping = workflow_stack.template["Mappings"]["DlcRegistryAccounts"]
    assert {region: entry["account"] for region, entry in mapping.items()} == DLC_REGISTRY_ACCOUNTS
    assert mapping["af-south-1"] == {"account": "626614931356"}
    assert mapping["cn-north-1"] == {"account": "727897471807"}


def test_a_region_without_a_published_registry_fails_synth_naming_it(settings):
    from training.stacks import WorkflowStack

    app = cdk.App(context=dict(CDK_CONTEXT))
    with pytest.raises(ConfigError, match=r"no Deep Learning Containers registry for region xx-nowhere-1"):
        WorkflowStack(
            app, "Workflow", settings=settings, env=cdk.Environment(account="123456789012", region="xx-nowhere-1")
        )


def test_a_full_image_uri_is_used_as_configured(settings):
    from training.stacks import WorkflowStack

    uri = "111122223333.dkr.ecr.eu-west-1.amazonaws.com/team/yolo-trainer:7"
    custom = settings.model_copy(
        update={"training": settings.training.model_copy(update={"training_image": uri, "processing_image": uri})}
    )
    app = cdk.App(context=dict(CDK_CONTEXT))
    stack = WorkflowStack(
        app, "Workflow", settings=custom, env=cdk.Environment(account="123456789012", region="af-south-1")
    )
    images, repositories = _images_and_repositories(stack)
    assert set(images.values()) == {uri}
    assert repositories == ["arn:aws:ecr:eu-west-1:111122223333:repository/team/yolo-trainer"]


def test_the_champion_lookup_reads_the_registry_only(workflow_stack):
    functions = workflow_stack.resources("AWS::Lambda::Function")
    ((function_id, function),) = [
        (i, f) for i, f in functions.items() if f["Properties"]["Handler"] == "training.steps.gate.handler"
    ]
    assert function["Properties"]["Runtime"] == "python3.14"
    role = function["Properties"]["Role"]["Fn::GetAtt"][0]
    actions = _actions(workflow_stack.template, role)
    assert {"sagemaker:ListModelPackages", "sagemaker:DescribeModelPackage"} <= actions
    assert not any(a.startswith(("s3:", "kms:")) for a in actions)  # the evaluation step reads the archive
    assert not any(
        a.startswith("sagemaker:") and a not in ("sagemaker:ListModelPackages", "sagemaker:DescribeModelPackage")
        for a in actions
    )
    assert _resources(workflow_stack.template, role, "sagemaker:DescribeModelPackage") == [
        "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/*"
    ]
    assert function_id


# --------------------------------------------------------------------------------------------------
# Workflow state machine and workflow pipeline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workflow(workflow_stack):
    (machine,) = state_machines(workflow_stack.template).values()
    return machine


def test_the_workflow_state_machine_logs_everything_and_is_traced(workflow, workflow_stack):
    properties = workflow.properties
    assert properties["StateMachineName"] == "tag-inspect-training"
    assert properties["TracingConfiguration"] == {"Enabled": True}
    assert properties["LoggingConfiguration"]["Level"] == "ALL"
    assert properties["LoggingConfiguration"]["IncludeExecutionData"] is True
    assert workflow.definition["TimeoutSeconds"] >= 2 * 86_400


def test_every_sdk_task_is_a_real_call_the_role_may_make(workflow, workflow_stack):
    tasks = sdk_tasks(workflow.definition)
    assert {t.action for t in tasks} == {"startPipelineExecution", "describePipelineExecution"}
    for task in tasks:
        assert check_sdk_task(task) == []
        for action in iam_actions(task):
            assert role_allows(workflow_stack.template, workflow.role_logical_id, action), action
        assert task.state_name in workflow.definition["States"]
        retry = workflow.definition["States"][task.state_name]["Retry"]
        assert retry and all(r["BackoffRate"] >= 2 and r["MaxAttempts"] >= 3 for r in retry)
        assert workflow.definition["States"][task.state_name]["Catch"][0]["ErrorEquals"] == ["States.ALL"]
    starts = [t for t in tasks if t.action == "startPipelineExecution"]
    assert {t.parameters["PipelineName"] for t in starts} == {"tag-inspect-training"}
    assert {t.parameters.get("PipelineParameters.$") for t in starts} == {None, "$.pipeline_parameters"}
    template = workflow_stack.template
    assert role_allows(template, workflow.role_logical_id, "sns:Publish")
    assert role_allows(template, workflow.role_logical_id, "kms:GenerateDataKey")


def test_the_workflow_pipeline_runs_the_state_machine(workflow_stack, workflow):
    workflow_stack.assertions.has_resource_properties(
        "AWS::CodePipeline::Pipeline",
        {
            "Name": WORKFLOW_PIPELINE,
            "Stages": Match.array_with(
                [
                    Match.object_like(
                        {
                            "Name": "Workflow",
                            "Actions": [
                                Match.object_like(
                                    {
                                        "ActionTypeId": Match.object_like({"Provider": "StepFunctions"}),
                                        "Configuration": Match.object_like(
                                            {"StateMachineArn": {"Ref": workflow.logical_id}}
                                        ),
                                    }
                                )
                            ],
                        }
                    )
                ]
            ),
        },
    )


# --------------------------------------------------------------------------------------------------
# The state machine, executed (moto): success, a failed pipeline, a long run, parameters
# --------------------------------------------------------------------------------------------------


def _run(
    workflow, execution_input: dict[str, Any], statuses: list[str], monkeypatch, *, topic_exists: bool = True
) -> tuple[dict, list, list, list]:
    definition = json.loads(json.dumps(workflow.definition))
    for state in definition["States"].values():
        if state["Type"] == "Wait":
            state["Seconds"] = 0  # the real machine waits minutes between checks
        for retry in state.get("Retry", []):
            retry.update(IntervalSeconds=1, BackoffRate=1.0)  # and seconds between retries
    described: list[str] = []
    original = SageMakerModelBackend.describe_pipeline_execution

    def describe(self, pipeline_execution_arn):
        result = original(self, pipeline_execution_arn)
        result["PipelineExecutionStatus"] = statuses[min(len(described), len(statuses) - 1)]
        if result["PipelineExecutionStatus"] == "Failed":
            result["FailureReason"] = "Step QualityGateFailedSpot failed: Quality gate failed, model not registered"
        described.append(result["PipelineExecutionStatus"])
        return result

    monkeypatch.setattr(SageMakerModelBackend, "describe_pipeline_execution", describe)
    # Step Functions hands SDK results on as JSON (timestamps as text); moto's executor keeps datetimes.
    service = state_task_service_aws_sdk.StateTaskServiceAwsSdk
    evaluate = service._eval_service_task

    def as_json(self, env, *args, **kwargs):
        evaluate(self, env, *args, **kwargs)
        env.stack.append(json.loads(json.dumps(env.stack.pop(), default=str)))

    monkeypatch.setattr(service, "_eval_service_task", as_json)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sagemaker = boto3.client("sagemaker")
        sagemaker.create_pipeline(
            PipelineName="tag-inspect-training",
            PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []}),
            RoleArn="arn:aws:iam::123456789012:role/pipeline",
        )
        machine = MotoStateMachine(
            name="tag-inspect-training",
            definition=definition,
            dispatch=None,  # no Lambda task: SDK calls only
            topic="tag-inspect-training-notifications" if topic_exists else None,
            poll_seconds=0.05,
        )
        result = machine.wait(machine.start(execution_input), timeout=10)
        executions = sagemaker.list_pipeline_executions(PipelineName="tag-inspect-training")[
            "PipelineExecutionSummaries"
        ]
        return result, executions, [message["message"] for message in machine.messages()], described


def test_a_successful_pipeline_execution_ends_the_workflow_successfully(workflow, monkeypatch):
    result, executions, messages, described = _run(
        workflow, {"trigger": "workflow-pipeline"}, ["Succeeded"], monkeypatch
    )
    assert result["status"] == "SUCCEEDED", result
    assert len(executions) == 1 and messages == [] and described == ["Succeeded"]


def test_the_workflow_follows_a_long_run_until_it_ends(workflow, monkeypatch):
    statuses = ["Executing", "Executing", "Executing", "Succeeded"]
    result, executions, _, described = _run(workflow, {}, statuses, monkeypatch)
    assert result["status"] == "SUCCEEDED" and described == statuses and len(executions) == 1


def test_a_failed_pipeline_fails_the_workflow_after_notifying(workflow, monkeypatch):
    result, _, messages, _ = _run(workflow, {"trigger": "schedule"}, ["Executing", "Failed"], monkeypatch)
    assert result["status"] == "FAILED"
    (message,) = messages
    assert "The training workflow" in message and "Quality gate failed, model not registered" in message


def test_a_notification_that_cannot_be_sent_still_ends_in_the_workflows_own_failure(workflow, monkeypatch):
    # The topic is gone (or its key refuses): the failure notification itself fails. The execution still
    # ends in PipelineFailed with the workflow's error, not in an unhandled SNS error.
    result, _, messages, _ = _run(workflow, {}, ["Failed"], monkeypatch, topic_exists=False)
    assert result["status"] == "FAILED" and messages == []
    assert result["error"] == "TrainingPipelineFailed", result
    notify = workflow.definition["States"]["NotifyFailure"]
    assert notify["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": "$.notification_error", "Next": "PipelineFailed"}
    ]


def test_run_parameters_from_the_input_reach_the_pipeline(workflow, monkeypatch):
    parameters = [{"Name": "Epochs", "Value": "5"}, {"Name": "UseSpotInstances", "Value": "false"}]
    captured = {}
    original = SageMakerModelBackend.start_pipeline_execution

    def start(self, *arguments):  # moto passes the request's fields in order
        _, _, pipeline_parameters, description, _, token = arguments
        captured.update(parameters=pipeline_parameters, token=token, description=description)
        return original(self, *arguments)

    monkeypatch.setattr(SageMakerModelBackend, "start_pipeline_execution", start)
    result, _, _, _ = _run(workflow, {"pipeline_parameters": parameters}, ["Succeeded"], monkeypatch)
    assert result["status"] == "SUCCEEDED"
    assert captured["parameters"] == parameters
    # The token is the SHA-256 of the execution id: a retried start returns the same pipeline execution.
    assert re.fullmatch(r"[0-9a-f]{64}", captured["token"])
    assert captured["description"].startswith("Started by the training workflow arn:aws:states:")
