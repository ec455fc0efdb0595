"""Answer a stage's approval request, or put stages back on an earlier model package version on demand.

    .venv/bin/python -m edge_deployment.promotion approve --token <task_token> [--note "looked at line 1"]
    .venv/bin/python -m edge_deployment.promotion reject --token <task_token> --reason "too many false alarms"
    .venv/bin/python -m edge_deployment.promotion rollback --version 6 [--stage pilot ...] [--env prod]
        [--region eu-west-1] [--profile name]

The token is the `task_token` of the approval notification (a stage with `manual_approval: true`,
edge_deployment/README.md "Staged rollout"). An answer after the approval timed out, or a second
answer, is refused by Step Functions and reported here; the stage was then already rolled back.

`rollback` starts the edge workflow with `{"trigger": "rollback", "model_package_arn", "stages"}`: the
named stages (every stage without --stage) get that package version's components, one stage after the
other, each followed until every device reports the version in its heartbeats (no soak, health gate or
approval: it is the way back). The version must still be Approved in the registry. The next approval (or
the workflow pipeline) deploys the newest approved package again: reject the bad version in the registry
to keep the fleet back.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from edge_deployment import APP
from edge_deployment.naming import partition
from edge_deployment.runtime.stages import ROLLBACK_TRIGGER
from shared.config import DEFAULT_CONFIG_FILE, ConfigError, Settings, load_settings
from shared.names import resource_names

REJECTED = "Rejected"  # the error the workflow's RequestApproval state catches as a rejection
MAX_TOKEN = 1024  # Step Functions' task token length limit
MAX_CAUSE = 32_768


class PromotionError(Exception):
    """The answer could not be given; the message says why."""


def _check_token(token: str) -> str:
    token = token.strip()
    if not token or len(token) > MAX_TOKEN:
        raise PromotionError(f"--token must be the task_token of the approval notification (1-{MAX_TOKEN} characters)")
    return token


def approve(sfn: Any, *, token: str, by: str, note: str = "") -> None:
    """Promote: the workflow starts the next stage."""
    output = {"approved": True, "by": by, "note": note}
    _answer(lambda: sfn.send_task_success(taskToken=_check_token(token), output=json.dumps(output)))


def reject(sfn: Any, *, token: str, by: str, reason: str) -> None:
    """Reject: the workflow rolls the stage back and the later stages never get the model."""
    if not reason.strip():
        raise PromotionError("--reason must say why the stage is rejected (it goes into the rollback notification)")
    cause = f"rejected by {by}: {reason.strip()}"[:MAX_CAUSE]
    _answer(lambda: sfn.send_task_failure(taskToken=_check_token(token), error=REJECTED, cause=cause))


def _answer(call: Any) -> None:
    try:
        call()
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("TaskTimedOut", "TaskDoesNotExist", "InvalidToken"):
            raise PromotionError(
                f"{code}: the approval is no longer waiting (answered already, timed out, or the token is wrong); "
                "a stage that timed out has been rolled back"
            ) from None
        raise PromotionError(f"Step Functions refused the answer: {code}: {error}") from None


def rollback_request(
    settings: Settings, *, version: int, stages: Sequence[str], account: str, region: str
) -> dict[str, Any]:
    """The workflow input of a rollback on demand (stage names checked against the configuration)."""
    names = [stage.name for stage in settings.edge_deployment.effective_stages]
    unknown = [name for name in stages if name not in names]
    if unknown:
        raise PromotionError(f"--stage {', '.join(unknown)}: no such stage (the stages are {', '.join(names)})")
    if version < 1:
        raise PromotionError(f"--version must be a model package version (1 or more), got {version}")
    group = resource_names(settings, account=account, region=region).model_package_group
    arn = f"arn:{partition(region)}:sagemaker:{region}:{account}:model-package/{group.lower()}/{version}"
    return {
        "trigger": ROLLBACK_TRIGGER,
        "model_package_arn": arn,
        "model_package_group_name": group,
        "stages": list(stages),
    }


def start_rollback(sfn: Any, settings: Settings, request: dict[str, Any], *, account: str, region: str) -> str:
    """Start the edge workflow with a rollback request; the execution's ARN."""
    machine = resource_names(settings, account=account, region=region).workflow_state_machine(APP)
    machine_arn = f"arn:{partition(region)}:states:{region}:{account}:stateMachine:{machine}"
    version = request["model_package_arn"].rsplit("/", 1)[-1]
    name = f"rollback-v{version}-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    try:
        started = sfn.start_execution(stateMachineArn=machine_arn, name=name, input=json.dumps(request))
    except ClientError as error:
        raise PromotionError(f"the edge workflow could not be started: {error}") from None
    return str(started["executionArn"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    approve_parser = sub.add_parser("approve", help="start the next stage")
    approve_parser.add_argument("--note", default="", help="kept in the execution's history")
    reject_parser = sub.add_parser("reject", help="roll the stage back")
    reject_parser.add_argument("--reason", required=True, help="why (goes into the rollback notification)")
    rollback_parser = sub.add_parser("rollback", help="put stages back on an approved model package version")
    rollback_parser.add_argument("--version", type=int, required=True, help="the model package version")
    rollback_parser.add_argument("--stage", action="append", default=[], help="a stage (repeat; default: all)")
    rollback_parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file")
    rollback_parser.add_argument("--env", help="environment of the configuration (its account and region)")
    for command in (approve_parser, reject_parser):
        command.add_argument("--token", required=True, help="task_token of the approval notification")
    for command in (approve_parser, reject_parser, rollback_parser):
        command.add_argument("--region", help="AWS region of the workflow (default: the environment's or AWS CLI's)")
        command.add_argument("--profile", help="AWS CLI profile")
    args = parser.parse_args(argv)
    if args.command == "rollback":
        return _rollback(args)

    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        sfn = session.client("stepfunctions")
        by = getpass.getuser()
        if args.command == "approve":
            approve(sfn, token=args.token, by=by, note=args.note)
            print("approved: the next stage starts")
        else:
            reject(sfn, token=args.token, by=by, reason=args.reason)
            print("rejected: the stage is rolled back")
    except (PromotionError, BotoCoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _rollback(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config, environment=args.env)
        environment = settings.environment
        session = boto3.Session(
            profile_name=args.profile, region_name=args.region or (environment.region if environment else None)
        )
        region = session.region_name
        if not region:
            raise PromotionError("no region: give --region or --env")
        account = environment.account if environment else session.client("sts").get_caller_identity()["Account"]
        request = rollback_request(settings, version=args.version, stages=args.stage, account=account, region=region)
        execution = start_rollback(session.client("stepfunctions"), settings, request, account=account, region=region)
    except (PromotionError, ConfigError, BotoCoreError, ClientError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"rollback started: {execution}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
