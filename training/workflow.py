"""The training workflow: a state machine that runs the SageMaker pipeline and follows it to its end.

    Start (with the input's `pipeline_parameters`, if any) -> Wait -> Describe -> still running? -> Wait ...
                                                                             -> Succeeded -> Succeed
                                                                             -> Failed/Stopped -> Notify -> Fail

The workflow pipeline (CodePipeline) runs it and succeeds or fails with it, so no build agent idles
for the hours a training takes: Step Functions waits for free between the status checks. Every SDK
call is retried with the apps' one policy (`shared.workflow_states`); any error after the retries, and a
pipeline execution that failed or stopped, is published to the app's notification topic (NotifyFailure)
before the execution fails with that error (TrainingPipelineFailed for the pipeline's own failure).
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from shared.building_blocks import grant_publish_by_name, workflow_state_machine
from shared.guardrails import IAM5, acknowledge, finding
from shared.names import ResourceNames
from shared.workflow_states import FailurePath, app_topic, retry
from training import APP

PIPELINE_PARAMETERS = "pipeline_parameters"
RUNNING = ("Executing", "Stopping")
FAILED = ("Failed", "Stopped")
FAILURE_ERROR = "TrainingPipelineFailed"


class TrainingWorkflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        names: ResourceNames,
        pipeline_name: str,
        pipeline_arn: str,
        poll_interval: cdk.Duration,
        timeout: cdk.Duration,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        failure = FailurePath(
            self,
            topic=app_topic(self, names.notification_topic(APP)),
            subject="Training pipeline failed",
            title="The training workflow",
            fail_state="PipelineFailed",
        )

        def start(name: str, with_parameters: bool) -> tasks.CallAwsService:
            parameters: dict[str, Any] = {
                "PipelineName": pipeline_name,
                "ClientRequestToken": sfn.JsonPath.hash(sfn.JsonPath.execution_id, "SHA-256"),
                "PipelineExecutionDescription": sfn.JsonPath.format(
                    "Started by the training workflow {}", sfn.JsonPath.execution_id
                ),
            }
            if with_parameters:
                parameters["PipelineParameters"] = sfn.JsonPath.list_at(f"$.{PIPELINE_PARAMETERS}")
            task = tasks.CallAwsService(
                self,
                name,
                service="sagemaker",
                action="startPipelineExecution",
                parameters=parameters,
                iam_resources=[pipeline_arn],
                result_selector={"PipelineExecutionArn": sfn.JsonPath.string_at("$.PipelineExecutionArn")},
                result_path="$.pipeline",
            )
            # The token makes a retried start return the same execution instead of a second one.
            retry(task, ["SageMaker.SageMakerException", "SageMaker.ResourceLimitExceededException"])
            failure.guard(task)
            return task

        wait = sfn.Wait(self, "WaitForPipeline", time=sfn.WaitTime.duration(poll_interval))
        executions_arn = f"{pipeline_arn}/execution/*"
        describe = tasks.CallAwsService(
            self,
            "DescribePipelineExecution",
            service="sagemaker",
            action="describePipelineExecution",
            parameters={"PipelineExecutionArn": sfn.JsonPath.string_at("$.pipeline.PipelineExecutionArn")},
            iam_resources=[executions_arn],
            result_selector={
                "PipelineExecutionArn": sfn.JsonPath.string_at("$.PipelineExecutionArn"),
                "PipelineExecutionStatus": sfn.JsonPath.string_at("$.PipelineExecutionStatus"),
                "Details": sfn.JsonPath.object_at("$"),
            },
            result_path="$.pipeline",
        )
        retry(describe, ["SageMaker.SageMakerException", "SageMaker.ResourceNotFoundException"])
        failure.guard(describe)
        with_reason = failure.error(
            self,
            "PipelineExecutionFailed",
            error=FAILURE_ERROR,
            cause="States.Format('Pipeline execution {} ended {}: {}', $.pipeline.PipelineExecutionArn, "
            "$.pipeline.PipelineExecutionStatus, $.pipeline.Details.FailureReason)",
        )
        without_reason = failure.error(
            self,
            "PipelineExecutionStopped",
            error=FAILURE_ERROR,
            cause="States.Format('Pipeline execution {} ended {}', $.pipeline.PipelineExecutionArn, "
            "$.pipeline.PipelineExecutionStatus)",
        )
        pipeline_failed = (
            sfn.Choice(self, "FailureReasonGiven?")
            .when(sfn.Condition.is_present("$.pipeline.Details.FailureReason"), with_reason)
            .otherwise(without_reason)
        )
        status = sfn.JsonPath.string_at("$.pipeline.PipelineExecutionStatus")
        check = (
            sfn.Choice(self, "PipelineFinished?")
            .when(sfn.Condition.string_equals(status, "Succeeded"), sfn.Succeed(self, "PipelineSucceeded"))
            .when(sfn.Condition.or_(*(sfn.Condition.string_equals(status, s) for s in FAILED)), pipeline_failed)
            .otherwise(wait)
        )
        wait.next(describe).next(check)
        definition = (
            sfn.Choice(self, "ParametersGiven?")
            .when(
                sfn.Condition.is_present(f"$.{PIPELINE_PARAMETERS}"),
                start("StartPipelineWithParameters", True).next(wait),
            )
            .otherwise(start("StartPipeline", False).next(wait))
        )
        self.state_machine = workflow_state_machine(
            self,
            "StateMachine",
            state_machine_name=names.workflow_state_machine(APP),
            definition=definition,
            timeout=timeout,
        )
        acknowledge(
            self.state_machine,
            IAM5,
            "Executions of the one training pipeline: their ids are generated per run.",
            finding=finding(self.state_machine, "Resource", executions_arn),
        )
        grant_publish_by_name(
            self.state_machine,
            topic_name=names.notification_topic(APP),
            key_alias=names.notification_key_alias(APP),
            stack=stack,
        )
