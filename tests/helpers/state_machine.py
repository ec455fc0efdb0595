"""Run a synthesized state machine in moto's Step Functions executor, its Lambda tasks in process.

The one harness of the suite for workflows: each app's `workflow_harness.py` says only what is its own
(which handlers run, which states stand in for what moto cannot run, the clients the handlers get).

* moto's Lambda without Docker echoes the payload; `install()` makes it call `dispatch(function name,
  event)` instead. An exception there becomes a Lambda function error named after the exception class,
  as in AWS, so Retry and Catch see what they would see.
* The app's notification topic is subscribed to a queue; `messages()` drains it.
* Several executions may run at once (one moto executor thread each): `calls` is kept under a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3
from moto.awslambda_simple.models import LambdaSimpleBackend

from tests.helpers.lambda_context import ACCOUNT, REGION


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def lambda_handlers(template: Mapping[str, Any], module: str) -> dict[str, str]:
    """Logical id -> function name of the template's Lambda functions whose handler lives in `module`."""
    return {
        logical_id: resource["Properties"]["Handler"].rsplit(".", 1)[1]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function" and resource["Properties"]["Handler"].rsplit(".", 1)[0] == module
    }


@dataclass
class MotoStateMachine:
    """One state machine in moto (create inside `mock_aws`), with its notification topic read from a queue."""

    name: str
    definition: Mapping[str, Any]
    dispatch: Callable[[str, dict[str, Any]], Any] | None  # (function name, event) -> the function's result
    topic: str | None  # None: the app's topic does not exist (its notifications fail)
    poll_seconds: float = 0.2
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (function name, event), in order

    def __post_init__(self) -> None:
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.sns = boto3.client("sns", region_name=REGION)
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.queue = self.sqs.create_queue(QueueName=f"{self.name}-notifications")["QueueUrl"]
        if self.topic is not None:
            topic = self.sns.create_topic(Name=self.topic)["TopicArn"]
            queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)  # the envelope: subject, message
        self.arn = self.sfn.create_state_machine(
            name=self.name,
            definition=json.dumps(self.definition),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/{self.name}",
        )["stateMachineArn"]
        self._lock = threading.Lock()

    # -- what moto's Lambda runs ------------------------------------------------------------------------
    def invoke(self, function: str, body: Any) -> tuple[Any, str | None]:
        """(result, error type or None) of one Lambda invocation by the executor."""
        event = json.loads(body)
        name = function.rsplit(":", 1)[-1]
        with self._lock:
            self.calls.append((name, event))
        try:
            if self.dispatch is None:
                raise AssertionError(f"{self.name} has no Lambda task, yet {name} was invoked")
            return self.dispatch(name, event), None
        except Exception as error:
            return {"errorType": type(error).__name__, "errorMessage": str(error)}, type(error).__name__

    def install(self, monkeypatch: Any) -> None:
        """Route moto's Lambda invocations to `dispatch` (for the test's duration)."""
        machine = self

        def invoke(*args: Any) -> bytes:
            # LambdaSimpleBackend.invoke(self, function_name, qualifier, body, headers, response_headers)
            _backend, function_name, _qualifier, body, _headers, response_headers = args
            payload, error = machine.invoke(function_name, body)
            if error:
                response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(payload, default=str).encode()

        monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)

    # -- executions ---------------------------------------------------------------------------------------
    def start(self, execution_input: Mapping[str, Any], name: str | None = None) -> str:
        named = {"name": name} if name else {}
        started = self.sfn.start_execution(stateMachineArn=self.arn, input=json.dumps(execution_input), **named)
        return str(started["executionArn"])

    def wait(self, execution_arn: str, timeout: float = 120.0) -> dict[str, Any]:
        """The execution once it stopped running (fails the test after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            described = self.sfn.describe_execution(executionArn=execution_arn)
            if described["status"] != "RUNNING":
                return dict(described)
            time.sleep(self.poll_seconds)
        raise AssertionError(f"execution {execution_arn} still running after {timeout} s")

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for page in self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            events.extend(page["events"])
        return events

    def visited(self, execution_arn: str) -> list[str]:
        """Names of the states the execution entered, in order."""
        return [
            event["stateEnteredEventDetails"]["name"]
            for event in self.history(execution_arn)
            if "stateEnteredEventDetails" in event
        ]

    def messages(self) -> list[dict[str, Any]]:
        """Every notification published since the last call: {"subject", "message"}."""
        found = []
        while True:
            received = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10).get("Messages", [])
            if not received:
                return found
            for message in received:
                envelope = json.loads(message["Body"])
                found.append({"subject": envelope.get("Subject"), "message": envelope["Message"]})
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=message["ReceiptHandle"])
