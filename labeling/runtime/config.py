"""What the Lambda functions know of the deployment: one JSON document in the LABELING_CONFIG variable.

The CDK app writes it from the validated `config.yaml` (see `labeling/workflow.py`), so the functions
never read the configuration file and never guess a name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from labeling.runtime.errors import ConfigurationError

ENVIRONMENT_VARIABLE = "LABELING_CONFIG"
REVIEW_MODES = ("verification", "adjustment")
BACKENDS = ("ground_truth", "label_studio")


@dataclass(frozen=True)
class Workforce:
    """Who works on a Ground Truth job: a private work team (default) or, when configured, the public crowd.

    For the public crowd the team's own declarations about its images (labeling.workforce.public_content)
    travel with it; nothing is declared on the team's behalf.
    """

    type: str = "private"
    work_team_arn: str | None = None
    price_usd: float | None = None
    free_of_personal_data: bool | None = None
    free_of_adult_content: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "private" and not self.work_team_arn:
            raise ConfigurationError("a private workforce needs work_team_arn")
        if self.type == "public" and not self.price_usd:
            raise ConfigurationError("the public workforce needs a task price")
        if self.type == "public" and (self.free_of_personal_data is None or self.free_of_adult_content is None):
            raise ConfigurationError(
                "the public workforce needs the team's declarations free_of_personal_data and free_of_adult_content"
            )
        if self.type == "public" and not self.free_of_personal_data:
            raise ConfigurationError("images with personal data must not go to the public crowd")
        if self.type not in ("private", "public"):
            raise ConfigurationError(f"workforce type must be private or public, got {self.type!r}")


@dataclass(frozen=True)
class LabelingConfig:
    project_prefix: str
    data_bucket: str
    feature_group: str
    class_names: tuple[str, ...]
    raw_prefix: str
    jobs_prefix: str
    workforce: Workforce | None
    review_workforce: Workforce | None
    backend: str = "ground_truth"
    ground_truth_role_arn: str = ""  # empty where no labeling job is created (the seeding function)
    output_kms_key: str = ""  # Ground Truth encrypts its outputs with this key (the data key's alias ARN)
    review_mode: str = "verification"
    max_images_per_job: int = 500
    task_time_limit_seconds: int = 600
    task_availability_lifetime_seconds: int = 259_200
    workers_per_image: int = 1
    max_concurrent_tasks: int = 1000
    pre_labels: bool = False
    model_package_group: str = ""  # the training app's group: its newest approved package gives the pre-labels
    label_studio_url: str = ""  # e.g. https://labels.example.com (no trailing slash)
    label_studio_token_secret: str = ""  # Secrets Manager secret (name or ARN) with the API token
    label_studio_presign_ttl_minutes: int = 5

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigurationError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend == "label_studio" and not (self.label_studio_url and self.label_studio_token_secret):
            raise ConfigurationError("the label_studio backend needs label_studio_url and label_studio_token_secret")
        if self.review_mode not in REVIEW_MODES:
            raise ConfigurationError(f"review_mode must be one of {REVIEW_MODES}, got {self.review_mode!r}")
        if not self.class_names:
            raise ConfigurationError("class_names must not be empty")
        for prefix_name in ("raw_prefix", "jobs_prefix"):
            value = getattr(self, prefix_name)
            if not value.endswith("/") or value.startswith("/"):
                raise ConfigurationError(f"{prefix_name} must be a key prefix ending in '/', got {value!r}")

    def to_json(self) -> str:
        document = asdict(self)
        document["class_names"] = list(self.class_names)
        return json.dumps(document, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LabelingConfig:
        try:
            raw: dict[str, Any] = json.loads(text)
            raw["class_names"] = tuple(raw["class_names"])
            for key in ("workforce", "review_workforce"):
                raw[key] = Workforce(**raw[key]) if raw.get(key) is not None else None
            return cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ConfigurationError(f"{ENVIRONMENT_VARIABLE} is not a valid labeling configuration: {error}") from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> LabelingConfig:
        text = environ.get(ENVIRONMENT_VARIABLE)
        if not text:
            raise ConfigurationError(f"environment variable {ENVIRONMENT_VARIABLE} is not set")
        return cls.from_json(text)
