"""The state machine building blocks the three workflows are made of (shared/workflow_states.py)."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from aws_cdk.assertions import Template

from shared.workflow_states import (
    ERROR_PATH,
    FailurePath,
    app_topic,
    lambda_step,
    retry,
)
from tests.helpers import asl

POLICY = {"IntervalSeconds": 2, "MaxAttempts": 5, "BackoffRate": 2, "MaxDelaySeconds": 60, "JitterStrategy": "FULL"}


def _states(build) -> dict:
    app = cdk.App()
    stack = cdk.Stack(app, "Subject", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    function = lambda_.Function.from_function_arn(
        stack, "Function", "arn:aws:lambda:eu-west-1:123456789012:function:step"
    )
    definition = build(stack, function)
    sfn.StateMachine(stack, "Machine", definition_body=sfn.DefinitionBody.from_chainable(definition))
    (machine,) = asl.state_machines(Template.from_stack(stack).to_json()).values()
    return machine.definition["States"]


def test_a_lambda_step_fails_at_once_on_non_retryable_errors_and_retries_the_rest_with_the_one_policy():
    def build(stack, function):
        return lambda_step(
            stack, "Step", function=function, payload={"a.$": "$.a"}, result_path="$.b", non_retryable=["BadInput"]
        )

    step = _states(build)["Step"]
    assert step["Retry"] == [{"ErrorEquals": ["BadInput"], "MaxAttempts": 0}, {"ErrorEquals": ["States.ALL"], **POLICY}]
    assert step["ResultPath"] == "$.b" and step["Parameters"] == {"a.$": "$.a"}  # the function's answer only
    assert step["Resource"] == "arn:aws:lambda:eu-west-1:123456789012:function:step"


def test_a_lambda_step_may_retry_only_what_its_app_calls_transient():
    def build(stack, function):
        return lambda_step(stack, "Step", function=function, payload=None, result_path="$.b", retryable=["Transient"])

    step = _states(build)["Step"]
    assert step["Retry"] == [{"ErrorEquals": ["Transient"], **POLICY}]
    assert "Parameters" not in step  # the whole state input


def test_every_failure_is_notified_then_ends_the_execution_with_its_own_error():
    def build(stack, function):
        failure = FailurePath(
            stack,
            topic=app_topic(stack, "app-notifications"),
            subject="App failed",
            title="App run",
            fail_state="Failed",
        )
        step = lambda_step(stack, "Step", function=function, payload={}, result_path="$.b")
        failure.guard(step)
        decided = failure.error(stack, "TooManyTries", error="TooManyTries", cause="States.Format('{} tries', $.n)")
        return step.next(
            sfn.Choice(stack, "Again?")
            .when(sfn.Condition.is_present("$.n"), decided)
            .otherwise(sfn.Succeed(stack, "Done"))
        )

    states = _states(build)
    assert states["Step"]["Catch"] == [
        {"ErrorEquals": ["States.ALL"], "ResultPath": ERROR_PATH, "Next": "NotifyFailure"}
    ]
    assert states["TooManyTries"]["ResultPath"] == ERROR_PATH and states["TooManyTries"]["Next"] == "NotifyFailure"
    notify = states["NotifyFailure"]
    assert notify["Parameters"]["TopicArn"] == "arn:aws:sns:eu-west-1:123456789012:app-notifications"
    assert notify["Parameters"]["Message.$"] == (
        "States.Format('App run {} failed. Error: {}. Cause: {}', $$.Execution.Id, $.error.Error, $.error.Cause)"
    )
    assert notify["Retry"] == [{"ErrorEquals": ["States.ALL"], **POLICY}]
    assert notify["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.notification_error", "Next": "Failed"}]
    assert notify["Next"] == "Failed"
    assert states["Failed"]["ErrorPath"] == "$.error.Error" and states["Failed"]["CausePath"] == "$.error.Cause"


def test_an_sdk_task_retries_the_errors_it_names_with_the_same_timing():
    def build(stack, function):
        task = tasks.CallAwsService(
            stack,
            "Describe",
            service="sagemaker",
            action="describePipelineExecution",
            parameters={"PipelineExecutionArn": "arn"},
            iam_resources=["*"],
        )
        retry(task, ["SageMaker.SageMakerException"])
        return task

    assert _states(build)["Describe"]["Retry"] == [{"ErrorEquals": ["SageMaker.SageMakerException"], **POLICY}]
