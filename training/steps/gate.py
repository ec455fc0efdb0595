"""Step 5, the quality gate: champion and challenger, judged on the same test images.

The **champion** is the newest Approved model package of the group (the model the devices run); the
**challenger** is this run's model. The evaluation step scores both on this run's test split and
hands the paired difference (challenger - champion, with its bootstrap interval) to `decide()`:

* no champion yet (the group's first model): register when test mAP50-95 >= the threshold;
* same dataset version as the champion (a scheduled run on unchanged labels): register only when the
  challenger is better beyond doubt (the interval of the difference lies above zero); otherwise the
  run ends as **no change** and registers nothing, so the fleet is not redeployed for nothing;
* otherwise: register unless the challenger is worse than the champion by more than the margin
  (point estimate of the paired difference; its interval is reported for the person who approves).

`handler()` is the Lambda step that looks the champion up in the model registry for the evaluation
step. Standard library only (boto3 comes with the Lambda runtime): this module is also the Lambda's code.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from shared.runtime.model_registry import model_data_url, newest_approved_package_arn

GATE_METRIC = "mAP50-95"
NO_CHAMPION = "none"
REGISTER, NO_CHANGE, FAIL = "register", "no_change", "fail"
VERDICTS = (REGISTER, NO_CHANGE, FAIL)
REGISTRY_METADATA = (
    "mAP50-95",
    "mAP50-95_interval",
    "mAP50",
    "verdict",
    "champion_package",
    "difference_vs_champion",
    "model_size",
    "image_size",
    "epochs",
    "learning_rate",
)
"""Keys of `registry_metadata` in evaluation.json: the registered model package's metadata, as strings."""

logger = logging.getLogger(__name__)
logger.setLevel(logging.INFO)


@dataclass(frozen=True)
class Champion:
    """The newest approved model package of the group: what the devices run, and what to beat."""

    package_arn: str
    model_data_url: str


@dataclass(frozen=True)
class ChampionResult:
    """How the challenger did against the champion on the same test images."""

    package_arn: str
    dataset_version: str
    difference: float  # challenger - champion, mAP50-95
    interval: tuple[float, float]  # 95% paired bootstrap interval of the difference
    images: int  # test images both were scored on


@dataclass(frozen=True)
class GateDecision:
    verdict: str  # register | no_change | fail
    metric: float
    threshold: float
    margin: float
    dataset_version: str
    champion: ChampionResult | None
    reason: str

    @property
    def passed(self) -> bool:
        """A model to register (a `no_change` run succeeds too, but registers nothing)."""
        return self.verdict == REGISTER

    def to_json(self) -> dict[str, Any]:
        champion = self.champion
        return {
            "verdict": self.verdict,
            "passed": self.passed,
            "reason": self.reason,
            "metric": GATE_METRIC,
            "value": self.metric,
            "threshold": self.threshold,
            "margin": self.margin,
            "dataset_version": self.dataset_version,
            "champion_package_arn": champion.package_arn if champion else None,
            "champion_dataset_version": champion.dataset_version if champion else None,
            "difference": champion.difference if champion else None,
            "difference_interval": list(champion.interval) if champion else None,
            "compared_images": champion.images if champion else None,
        }


def decide(
    metric: float,
    *,
    dataset_version: str,
    threshold: float,
    margin: float,
    champion: ChampionResult | None,
) -> GateDecision:
    """The verdict on the challenger (see the module's docstring for the rule)."""
    if margin < 0:
        raise ValueError("the regression margin cannot be negative")

    def verdict(kind: str, reason: str) -> GateDecision:
        return GateDecision(kind, metric, threshold, margin, dataset_version, champion, reason)

    if champion is None:
        if metric >= threshold:
            return verdict(REGISTER, f"{GATE_METRIC} {metric:.4f} >= {threshold:.4f} (first model)")
        return verdict(FAIL, f"{GATE_METRIC} {metric:.4f} is below the threshold {threshold:.4f}")
    low, high = champion.interval
    versus = (
        f"{GATE_METRIC} {champion.difference:+.4f} against the approved model {champion.package_arn} on the same "
        f"{champion.images} test images (95% interval {low:+.4f} to {high:+.4f})"
    )
    if champion.dataset_version == dataset_version and low <= 0:
        return verdict(
            NO_CHANGE,
            f"no change: the dataset {dataset_version} is the approved model's and the new model is not "
            f"better beyond doubt ({versus})",
        )
    if champion.difference < -margin:
        return verdict(FAIL, f"regression beyond the margin {margin:.4f}: {versus}")
    return verdict(REGISTER, f"not worse than the approved model beyond the margin {margin:.4f}: {versus}")


def approved_champion(sagemaker_client: Any, group_name: str) -> Champion | None:
    """The newest Approved package of the group and its model archive, or None when none is approved."""
    arn = newest_approved_package_arn(sagemaker_client, group_name=group_name)
    if arn is None:
        return None
    url = model_data_url(sagemaker_client.describe_model_package(ModelPackageName=arn))
    if not url:
        raise ValueError(
            f"approved model package {arn} has no ModelDataUrl, so it cannot be compared with; "
            "reject it or register it with its model archive before training again"
        )
    return Champion(package_arn=arn, model_data_url=url)


def champion_outputs(champion: Champion | None) -> dict[str, Any]:
    """The Lambda step's output parameters (names and types declared in the pipeline definition)."""
    return {
        "champion_package_arn": champion.package_arn if champion else NO_CHAMPION,
        "champion_model_url": champion.model_data_url if champion else NO_CHAMPION,
    }


def handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    """Lambda step: `{"model_package_group": ...}` -> the champion's package ARN and model archive."""
    import boto3  # noqa: PLC0415 - provided by the Lambda runtime

    group = str(event["model_package_group"])
    outputs = champion_outputs(approved_champion(boto3.client("sagemaker"), group))
    logger.info(json.dumps({"message": "champion", "model_package_group": group, **outputs}))
    return outputs
