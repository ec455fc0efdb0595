"""Step 5, the quality gate: threshold, and no regression against the currently approved model.

A new model passes when its test mAP50-95 is at least the threshold **and** at least the currently
approved model's mAP50-95 minus the allowed margin (the first model of a group is held to the
threshold only). In the SageMaker pipeline the comparison itself is the pipeline's Condition step;
`handler()` is the Lambda step before it that looks the approved model up in the model registry and
returns the regression floor. `decide()` is the same rule in Python, for local runs and tests.

Standard library only (boto3 comes with the Lambda runtime): this module is also the Lambda's code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

GATE_METRIC = "mAP50-95"
NO_BASELINE = "none"

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)


class GateError(Exception):
    """The currently approved model cannot be compared with (its metrics cannot be found)."""


@dataclass(frozen=True)
class Baseline:
    """The newest approved model package of the group and its gate metric."""

    package_arn: str
    metric: float


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: float
    threshold: float
    floor: float
    baseline: Baseline | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metric": GATE_METRIC,
            "value": self.metric,
            "threshold": self.threshold,
            "regression_floor": self.floor,
            "baseline_package_arn": self.baseline.package_arn if self.baseline else None,
            "baseline_value": self.baseline.metric if self.baseline else None,
            "reason": self.reason,
        }


def regression_floor(baseline: Baseline | None, margin: float) -> float:
    """The lowest metric that is not a regression: baseline - margin (0 without a baseline)."""
    if margin < 0:
        raise ValueError("the regression margin cannot be negative")
    return max(0.0, baseline.metric - margin) if baseline else 0.0


def decide(metric: float, *, threshold: float, baseline: Baseline | None, margin: float) -> GateDecision:
    floor = regression_floor(baseline, margin)
    if metric < threshold:
        reason = f"{GATE_METRIC} {metric:.4f} is below the threshold {threshold:.4f}"
    elif metric < floor and baseline is not None:
        reason = (
            f"{GATE_METRIC} {metric:.4f} regresses from the approved model {baseline.package_arn} "
            f"({baseline.metric:.4f}) by more than the margin {margin:.4f}"
        )
    else:
        versus = f", approved model {baseline.metric:.4f} - margin {margin:.4f}" if baseline else " (first model)"
        return GateDecision(
            True, metric, threshold, floor, baseline, f"{GATE_METRIC} {metric:.4f} >= {threshold:.4f}{versus}"
        )
    return GateDecision(False, metric, threshold, floor, baseline, reason)


def _metric_from_report(s3_client: Any, uri: str) -> float | None:
    if not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://") :].partition("/")
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    try:
        report = json.loads(body)
        return float(report["metrics"][GATE_METRIC])
    except (ValueError, KeyError, TypeError):
        return None


def approved_baseline(sagemaker_client: Any, s3_client: Any, group_name: str) -> Baseline | None:
    """The newest Approved package of the group and its mAP50-95, or None when none is approved.

    The metric comes from the package's model-quality statistics (the evaluation report the pipeline
    attached), else from its customer metadata. An approved package with neither is an error: the
    gate must not silently skip the regression check.
    """
    response = sagemaker_client.list_model_packages(
        ModelPackageGroupName=group_name,
        ModelApprovalStatus="Approved",
        ModelPackageType="Versioned",
        SortBy="CreationTime",
        SortOrder="Descending",
        MaxResults=1,
    )
    summaries = response.get("ModelPackageSummaryList", [])
    if not summaries:
        return None
    arn = summaries[0]["ModelPackageArn"]
    package = sagemaker_client.describe_model_package(ModelPackageName=arn)
    statistics = ((package.get("ModelMetrics") or {}).get("ModelQuality") or {}).get("Statistics") or {}
    metric = _metric_from_report(s3_client, statistics.get("S3Uri", "")) if statistics else None
    if metric is None:
        raw = (package.get("CustomerMetadataProperties") or {}).get(GATE_METRIC)
        try:
            metric = float(raw) if raw is not None else None
        except ValueError:
            metric = None
    if metric is None:
        raise GateError(
            f"approved model package {arn} has no {GATE_METRIC} (neither a model-quality report nor "
            "customer metadata); register it with metrics or reject it before training again"
        )
    return Baseline(package_arn=arn, metric=metric)


def baseline_outputs(baseline: Baseline | None, margin: float) -> dict[str, Any]:
    """The Lambda step's output parameters (names and types declared in the pipeline definition)."""
    return {
        "regression_floor": regression_floor(baseline, margin),
        "baseline_metric": baseline.metric if baseline else -1.0,
        "baseline_package_arn": baseline.package_arn if baseline else NO_BASELINE,
        "has_baseline": baseline is not None,
    }


def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    """Lambda step: `{"model_package_group": ..., "regression_margin": ...}` -> the output parameters."""
    import boto3  # noqa: PLC0415 - provided by the Lambda runtime

    group = str(event["model_package_group"])
    margin = float(event["regression_margin"])
    baseline = approved_baseline(boto3.client("sagemaker"), boto3.client("s3"), group)
    outputs = baseline_outputs(baseline, margin)
    logger.info(json.dumps({"message": "regression floor", "model_package_group": group, **outputs}))
    return outputs
