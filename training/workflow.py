"""The training workflow: a state machine that runs the SageMaker pipeline and follows it to its end.

    Start (with the input's `pipelineParameters`, if any) -> Wait -> Describe -> still running? -> Wait ...
                                                                             -> Succeeded -> Succeed
                                                                             -> Failed/Stopped -> Notify -> Fail

The workflow pipeline (CodePipeline) runs it and succeeds or fails with it, so no build agent idles
for the hours a training takes: Step Functions waits for free between the status checks. Every SDK
call is retried with exponential backoff; any error after the retries is published to the app's
notification topic before the execution fails.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from shared.building_blocks import grant_publish_by_name, workflow_state_machine
from shared.guardrails import IAM5, acknowledge, finding
from shared.names import ResourceNames

APP = "training"
PIPELINE_PARAMETERS = "pipelineParameters"
RUNNING = ("Executing", "Stopping")
FAILED = ("Failed", "Stopped")


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
        topic = sns.Topic.from_topic_arn(
            self, "Notifications", stack.format_arn(service="sns", resource=names.notification_topic(APP))
        )
        notify = tasks.SnsPublish(
            self,
            "NotifyFailure",
            topic=topic,
            subject="Training pipeline failed",
            message=sfn.TaskInput.from_text(
                sfn.JsonPath.format(
                    "The training workflow {} failed: {}",
                    sfn.JsonPath.execution_id,
                    sfn.JsonPath.json_to_string(sfn.JsonPath.object_at("$.failure")),
                )
            ),
            result_path=sfn.JsonPath.DISCARD,
        )
        notify.add_retry(errors=["States.TaskFailed"], interval=cdk.Duration.seconds(5), max_attempts=3, backoff_rate=2)
        failed = sfn.Fail(
            self,
            "PipelineFailed",
            error="TrainingPipelineFailed",
            cause="See the notification and the pipeline execution",
        )
        # A notification that cannot be published (topic or key gone) still ends in the workflow's own failure.
        notify.add_catch(failed, errors=["States.ALL"], result_path="$.notificationError")
        notify.next(failed)

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
            task.add_retry(
                errors=["SageMaker.SageMakerException", "SageMaker.ResourceLimitExceededException"],
                interval=cdk.Duration.seconds(10),
                max_attempts=5,
                backoff_rate=2,
            )
            task.add_catch(_failure(self, f"{name}Failed", notify), result_path="$.error")
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
        describe.add_retry(
            errors=["SageMaker.SageMakerException", "SageMaker.ResourceNotFoundException"],
            interval=cdk.Duration.seconds(15),
            max_attempts=6,
            backoff_rate=2,
        )
        describe.add_catch(_failure(self, "DescribeFailed", notify), result_path="$.error")
        ended = {
            "status": sfn.JsonPath.string_at("$.pipeline.PipelineExecutionStatus"),
            "execution": sfn.JsonPath.string_at("$.pipeline.PipelineExecutionArn"),
        }
        with_reason = sfn.Pass(
            self,
            "PipelineExecutionFailed",
            parameters={**ended, "reason": sfn.JsonPath.string_at("$.pipeline.Details.FailureReason")},
            result_path="$.failure",
        ).next(notify)
        without_reason = sfn.Pass(self, "PipelineExecutionStopped", parameters=ended, result_path="$.failure").next(
            notify
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


def _failure(scope: Construct, name: str, notify: sfn.IChainable) -> sfn.Pass:
    """Shape a caught error like a failed execution, then notify."""
    shaped = sfn.Pass(
        scope,
        name,
        parameters={"status": "WorkflowError", "error": sfn.JsonPath.object_at("$.error")},
        result_path="$.failure",
    )
    shaped.next(notify)
    return shaped
