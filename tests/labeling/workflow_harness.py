"""Run the synthesized labeling state machine in moto's Step Functions executor, with the real Lambda code
(the suite's harness, `tests/helpers/state_machine.py`, with what is the labeling app's own):

* The definition comes from the synthesized template (`tests/helpers/asl.state_machines`), with the
  functions' ARNs filled in.
* Each Lambda task runs the handler its function names (`labeling.runtime.handlers.<handler>`), in process,
  against moto S3 and Step Functions and the Feature Store double.
* moto cannot run SageMaker's `createLabelingJob.sync` integration; those two states are pointed at a
  function that plays the job (`FakeGroundTruth.run_job`: the same CreateLabelingJob parameters,
  validated by botocore; the DescribeLabelingJob answer `.sync` returns). Everything else - Choice
  rules, loops, ResultSelector/ResultPath, Retry, Catch, the SNS notification - runs as defined.
* moto's ASL lexer reads the key `"RoleArn.$"` as the Credentials keyword and passes it on
  unevaluated (Step Functions evaluates it like any other key); in those two states the key is
  renamed for moto (`MOTO_ROLE_ARN_KEY`) and renamed back before the request is validated.
* Label Studio rounds wait in Wait states between progress checks; moto waits for real, so the
  harness shortens every Wait to `WAIT_SECONDS` (the definition's own value is checked by the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from labeling.functions import HANDLER_MODULE
from labeling.runtime import handlers
from tests.helpers import asl
from tests.helpers.lambda_context import LambdaContext
from tests.helpers.state_machine import MotoStateMachine, function_arn, lambda_handlers
from tests.labeling.fakes import FakeFeatureStore, FakeGroundTruth

FAKE_GROUND_TRUTH = "FakeGroundTruth"
LABELING_JOB_SYNC = "arn:aws:states:::sagemaker:createLabelingJob.sync"
MOTO_ROLE_ARN_KEY = "RoleArnForMoto"
WAIT_SECONDS = 1


def lambda_functions(template: Mapping[str, Any]) -> dict[str, str]:
    """Logical id -> handler name of the labeling functions in a template."""
    return lambda_handlers(template, HANDLER_MODULE)


def runnable_definition(template: Mapping[str, Any]) -> dict[str, Any]:
    """The state machine's definition with ARNs filled in and the `.sync` jobs pointed at the job double."""
    substitutions = {f"{lid}.Arn": function_arn(handler) for lid, handler in lambda_functions(template).items()}
    (machine,) = asl.state_machines(template, substitutions).values()
    definition = machine.definition
    for _, state in asl.iter_states(definition):
        if state.get("Type") == "Wait":
            state["Seconds"] = WAIT_SECONDS
        if state.get("Resource") == LABELING_JOB_SYNC:
            state["Resource"] = function_arn(FAKE_GROUND_TRUTH)
            state["Parameters"][f"{MOTO_ROLE_ARN_KEY}.$"] = state["Parameters"].pop("RoleArn.$")
    return definition


@dataclass
class Workflow:
    template: Mapping[str, Any]
    s3: Any
    featurestore: FakeFeatureStore
    ground_truth: FakeGroundTruth
    seconds_per_call: Callable[[str], float] = lambda handler: 900.0
    before_call: Callable[[str, Mapping[str, Any]], None] = lambda handler, event: None
    machine: MotoStateMachine = field(init=False)

    def __post_init__(self) -> None:
        self.machine = MotoStateMachine(
            name="tag-inspect-labeling",
            definition=runnable_definition(self.template),
            dispatch=self._dispatch,
            topic="tag-inspect-labeling-notifications",
        )
        self.sfn = self.machine.sfn

    @property
    def calls(self) -> list[tuple[str, dict[str, Any]]]:
        return self.machine.calls

    def _dispatch(self, handler: str, event: dict[str, Any]) -> Any:
        self.before_call(handler, event)
        if handler == FAKE_GROUND_TRUTH:
            event["RoleArn"] = event.pop(MOTO_ROLE_ARN_KEY)
            return self.ground_truth.run_job(event)
        return getattr(handlers, handler)(event, LambdaContext(handler, seconds_left=self.seconds_per_call(handler)))

    def install(self, monkeypatch: Any, config_json: str, **clients: Any) -> None:
        """Route moto's Lambda invocations to the handlers and give the handlers their clients."""
        self.machine.install(monkeypatch)
        monkeypatch.setenv("LABELING_CONFIG", config_json)
        handlers._config.cache_clear()
        available = {
            "s3": self.s3,
            "sagemaker-featurestore-runtime": self.featurestore,
            "stepfunctions": self.sfn,
            "sagemaker": boto3.client("sagemaker", region_name=self.sfn.meta.region_name),  # the model registry
            **clients,
        }
        monkeypatch.setattr(handlers, "_client", available.__getitem__)

    def start(self, name: str) -> str:
        return self.machine.start({"trigger": "test"}, name)

    def wait(self, execution_arn: str, timeout: float = 120.0) -> dict[str, Any]:
        return self.machine.wait(execution_arn, timeout)

    def run(self, name: str = "round-1") -> dict[str, Any]:
        return self.wait(self.start(name))

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        return self.machine.history(execution_arn)

    def visited(self, execution_arn: str) -> list[str]:
        """Names of the states the execution entered, in order."""
        return self.machine.visited(execution_arn)

    def notifications(self) -> list[str]:
        """The messages published since the last call."""
        return [notification["message"] for notification in self.machine.messages()]

    def handler_calls(self, handler: str) -> list[dict[str, Any]]:
        return [event for name, event in self.calls if name == handler]
