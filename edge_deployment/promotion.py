"""Answer a stage's approval request: promote the model to the next stage, or reject it (the stage is rolled back).

    .venv/bin/python -m edge_deployment.promotion approve --token <task_token> [--note "looked at line 1"]
    .venv/bin/python -m edge_deployment.promotion reject --token <task_token> --reason "too many false alarms"
        [--region eu-west-1] [--profile name]

The token is the `task_token` of the approval notification (a stage with `manual_approval: true`,
edge_deployment/README.md "Staged rollout"). An answer after the approval timed out, or a second
answer, is refused by Step Functions and reported here; the stage was then already rolled back.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    approve_parser = sub.add_parser("approve", help="start the next stage")
    approve_parser.add_argument("--note", default="", help="kept in the execution's history")
    reject_parser = sub.add_parser("reject", help="roll the stage back")
    reject_parser.add_argument("--reason", required=True, help="why (goes into the rollback notification)")
    for command in (approve_parser, reject_parser):
        command.add_argument("--token", required=True, help="task_token of the approval notification")
        command.add_argument("--region", help="AWS region of the workflow (default: the AWS CLI's)")
        command.add_argument("--profile", help="AWS CLI profile")
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
