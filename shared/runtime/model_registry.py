"""The newest approved model package of a group: the model the devices run, the champion, the pre-labeler.

Three apps ask the registry this one question (edge deployment: what to deploy; training: what to compare
with; labeling: whose boxes to offer as pre-labels), so it is asked one way: approved, versioned packages
by creation time, newest first. A group that does not exist yet (training registers its first package)
has no approved package; that is an answer, not an error.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

APPROVED = "Approved"
_NO_GROUP = ("ResourceNotFound", "ResourceNotFoundException")


def newest_approved_package_arn(sagemaker: Any, *, group_name: str) -> str | None:
    """ARN of the group's newest approved package; None when none is approved or the group does not exist."""
    try:
        page = sagemaker.list_model_packages(
            ModelPackageGroupName=group_name,
            ModelApprovalStatus=APPROVED,
            ModelPackageType="Versioned",
            SortBy="CreationTime",
            SortOrder="Descending",
            MaxResults=1,
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in _NO_GROUP:
            return None
        raise
    summaries = page.get("ModelPackageSummaryList") or []
    return str(summaries[0]["ModelPackageArn"]) if summaries else None


def model_data_url(described: Any) -> str | None:
    """The model archive (ModelDataUrl) of a DescribeModelPackage answer, None when it has none."""
    containers = (described.get("InferenceSpecification") or {}).get("Containers") or []
    url = containers[0].get("ModelDataUrl") if containers else None
    return str(url) if url else None
