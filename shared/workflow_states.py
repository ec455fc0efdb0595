"""State machine building blocks every app's workflow is made of: retries, Lambda steps, the failure path.

* One retry policy (`retry`): exponential backoff with full jitter, the same timing everywhere. What
  differs is only which errors are worth another try: for a Lambda step every error but the app's
  non-retryable ones (bad input, a decision: named after the exception class, as Lambda reports them);
  for an AWS SDK task the service's transient errors.
* A Lambda step (`lambda_step`): the function's answer at `result_path`, retried by that policy.
* The failure path (`FailurePath`): every caught error, and every failure a workflow decides itself,
  lands at ERROR_PATH (`{"Error", "Cause"}`), is published to the app's topic (NotifyFailure) and ends the
  execution in a Fail state with that error and cause, so the execution says what went wrong
  (`WrongModelPackageGroup`, `ManifestError`, ...). A notification that cannot be published still ends there.

Each workflow declares its states with these, then chains them by name (the labeling workflow is the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

ERROR_PATH = "$.error"  # where a caught error goes: {"Error": ..., "Cause": ...}
NOTIFICATION_ERROR_PATH = "$.notification_error"  # a notification that could not be published
ALL_ERRORS = ("States.ALL",)

# The one retry timing: 2 s, 4 s, 8 s, ... (at most 60 s apart), five more tries, with full jitter so that
# overlapping executions do not retry in step.
RETRY_INTERVAL = cdk.Duration.seconds(2)
RETRY_ATTEMPTS = 5
RETRY_BACKOFF = 2.0
RETRY_MAX_DELAY = cdk.Duration.seconds(60)


def retry(
    state: sfn.TaskStateBase | sfn.CustomState,
    errors: Sequence[str] = ALL_ERRORS,
    *,
    non_retryable: Sequence[str] = (),
) -> None:
    """Retry `errors` with the one policy; `non_retryable` (matched first) fail at once.

    An app says which errors are transient either way: every error but its non-retryable ones (labeling),
    or only the ones its functions raise for throttling and service faults (edge: `TransientError`).
    """
    if non_retryable:
        state.add_retry(errors=list(non_retryable), max_attempts=0)
    state.add_retry(
        errors=list(errors),
        interval=RETRY_INTERVAL,
        max_attempts=RETRY_ATTEMPTS,
        backoff_rate=RETRY_BACKOFF,
        max_delay=RETRY_MAX_DELAY,
        jitter_strategy=sfn.JitterType.FULL,
    )


def lambda_step(
    scope: Construct,
    state_id: str,
    *,
    function: lambda_.IFunction,
    payload: Mapping[str, Any] | None,
    result_path: str,
    retryable: Sequence[str] = ALL_ERRORS,
    non_retryable: Sequence[str] = (),
    comment: str | None = None,
) -> tasks.LambdaInvoke:
    """Call `function` with `payload` (the whole state input when None); its answer goes to `result_path`.

    Lambda names a function's error after its exception class; `retryable` and `non_retryable` are such
    names (and Lambda's own errors, such as `Lambda.ServiceException`).
    """
    step = tasks.LambdaInvoke(
        scope,
        state_id,
        lambda_function=function,
        payload=sfn.TaskInput.from_object(dict(payload)) if payload is not None else None,
        payload_response_only=True,
        retry_on_service_exceptions=False,  # the one policy below covers Lambda's own errors too
        result_path=result_path,
        comment=comment,
    )
    retry(step, retryable, non_retryable=non_retryable)
    return step


def publish(
    scope: Construct,
    state_id: str,
    *,
    topic: sns.ITopic,
    subject: str | None = None,
    subject_path: str | None = None,
    message: sfn.TaskInput,
    comment: str | None = None,
) -> tasks.SnsPublish:
    """A notification to the app's topic (retried with the one policy); the state's data is kept as it is."""
    state = tasks.SnsPublish(
        scope,
        state_id,
        topic=topic,
        subject=subject if subject is not None else sfn.JsonPath.string_at(str(subject_path)),
        message=message,
        result_path=sfn.JsonPath.DISCARD,
        comment=comment,
    )
    retry(state)
    return state


def app_topic(scope: Construct, topic_name: str) -> sns.ITopic:
    """The app's notification topic, found by name (its stack is another one of the app)."""
    stack = cdk.Stack.of(scope)
    return sns.Topic.from_topic_arn(scope, "NotificationTopic", stack.format_arn(service="sns", resource=topic_name))


class FailurePath:
    """NotifyFailure -> `fail_state`: where every failure of a workflow ends.

    `title` starts the notification ("Labeling round" -> "Labeling round <execution> failed. Error: ...").
    """

    def __init__(
        self,
        scope: Construct,
        *,
        topic: sns.ITopic,
        subject: str,
        title: str,
        fail_state: str,
    ) -> None:
        failed = sfn.Fail(
            scope,
            fail_state,
            comment="The execution fails with the error and cause at " + ERROR_PATH,
            error_path=f"{ERROR_PATH}.Error",
            cause_path=f"{ERROR_PATH}.Cause",
        )
        self.notify = publish(
            scope,
            "NotifyFailure",
            topic=topic,
            subject=subject,
            message=sfn.TaskInput.from_text(
                sfn.JsonPath.format(
                    f"{title} {{}} failed. Error: {{}}. Cause: {{}}",
                    sfn.JsonPath.execution_id,
                    sfn.JsonPath.string_at(f"{ERROR_PATH}.Error"),
                    sfn.JsonPath.string_at(f"{ERROR_PATH}.Cause"),
                )
            ),
            comment="Tells the team which execution failed and why",
        )
        # A notification that cannot be published (topic or key gone) still ends in the workflow's own failure.
        self.notify.add_catch(failed, errors=list(ALL_ERRORS), result_path=NOTIFICATION_ERROR_PATH)
        self.notify.next(failed)

    def guard(self, *states: sfn.TaskStateBase | sfn.CustomState) -> None:
        """Send any error of these states (after their retries) down the failure path."""
        for state in states:
            state.add_catch(self.notify, errors=list(ALL_ERRORS), result_path=ERROR_PATH)

    def error(self, scope: Construct, state_id: str, *, error: str, cause: str) -> sfn.Pass:
        """A failure the workflow decides itself: `cause` (a States.Format expression) becomes the error's cause."""
        state = sfn.Pass(scope, state_id, parameters={"Error": error, "Cause.$": cause}, result_path=ERROR_PATH)
        state.next(self.notify)
        return state
