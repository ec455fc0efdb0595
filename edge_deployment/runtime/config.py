"""What the edge workflow's Lambda functions know of the deployment: one JSON document in EDGE_DEPLOYMENT_CONFIG.

The CDK app writes it from the validated `config.yaml` (`edge_deployment/function_config.py`), and every
function of the workflow gets the same document, so the functions never read the configuration file and
never guess a name. It is parsed once per cold start; a missing or invalid field is an error that names it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from edge_deployment.runtime.components import ModelComponentSettings
from edge_deployment.runtime.deployment import RolloutPolicy
from edge_deployment.runtime.stages import HealthBounds, Stage

ENVIRONMENT_VARIABLE = "EDGE_DEPLOYMENT_CONFIG"
_SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


_NAMES = (
    "model_package_group",
    "thing_group_name",
    "deployment_name",
    "model_component_name",
    "component_bucket",
    "model_bucket",
    "model_archive_prefix",
)


class ConfigurationError(RuntimeError):
    """The functions' settings are missing or invalid: a deployment problem that retrying cannot fix."""


@dataclass(frozen=True)
class EdgeDeploymentConfig:
    model_package_group: str  # the training app's group, whose approved packages this app deploys
    thing_group_name: str  # the devices the deployment targets
    deployment_name: str
    model_component_name: str
    component_bucket: str  # where component artifacts (model.zip) are written
    model_bucket: str  # the training app's bucket with the model archives
    model_archive_prefix: str  # the only key prefix model archives are read from
    max_archive_bytes: int
    class_names: tuple[str, ...]
    rollout: RolloutPolicy
    stages: tuple[Stage, ...]  # in promotion order (at least one)
    health: HealthBounds  # the health gate between stages
    metrics_namespace: str  # the device metrics (runtime/telemetry.py); their ThingGroup is thing_group_name
    disk_spooler_version: str | None = None  # aws.greengrass.DiskSpooler deployed beside the components (None: not)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: stages must hold at least one stage")
        if not self.metrics_namespace:
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: metrics_namespace must be a non-empty string")
        for name in _NAMES:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: {name} must be a non-empty string, got {value!r}")
        if isinstance(self.max_archive_bytes, bool) or not isinstance(self.max_archive_bytes, int):
            raise ConfigurationError(
                f"{ENVIRONMENT_VARIABLE}: max_archive_bytes must be an integer, got {self.max_archive_bytes!r}"
            )
        if self.max_archive_bytes <= 0:
            raise ConfigurationError(
                f"{ENVIRONMENT_VARIABLE}: max_archive_bytes must be positive, got {self.max_archive_bytes}"
            )
        if not self.class_names or not all(isinstance(name, str) and name for name in self.class_names):
            raise ConfigurationError(
                f"{ENVIRONMENT_VARIABLE}: class_names must be a non-empty list of names, got {list(self.class_names)!r}"
            )
        if self.disk_spooler_version is not None and not _SEMVER.match(str(self.disk_spooler_version)):
            raise ConfigurationError(
                f"{ENVIRONMENT_VARIABLE}: disk_spooler_version must be a version like 1.0.7 or null, "
                f"got {self.disk_spooler_version!r}"
            )
        if not self.model_archive_prefix.endswith("/"):
            raise ConfigurationError(
                f"{ENVIRONMENT_VARIABLE}: model_archive_prefix must be a key prefix ending in '/', "
                f"got {self.model_archive_prefix!r}"
            )

    def model_component(self, *, partition: str, region: str, account: str) -> ModelComponentSettings:
        """What the model component step needs, in the account and region the function runs in."""
        return ModelComponentSettings(
            component_name=self.model_component_name,
            bucket=self.component_bucket,
            model_bucket=self.model_bucket,
            model_archive_prefix=self.model_archive_prefix,
            max_archive_bytes=self.max_archive_bytes,
            class_names=list(self.class_names),
            partition=partition,
            region=region,
            account=account,
        )

    def to_json(self) -> str:
        document: dict[str, Any] = {field.name: getattr(self, field.name) for field in fields(self)}
        document["class_names"] = list(self.class_names)
        document["rollout"] = self.rollout.to_json()
        document["stages"] = [stage.to_json() for stage in self.stages]
        document["health"] = self.health.to_json()
        return json.dumps(document, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EdgeDeploymentConfig:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE} is not valid JSON: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE} must be a JSON object, got {type(raw).__name__}")
        names = [field.name for field in fields(cls)]
        missing = [name for name in names if name not in raw]
        unknown = sorted(set(raw) - set(names))
        if missing or unknown:
            problems = [f"missing {', '.join(missing)}"] if missing else []
            problems += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: {'; '.join(problems)}")
        if not isinstance(raw["class_names"], list):
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: class_names must be a list, got {raw['class_names']!r}")
        rollout = raw["rollout"]
        rollout_fields = [field.name for field in fields(RolloutPolicy)]
        if not isinstance(rollout, dict) or any(name not in rollout for name in rollout_fields):
            absent = [name for name in rollout_fields if not isinstance(rollout, dict) or name not in rollout]
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: rollout is missing {', '.join(absent)}")
        try:
            stages = tuple(Stage.from_json(stage) for stage in raw["stages"])
            health = HealthBounds.from_json(raw["health"])
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: stages or health: missing or invalid {error}") from None
        return cls(
            **{
                **raw,
                "class_names": tuple(raw["class_names"]),
                "rollout": RolloutPolicy.from_json(rollout),
                "stages": stages,
                "health": health,
            }
        )

    def stage(self, index: int) -> Stage:
        """The stage at `index` (0: the first); an index outside the stages is a defect of the state machine."""
        if not 0 <= index < len(self.stages):
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE}: no stage {index} (there are {len(self.stages)})")
        return self.stages[index]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> EdgeDeploymentConfig:
        text = environ.get(ENVIRONMENT_VARIABLE)
        if not text:
            raise ConfigurationError(f"environment variable {ENVIRONMENT_VARIABLE} is not set")
        return cls.from_json(text)
