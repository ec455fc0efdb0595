"""The project's one configuration file, its typed schema and its per-environment overrides.

`load_settings()` reads `config.yaml`, merges the overrides of the selected environment over the
shared values, and validates the result. Any wrong or missing value raises `ConfigError` with a
message that names the key (``training.epochs``) and what is expected, so synth fails early and
plainly instead of at deploy time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

APP_NAMES: tuple[str, ...] = ("labeling", "training", "edge_deployment")
"""The three apps in chain order: each one's workflow success starts the next one's asset pipeline."""

AppName = Literal["labeling", "training", "edge_deployment"]

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "config.yaml"

_ACCOUNT = r"^\d{12}$"
_REGION = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$"
_CONNECTION_ARN = r"^arn:aws[a-z-]*:(codestar-connections|codeconnections):[a-z0-9-]+:\d{12}:connection/[0-9a-f-]{36}$"
_WORK_TEAM_ARN = r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:workteam/private-crowd/[a-zA-Z0-9-]{1,63}$"
_S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
_EMAIL = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
# Greengrass component names: reverse-DNS style, and not in the reserved aws.* namespace.
_COMPONENT_NAME = r"^(?!aws\.)[A-Za-z0-9][A-Za-z0-9._-]{2,127}$"
_MQTT_TOPIC = r"^(?!\$aws/)[^#+\s]+$"  # concrete topic (no wildcards); `{thing}` is filled in on the device
_EVENTBRIDGE_CRON = r"^cron\(\S+ \S+ \S+ \S+ \S+ \S+\)$|^rate\(\d+ (minute|minutes|hour|hours|day|days)\)$"


class ConfigError(ValueError):
    """A configuration value is missing or wrong. The message names the key and what is expected."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo such as `epoch:` must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")


# --------------------------------------------------------------------------------------------------
# Shared settings
# --------------------------------------------------------------------------------------------------


class ProjectSettings(_Section):
    prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{1,18}[a-z0-9]$")] = Field(
        description="Starts every resource name: 3-20 lowercase letters, digits or hyphens."
    )
    class_names: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = Field(
        min_length=1,
        description="Detection classes in class-id order. Labeling, training and the device share them.",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags applied to every stack.")

    @field_validator("class_names")
    @classmethod
    def _unique_classes(cls, value: list[str]) -> list[str]:
        duplicates = sorted({name for name in value if value.count(name) > 1})
        if duplicates:
            raise ValueError(f"class names must be unique; repeated: {', '.join(duplicates)}")
        return value


class SourceSettings(_Section):
    provider: Literal["codestar_connection", "codecommit"] = Field(
        description="Where the asset pipelines get the code: a CodeStar/CodeConnections connection "
        "(GitHub, GitLab, Bitbucket) or an existing CodeCommit repository."
    )
    repository: str = Field(
        min_length=1, description="`owner/name` for a connection; the repository name for CodeCommit."
    )
    branch: str = Field(default="main", min_length=1)
    connection_arn: Annotated[str, Field(pattern=_CONNECTION_ARN)] | None = None

    @model_validator(mode="after")
    def _provider_fields(self) -> SourceSettings:
        if self.provider == "codestar_connection":
            if self.connection_arn is None:
                raise ValueError(
                    "connection_arn is required when provider is codestar_connection "
                    "(arn:aws:codeconnections:REGION:ACCOUNT:connection/ID)"
                )
            if not re.fullmatch(r"[\w.-]+/[\w.-]+", self.repository):
                raise ValueError("repository must be `owner/name` when provider is codestar_connection")
        elif not re.fullmatch(r"[\w.-]{1,100}", self.repository):
            raise ValueError("repository must be a CodeCommit repository name when provider is codecommit")
        return self


class NotificationSettings(_Section):
    email: Annotated[str, Field(pattern=_EMAIL)] | None = Field(
        default=None, description="Subscribed to every app's notification topic when set."
    )


class RetrainingSettings(_Section):
    schedule: Annotated[str, Field(pattern=_EVENTBRIDGE_CRON)] | None = Field(
        default="cron(0 3 ? * MON *)",
        description="EventBridge schedule expression that starts the chain; null turns it off.",
    )


class ToolchainSettings(_Section):
    build_compute: Literal["SMALL", "MEDIUM", "LARGE", "X2_LARGE"] = Field(
        default="LARGE", description="CodeBuild compute type of the synth step (runs the app's tests)."
    )
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653] = Field(
        default=90, description="Retention of the pipelines' CodeBuild and Lambda logs (a CloudWatch Logs value)."
    )


# --------------------------------------------------------------------------------------------------
# Per-app settings
# --------------------------------------------------------------------------------------------------


class WorkforceSettings(_Section):
    type: Literal["private", "public"] = Field(
        default="private",
        description="Factory images are often confidential: the public crowd is used only when set here.",
    )
    work_team_arn: Annotated[str, Field(pattern=_WORK_TEAM_ARN)] | None = None
    public_task_price_usd: float | None = Field(
        default=None, gt=0, description="Reward per task for the public crowd (Mechanical Turk)."
    )

    @model_validator(mode="after")
    def _workforce_fields(self) -> WorkforceSettings:
        if self.type == "private" and self.work_team_arn is None:
            raise ValueError("work_team_arn is required for a private workforce")
        if self.type == "public" and self.public_task_price_usd is None:
            raise ValueError("public_task_price_usd is required for the public workforce")
        return self


class LabelingSettings(_Section):
    workforce: WorkforceSettings
    max_images_per_job: int = Field(default=500, ge=1, le=100_000)
    task_time_limit_seconds: int = Field(default=600, ge=30, le=28_800)
    task_availability_lifetime_seconds: int = Field(default=864_000, ge=60, le=2_592_000)
    workers_per_image: int = Field(default=1, ge=1, le=9)
    seed_labels_file: str | None = Field(
        default=None,
        description="CSV or JSON-lines file (path relative to the repository) imported at deploy time.",
    )


class TrainingSettings(_Section):
    model_size: Literal["n", "s", "m", "l", "x"] = "n"
    epochs: int = Field(default=50, ge=1, le=1000)
    image_size: int = Field(default=640, ge=32, le=2048, multiple_of=32)
    batch_size: int = Field(default=16, ge=1, le=512)
    training_instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.g4dn.xlarge"
    processing_instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.xlarge"
    use_spot: bool = True
    max_runtime_seconds: int = Field(default=86_400, ge=600, le=2_419_200)
    pretrained_weights_s3_uri: Annotated[str, Field(pattern=_S3_URI)] | None = None
    min_images: int = Field(default=50, ge=1)
    map50_95_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    regression_margin: float = Field(default=0.02, ge=0.0, le=1.0)
    confidence_threshold: float = Field(default=0.25, gt=0.0, lt=1.0)
    iou_threshold: float = Field(default=0.45, gt=0.0, lt=1.0)
    approval_status: Literal["PendingManualApproval", "Approved"] = "PendingManualApproval"
    onnx_opset: int = Field(default=17, ge=11, le=21)


class RolloutSettings(_Section):
    base_rate_per_minute: int = Field(default=5, ge=1, le=1000)
    increment_factor: float = Field(default=2.0, ge=1.1, le=5.0)
    notified_things_per_step: int = Field(default=10, ge=1)
    abort_failure_percentage: float = Field(default=10.0, gt=0.0, le=100.0)
    abort_min_executed_things: int = Field(default=3, ge=1)
    job_timeout_minutes: int = Field(default=60, ge=1, le=10_080)


class EdgeDeploymentSettings(_Section):
    thing_group_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9:_-]{1,128}$")]
    inference_component_name: Annotated[str, Field(pattern=_COMPONENT_NAME)]
    model_component_name: Annotated[str, Field(pattern=_COMPONENT_NAME)]
    results_topic: Annotated[str, Field(pattern=_MQTT_TOPIC)] = "inspection/{thing}/results"
    heartbeat_topic: Annotated[str, Field(pattern=_MQTT_TOPIC)] = "inspection/{thing}/heartbeat"
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    max_model_archive_mb: int = Field(default=200, ge=1, le=2048)
    uncertainty_band: tuple[float, float] = (0.3, 0.7)
    confident_sample_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    offline_queue_mb: int = Field(default=512, ge=1)
    frame_interval_seconds: float = Field(default=1.0, gt=0.0)
    simulated_device: bool = Field(default=False, description="Adds an EC2 instance that runs Greengrass.")

    @field_validator("uncertainty_band")
    @classmethod
    def _band_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return value


# --------------------------------------------------------------------------------------------------
# Root
# --------------------------------------------------------------------------------------------------


class EnvironmentSettings(_Section):
    account: Annotated[str, Field(pattern=_ACCOUNT)]
    region: Annotated[str, Field(pattern=_REGION)]


class Settings(_Section):
    project: ProjectSettings
    source: SourceSettings
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    retraining: RetrainingSettings = Field(default_factory=RetrainingSettings)
    toolchain: ToolchainSettings = Field(default_factory=ToolchainSettings)
    labeling: LabelingSettings
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    edge_deployment: EdgeDeploymentSettings
    environment_name: str | None = Field(
        default=None, description="Set by the loader: the environment whose overrides were applied."
    )
    environment: EnvironmentSettings | None = Field(
        default=None, description="Set by the loader: account and region of the selected environment."
    )


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid configuration value(s):"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "missing":
            message = "required key is missing"
        elif item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against the configuration reference)"
        elif item["type"] == "string_pattern_mismatch":
            message = f"does not match the expected format {item['ctx']['pattern']}"
        received = "" if item["type"] in ("missing",) else f" (got {item.get('input')!r})"
        lines.append(f"  - {key}: {message}{received}")
    return "\n".join(lines)


def parse_settings(raw: Mapping[str, Any], *, environment: str | None = None, source: str = "config") -> Settings:
    """Validate a configuration mapping, after applying the overrides of `environment` if given."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: the configuration must be a mapping of sections, got {type(raw).__name__}")
    document = dict(raw)
    environments = document.pop("environments", None) or {}
    if not isinstance(environments, Mapping):
        raise ConfigError(f"{source}: environments: must be a mapping of environment names to settings")
    selected: dict[str, Any] = {}
    if environment is not None:
        if environment not in environments:
            known = ", ".join(sorted(environments)) or "none defined"
            raise ConfigError(f"{source}: environments.{environment}: no such environment (known: {known})")
        entry = environments[environment]
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: environments.{environment}: must be a mapping with account and region")
        entry = dict(entry)
        overrides = entry.pop("overrides", None) or {}
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"{source}: environments.{environment}.overrides: must be a mapping of sections")
        forbidden = {"environments", "environment", "environment_name"} & set(overrides)
        if forbidden:
            raise ConfigError(
                f"{source}: environments.{environment}.overrides.{sorted(forbidden)[0]}: cannot be overridden"
            )
        document = _deep_merge(document, overrides)
        selected = {"environment_name": environment, "environment": entry}
    try:
        return Settings.model_validate({**document, **selected})
    except ValidationError as error:
        if environment is not None:
            source = f"{source} (environment {environment})"
        raise ConfigError(_format_errors(error, source)) from None


def load_settings(path: str | Path = DEFAULT_CONFIG_FILE, *, environment: str | None = None) -> Settings:
    """Read and validate the YAML configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    return parse_settings(raw or {}, environment=environment, source=str(path))
