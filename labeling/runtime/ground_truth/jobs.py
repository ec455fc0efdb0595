"""The jobs of a round: their kinds, label attributes, built-in task functions and names."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from labeling.runtime.errors import ConfigurationError

BOXES = "boxes"
PRE_LABELED = "pre-labeled"  # the first job when the model's boxes are offered: workers correct them
VERIFICATION = "verification"
ADJUSTMENT = "adjustment"
JOB_KINDS = (BOXES, PRE_LABELED, VERIFICATION, ADJUSTMENT)

# Label attribute names in the manifests (a review job must use another name than the job it reviews).
BOXES_ATTRIBUTE = "defect-boxes"
PRE_LABEL_ATTRIBUTE = "defect-boxes-model"  # the model's boxes in a pre-labeled job's input manifest
REVIEW_ATTRIBUTES = {VERIFICATION: "defect-boxes-verified", ADJUSTMENT: "defect-boxes-adjusted"}

# Built-in task types, as named in the ARNs of their pre-annotation (PRE-) and consolidation (ACS-) functions.
TASK_TYPES = {
    BOXES: "BoundingBox",
    PRE_LABELED: "AdjustmentBoundingBox",
    VERIFICATION: "VerificationBoundingBox",
    ADJUSTMENT: "AdjustmentBoundingBox",
}

# The AWS account that owns Ground Truth's built-in PRE-<task type> and ACS-<task type> Lambda functions in
# each region where the bounding-box, verification and adjustment task types are offered.
# Source: SageMaker API reference, HumanTaskConfig.PreHumanTaskLambdaArn and
# AnnotationConsolidationConfig.AnnotationConsolidationLambdaArn (also in botocore's service model, which
# tests/labeling checks this table against).
BUILT_IN_FUNCTION_ACCOUNTS: dict[str, str] = {
    "us-east-1": "432418664414",
    "us-east-2": "266458841044",
    "us-west-2": "081040173940",
    "ca-central-1": "918755190332",
    "eu-west-1": "568282634449",
    "eu-west-2": "487402164563",
    "eu-central-1": "203001061592",
    "ap-northeast-1": "477331159723",
    "ap-northeast-2": "845288260483",
    "ap-south-1": "565803892007",
    "ap-southeast-1": "377565633583",
    "ap-southeast-2": "454466003867",
}
PUBLIC_WORKFORCE_ACCOUNT = "394669845002"
"""Owner of the Mechanical Turk work team `workteam/public-crowd/default` in every region."""

LABELING_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


@dataclass(frozen=True)
class RunIdentity:
    """One labeling round: its id, its folder for job files, and its two job names."""

    id: str
    prefix: str  # e.g. labeling-jobs/20261122-031500-1a2b3c4d/
    boxes_job: str
    review_job: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "prefix": self.prefix, "boxes_job": self.boxes_job, "review_job": self.review_job}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunIdentity:
        return cls(
            id=str(raw["id"]),
            prefix=str(raw["prefix"]),
            boxes_job=str(raw["boxes_job"]),
            review_job=str(raw["review_job"]),
        )


def parse_timestamp(value: str) -> datetime:
    """An ISO-8601 timestamp as Step Functions or Ground Truth write it; naive times are UTC."""
    text = value.strip()
    if re.search(r"[+-]\d{4}$", text):  # +0000 -> +00:00
        text = f"{text[:-2]}:{text[-2:]}"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_identity(*, project_prefix: str, jobs_prefix: str, execution_arn: str, start_time: str) -> RunIdentity:
    """Names for the round that execution `execution_arn` (started at `start_time`) runs.

    Job names must be unique in the account and region, at most 63 letters, digits and hyphens. They are
    built from the project prefix, the start time and a hash of the execution ARN and start time, so
    they are valid whatever the execution is called and differ between any two executions.
    """
    try:
        started = parse_timestamp(start_time)
    except ValueError:
        raise ConfigurationError(f"execution start time {start_time!r} is not an ISO-8601 timestamp") from None
    digest = hashlib.sha256(f"{execution_arn}|{start_time}".encode()).hexdigest()[:8]
    run_id = f"{started:%Y%m%d-%H%M%S}-{digest}"
    identity = RunIdentity(
        id=run_id,
        prefix=f"{jobs_prefix}{run_id}/",
        boxes_job=f"{project_prefix}-boxes-{run_id}",
        review_job=f"{project_prefix}-review-{run_id}",
    )
    for name in (identity.boxes_job, identity.review_job):
        if not LABELING_JOB_NAME.fullmatch(name):
            raise ConfigurationError(f"labeling job name {name!r} is not valid for SageMaker (prefix too long?)")
    return identity


def built_in_functions(kind: str, region: str) -> tuple[str, str]:
    """(pre-annotation, annotation-consolidation) Lambda ARNs of the built-in task type for `kind`."""
    account = BUILT_IN_FUNCTION_ACCOUNTS.get(region)
    if account is None:
        raise ConfigurationError(
            f"Ground Truth's built-in bounding-box functions are not offered in {region}; "
            f"deploy the labeling app to one of: {', '.join(sorted(BUILT_IN_FUNCTION_ACCOUNTS))}"
        )
    task_type = TASK_TYPES[kind]
    return (
        f"arn:aws:lambda:{region}:{account}:function:PRE-{task_type}",
        f"arn:aws:lambda:{region}:{account}:function:ACS-{task_type}",
    )


def public_work_team_arn(region: str) -> str:
    return f"arn:aws:sagemaker:{region}:{PUBLIC_WORKFORCE_ACCOUNT}:workteam/public-crowd/default"
