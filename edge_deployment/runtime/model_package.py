"""Step 1 of the workflow: which model package to deploy, and whether a newer approved one overtook it.

Started by the approval event, the workflow deploys exactly the package the event names (after
checking it belongs to this app's group and is still approved); started by the workflow pipeline,
it deploys the newest approved package of the group. No approved package yet is not an error.

The devices run the group's newest approved package (highest version): a run whose package has been
overtaken by a newer approved one deploys nothing (see runtime/deployment.py for the races).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from edge_deployment.runtime.aws import DeploymentInputError, error_code, parse_s3_uri, transient_errors
from shared.runtime.model_registry import newest_approved_package_arn

APPROVED = "Approved"
# Versioned model package ARN: ...:model-package/<group name, lower-cased by SageMaker>/<version>
_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/(?P<group>[A-Za-z0-9-]{1,63})/(?P<version>\d+)$"
)


class WrongModelPackageGroup(DeploymentInputError):
    """The package belongs to another model package group than the one this app deploys."""


class ModelPackageNotDeployable(DeploymentInputError):
    """The package does not exist, is not approved (any more) or has no model archive."""


@dataclass(frozen=True)
class ModelPackage:
    arn: str
    group_name: str
    version: int
    model_data_url: str
    approval_status: str
    creation_time: str

    def to_json(self) -> dict[str, Any]:
        """The package in the workflow's state (snake_case keys, as every app's state)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelPackage:
        try:
            return cls(
                arn=str(raw["arn"]),
                group_name=str(raw["group_name"]),
                version=int(raw["version"]),
                model_data_url=str(raw["model_data_url"]),
                approval_status=str(raw["approval_status"]),
                creation_time=str(raw["creation_time"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DeploymentInputError(f"model package description is incomplete: {error}") from None


def check_package_arn(arn: str, *, group_name: str) -> None:
    """Refuse, before any AWS call, an ARN that is not a versioned package of `group_name`."""
    match = _PACKAGE_ARN.match(arn or "")
    if not match:
        raise ModelPackageNotDeployable(
            f"{arn!r} is not the ARN of a versioned model package (...:model-package/<group>/<version>); "
            "nothing was created"
        )
    if match["group"].lower() != group_name.lower():
        raise WrongModelPackageGroup(
            f"model package {arn} belongs to group {match['group']!r}, but this app deploys group "
            f"{group_name!r}; nothing was created"
        )


def describe_package(sagemaker: Any, arn: str, *, group_name: str) -> ModelPackage:
    """The package, checked: in `group_name`, approved, completed, with a model archive URI."""
    check_package_arn(arn, group_name=group_name)
    try:
        with transient_errors():
            raw = sagemaker.describe_model_package(ModelPackageName=arn)
    except ClientError as error:
        if error_code(error) in ("ValidationException", "ResourceNotFound", "ResourceNotFoundException"):
            raise ModelPackageNotDeployable(f"model package {arn} not found: {error}; nothing was created") from None
        raise
    group = raw.get("ModelPackageGroupName")
    if group != group_name:
        raise WrongModelPackageGroup(
            f"model package {arn} belongs to group {group!r}, but this app deploys group {group_name!r}; "
            "nothing was created"
        )
    status = raw.get("ModelApprovalStatus")
    if status != APPROVED:
        raise ModelPackageNotDeployable(
            f"model package {arn} is {status}, not {APPROVED} (approval revoked?); nothing was created"
        )
    if raw.get("ModelPackageStatus") not in (None, "Completed"):
        raise ModelPackageNotDeployable(
            f"model package {arn} is {raw.get('ModelPackageStatus')}, not Completed; nothing was created"
        )
    containers = (raw.get("InferenceSpecification") or {}).get("Containers") or []
    url = containers[0].get("ModelDataUrl") if containers else None
    if not url:
        raise ModelPackageNotDeployable(
            f"model package {arn} has no InferenceSpecification.Containers[0].ModelDataUrl (the model "
            "archive); nothing was created"
        )
    parse_s3_uri(url)
    created = raw.get("CreationTime")
    return ModelPackage(
        arn=raw.get("ModelPackageArn", arn),
        group_name=group,
        version=int(raw["ModelPackageVersion"]),
        model_data_url=url,
        approval_status=status,
        creation_time=created.isoformat() if hasattr(created, "isoformat") else str(created or ""),
    )


def newest_approved_arn(sagemaker: Any, *, group_name: str) -> str | None:
    """ARN of the group's newest approved package (creation time, descending), None when there is none."""
    with transient_errors():
        return newest_approved_package_arn(sagemaker, group_name=group_name)


def resolve_model_package(sagemaker: Any, *, group_name: str, model_package_arn: str | None = None) -> dict[str, Any]:
    """The workflow's first step: `{"found": bool, "message": str, "package": {...} | None}`.

    With `model_package_arn` (the approval event's package) exactly that package; without it the
    newest approved package of `group_name`.
    """
    if model_package_arn:
        package = describe_package(sagemaker, model_package_arn, group_name=group_name)
        source = "named by the approval event"
    else:
        arn = newest_approved_arn(sagemaker, group_name=group_name)
        if arn is None:
            return {
                "found": False,
                "package": None,
                "message": f"No approved model package in group {group_name} yet: nothing to deploy.",
            }
        package = describe_package(sagemaker, arn, group_name=group_name)
        source = "the newest approved one"
    return {
        "found": True,
        "package": package.to_json(),
        "message": f"Deploying model package {package.arn} (version {package.version}, {source}).",
    }


def package_version(arn: str) -> int:
    """The version of a versioned model package ARN (`...:model-package/<group>/<version>`)."""
    match = _PACKAGE_ARN.match(arn or "")
    if not match:
        raise ValueError(f"{arn!r} is not the ARN of a versioned model package")
    return int(match["version"])


def newer_approved_package(sagemaker: Any, *, group_name: str, version: int) -> dict[str, Any] | None:
    """`{"arn", "version"}` of the group's newest approved package when it is newer than `version`, else None."""
    arn = newest_approved_arn(sagemaker, group_name=group_name)
    if arn is None or package_version(arn) <= version:
        return None
    return {"arn": arn, "version": package_version(arn)}
