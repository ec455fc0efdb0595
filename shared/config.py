"""The project's one configuration file, its typed schema and its per-environment overrides.

`load_settings()` reads `config.yaml`, merges the overrides of the selected environment over the
shared values, and validates the result. Any wrong or missing value raises `ConfigError` with a
message that names the key (``training.epochs``) and what is expected, so synth fails early and
plainly instead of at deploy time.
"""

from __future__ import annotations

import copy
import ipaddress
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

from shared.contracts import INT8_MIN_ONNX_OPSET

APP_NAMES: tuple[str, ...] = ("labeling", "training", "edge_deployment")
"""The three apps in chain order: each one's workflow success starts the next one's asset pipeline."""

AppName = Literal["labeling", "training", "edge_deployment"]
ModelSize = Literal["n", "s", "m", "l", "x"]

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
_IMAGE_URI = (
    r"^(\{dlc_registry\}|\d{12}\.dkr\.ecr\.(\{region\}|[a-z0-9-]+)\.amazonaws\.com(\.cn)?)/[a-z0-9._/-]+:[\w.-]+$"
)
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


class SlackChannelSettings(_Section):
    """A Slack channel that AWS Chatbot (Amazon Q Developer in chat applications) posts the notifications to.

    The Slack workspace must have been authorized once in the AWS Chatbot console of the account.
    """

    workspace_id: Annotated[str, Field(pattern=r"^[0-9A-Z]{1,255}$")] = Field(
        description="The Slack workspace (team) id shown in the AWS Chatbot console, e.g. T0123ABCD."
    )
    channel_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{1,255}$")] = Field(
        description="The Slack channel id (channel details in Slack), e.g. C0123ABCD; invite @aws to a private one."
    )


class NotificationSettings(_Section):
    email: list[Annotated[str, Field(pattern=_EMAIL)]] | None = Field(
        default=None, description="One address or a list, subscribed to every app's notification topic."
    )
    slack: SlackChannelSettings | None = Field(
        default=None, description="A Slack channel that receives every app's notifications (through AWS Chatbot)."
    )
    opt_out_reason: Annotated[str, Field(min_length=10, max_length=500)] | None = Field(
        default=None,
        description="Deploy without any notification target, on purpose, and say why (e.g. who subscribes "
        "to the topics instead). Without a target or this, a real deployment is refused.",
    )

    @field_validator("email", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def email_addresses(self) -> list[str]:
        return list(self.email or [])

    @property
    def has_target(self) -> bool:
        return bool(self.email_addresses) or self.slack is not None

    @model_validator(mode="after")
    def _target_or_opt_out(self) -> NotificationSettings:
        if self.opt_out_reason is not None and self.has_target:
            raise ValueError("opt_out_reason is for deploying without a target; remove it, or remove email and slack")
        if self.email is not None and len(set(self.email)) != len(self.email):
            raise ValueError("email: each address once")
        return self


class RetrainingSettings(_Section):
    schedule: Annotated[str, Field(pattern=_EVENTBRIDGE_CRON)] | None = Field(
        default="cron(0 3 ? * MON *)",
        description="EventBridge schedule expression that starts the chain; null turns it off.",
    )

    @field_validator("schedule")
    @classmethod
    def _eventbridge_rules(cls, value: str | None) -> str | None:
        """What EventBridge rejects at deploy time although the expression has the right shape."""
        if value is None:
            return value
        if value.startswith("cron("):
            fields = value[len("cron(") : -1].split()
            day_of_month, day_of_week = fields[2], fields[4]
            if (day_of_month == "?") == (day_of_week == "?"):
                raise ValueError(
                    "exactly one of day-of-month (3rd field) and day-of-week (5th field) must be '?', "
                    "e.g. cron(0 3 ? * MON *) or cron(0 3 1 * ? *)"
                )
        else:
            amount, unit = value[len("rate(") : -1].split()
            if int(amount) == 0:
                raise ValueError("a rate must be at least 1, e.g. rate(7 days)")
            if (int(amount) == 1) != (not unit.endswith("s")):
                raise ValueError(
                    "a rate of 1 takes a singular unit (rate(1 day)), any other a plural one (rate(7 days))"
                )
        return value


class ToolchainSettings(_Section):
    build_compute: Literal["SMALL", "MEDIUM", "LARGE", "X2_LARGE"] = Field(
        default="LARGE", description="CodeBuild compute type of the synth step (runs the app's tests)."
    )
    log_retention_days: Literal[1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1827, 3653] = Field(
        default=90,
        description="Retention of every log group the apps create (CodeBuild, Lambda, state machines; KMS-encrypted) "
        "and of SageMaker's own job log groups (/aws/sagemaker/*Jobs). A CloudWatch Logs value.",
    )


# --------------------------------------------------------------------------------------------------
# Per-app settings
# --------------------------------------------------------------------------------------------------


# Mechanical Turk rewards Ground Truth accepts for bounding-box tasks, in US dollars (from the SageMaker API
# reference of PublicWorkforceTaskPrice). The review task uses the same price; its own list contains these.
PUBLIC_BOUNDING_BOX_PRICES_USD: tuple[float, ...] = (
    0.036, 0.048, 0.060, 0.072, 0.120, 0.240, 0.360, 0.480, 0.600, 0.720, 0.840, 0.960, 1.080, 1.200,
)  # fmt: skip
PUBLIC_MAX_TASK_AVAILABILITY_SECONDS = 43_200
"""Tasks offered to the public crowd stay available at most 12 hours."""
WORKFLOW_ACTION_LIMIT_SECONDS = 7 * 86_400
"""CodePipeline's Step Functions invoke action (the workflow pipeline) gives up after 7 days."""
ROUND_OVERHEAD_SECONDS = 6 * 3_600
"""Listing, checking and writing around a round's two Ground Truth jobs, with room to spare."""
MAX_TASK_AVAILABILITY_SECONDS = (WORKFLOW_ACTION_LIMIT_SECONDS - ROUND_OVERHEAD_SECONDS) // 2
TRAINING_RUN_OVERHEAD_SECONDS = 3 * 4 * 3_600 + 6 * 3_600
"""Around the training job's wait: three processing steps of at most 4 hours each, and room to spare."""
MAX_TRAINING_RUNTIME_SECONDS = (WORKFLOW_ACTION_LIMIT_SECONDS - TRAINING_RUN_OVERHEAD_SECONDS) // 2
"""A spot training job may wait twice its runtime; the whole run must end within the workflow action's 7 days."""
ROLLOUT_OVERHEAD_MINUTES = 60
"""Resolving the package and creating the components before the rollout wait, with room to spare."""
MAX_ROLLOUT_WAIT_MINUTES = WORKFLOW_ACTION_LIMIT_SECONDS // 60 - ROLLOUT_OVERHEAD_MINUTES


class PublicContentDeclarations(_Section):
    """What the team declares about its images before the public crowd (Mechanical Turk) sees them.

    Ground Truth passes these to Mechanical Turk as the job's content classifiers. Each must be answered,
    true or false, by someone who knows the images: nothing is declared by default.
    """

    free_of_personal_data: bool = Field(
        description="The images show no personally identifiable information (no faces, names, badges, "
        "screens). Must be true: images with personal data are never sent to the public crowd."
    )
    free_of_adult_content: bool = Field(
        description="The images contain no adult content. false is allowed: Mechanical Turk then warns its workers."
    )


class WorkforceSettings(_Section):
    type: Literal["private", "public"] = Field(
        default="private",
        description="Factory images are often confidential: the public crowd is used only when set here.",
    )
    work_team_arn: Annotated[str, Field(pattern=_WORK_TEAM_ARN)] | None = Field(
        default=None, description="The private work team (SageMaker Ground Truth) that does the tasks."
    )
    public_task_price_usd: float | None = Field(
        default=None, gt=0, description="Reward per task for the public crowd (Mechanical Turk)."
    )
    public_content: PublicContentDeclarations | None = Field(
        default=None,
        description="Required with the public workforce: what the team declares about its images (see its keys).",
    )

    @model_validator(mode="after")
    def _workforce_fields(self) -> WorkforceSettings:
        problems = []
        if self.type == "private":
            if self.work_team_arn is None:
                problems.append("work_team_arn is required for a private workforce")
            if self.public_task_price_usd is not None:
                problems.append("public_task_price_usd applies to the public workforce only")
            if self.public_content is not None:
                problems.append("public_content applies to the public workforce only")
        else:
            if self.public_task_price_usd is None:
                problems.append("public_task_price_usd is required for the public workforce")
            elif not any(abs(self.public_task_price_usd - price) < 1e-9 for price in PUBLIC_BOUNDING_BOX_PRICES_USD):
                allowed = ", ".join(f"{price:.3f}" for price in PUBLIC_BOUNDING_BOX_PRICES_USD)
                problems.append(f"public_task_price_usd must be one of the prices Ground Truth accepts: {allowed}")
            if self.work_team_arn is not None:
                problems.append("work_team_arn applies to a private workforce only; remove it for the public crowd")
            if self.public_content is None:
                problems.append(
                    "public_content is required for the public workforce: declare free_of_personal_data and "
                    "free_of_adult_content (true or false) for your images; nothing is declared for you"
                )
            elif not self.public_content.free_of_personal_data:
                problems.append(
                    "public_content.free_of_personal_data is false: images with personal data must not go to the "
                    "public crowd; use a private work team"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self


LABEL_STUDIO_IMAGE = (
    "heartexlabs/label-studio:1.23.0@sha256:aa461572e8f9d86a1bf9520c1db620204e86160fd2f80dd7e9d40ac84a8828ea"
)
"""The official Label Studio 1.23.0 image (Docker Hub), pinned by the digest of its multi-architecture index.

Update: `docker buildx imagetools inspect heartexlabs/label-studio:<version>` prints the index digest (`Digest:`).
"""
# repository[:tag]@sha256:<digest>: a tag alone can be moved to another image, a digest cannot.
_PINNED_IMAGE = (
    r"^(?P<repository>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\.[a-z0-9-]+)*(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$"
)
_ECR_IMAGE = (
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(\.cn)?/(?P<name>[^@]+)"
    r"@sha256:[0-9a-f]{64}$"
)
_SECRETS_MANAGER_ID = r"^[A-Za-z0-9/_+=.@:-]{1,2048}$"  # a Secrets Manager secret name or ARN
_HTTPS_URL = r"^https://[A-Za-z0-9.-]+(:\d+)?(/[^\s]*)?$"
_DOMAIN_NAME = r"^(?=.{4,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
_IPV4_CIDR = r"^((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)/(3[0-2]|[12]?\d)$"
# Fargate's CPU units and the memory (MiB) each allows.
FARGATE_MEMORY_MIB: dict[int, range] = {
    512: range(1024, 4097, 1024),
    1024: range(2048, 8193, 1024),
    2048: range(4096, 16385, 1024),
    4096: range(8192, 30721, 1024),
}
LABEL_STUDIO_MIN_MEMORY_MIB = 2048
"""Below this, Label Studio (Django, the data manager, exports) runs out of memory on real projects."""
_COGNITO_RESERVED = ("aws", "amazon", "cognito")
COGNITO_SCOPES = ("openid", "email", "profile")
"""The OAuth scopes the stack's Cognito app client allows (the load balancer asks for `sign_in.scope`)."""
_OIDC_KEYS = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "user_info_endpoint",
    "client_id",
    "client_secret_secret",
)


class LabelStudioSignInSettings(_Section):
    """Who may open the deployed Label Studio: the load balancer signs every browser in before Label Studio sees it.

    `cognito`: a user pool the stack creates (MFA required, no self sign-up; administrators add the labelers).
    `oidc`: the organisation's own identity provider (Entra ID, Okta, Google, Keycloak, ...) as an OpenID Connect app.
    """

    provider: Literal["cognito", "oidc"] = Field(
        default="cognito", description="cognito (a user pool created by the stack) or oidc (your identity provider)."
    )
    cognito_domain_prefix: Annotated[str, Field(pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")] | None = Field(
        default=None,
        description="Prefix of the Cognito sign-in domain (<prefix>.auth.<region>.amazoncognito.com), unique in the "
        "region; default <project prefix>-labeling-<account>.",
    )
    issuer: Annotated[str, Field(pattern=_HTTPS_URL)] | None = Field(default=None, description="OIDC issuer URL.")
    authorization_endpoint: Annotated[str, Field(pattern=_HTTPS_URL)] | None = None
    token_endpoint: Annotated[str, Field(pattern=_HTTPS_URL)] | None = None
    user_info_endpoint: Annotated[str, Field(pattern=_HTTPS_URL)] | None = None
    client_id: Annotated[str, Field(pattern=r"^[^\s]{1,256}$")] | None = Field(
        default=None, description="The OIDC app's client id."
    )
    client_secret_secret: Annotated[str, Field(pattern=_SECRETS_MANAGER_ID)] | None = Field(
        default=None,
        description="Secrets Manager secret (name or ARN) whose value is the OIDC app's client secret; CloudFormation "
        "resolves it at deploy time, it never enters the template.",
    )
    scope: Annotated[str, Field(pattern=r"^openid( [A-Za-z0-9_:./-]+)*$")] = Field(
        default="openid email", description="OIDC scopes the load balancer asks for (openid first)."
    )
    session_timeout_hours: int = Field(
        default=12, ge=1, le=168, description="How long a sign-in lasts before the identity provider is asked again."
    )

    @field_validator("cognito_domain_prefix")
    @classmethod
    def _cognito_domain(cls, value: str | None) -> str | None:
        if value is not None and any(word in value for word in _COGNITO_RESERVED):
            raise ValueError("a Cognito domain prefix may not contain aws, amazon or cognito")
        return value

    @model_validator(mode="after")
    def _provider_keys(self) -> LabelStudioSignInSettings:
        given = [key for key in _OIDC_KEYS if getattr(self, key) is not None]
        if self.provider == "oidc":
            missing = [key for key in _OIDC_KEYS if getattr(self, key) is None]
            if missing:
                raise ValueError(f"provider oidc needs {', '.join(missing)}")
            if self.cognito_domain_prefix is not None:
                raise ValueError("cognito_domain_prefix applies to provider cognito only")
        else:
            if given:
                raise ValueError(f"{', '.join(given)} apply to provider oidc only")
            unknown = sorted(set(self.scope.split()) - set(COGNITO_SCOPES))
            if unknown:
                raise ValueError(
                    f"scope {' '.join(unknown)} is not one the Cognito client offers ({' '.join(COGNITO_SCOPES)})"
                )
        return self


class LabelStudioDatabaseSettings(_Section):
    """The server's PostgreSQL database (Amazon RDS): projects, tasks and every annotation labelers made."""

    engine_version: Annotated[str, Field(pattern=r"^(1[6-9])\.\d{1,2}$")] = Field(
        default="17.9",
        description="PostgreSQL major.minor at creation (16 or newer); RDS applies newer minor versions by itself.",
    )
    instance_class: Annotated[str, Field(pattern=r"^(?!db\.)[a-z][a-z0-9-]*\.[a-z0-9]+$")] = Field(
        default="t4g.micro", description="RDS instance class without the db. prefix (t4g.micro, t4g.small, m7g.large)."
    )
    allocated_storage_gib: int = Field(default=20, ge=20, le=6144, description="Initial gp3 storage.")
    max_allocated_storage_gib: int = Field(
        default=100, ge=20, le=65_536, description="Storage autoscaling grows the volume up to this size."
    )
    multi_az: bool = Field(default=False, description="A standby in a second availability zone (doubles the cost).")
    backup_retention_days: int = Field(
        default=7, ge=1, le=35, description="Automated backups (point-in-time restore) are kept this many days."
    )
    deletion_protection: bool = Field(
        default=True, description="RDS refuses to delete the database (stack deletion too) while this is on."
    )
    restore_from_snapshot: (
        Annotated[str, Field(pattern=r"^(arn:aws[a-z-]*:rds:[a-z0-9-]+:\d{12}:snapshot:)?[a-zA-Z][a-zA-Z0-9-]{0,254}$")]
        | None
    ) = Field(
        default=None,
        description="Snapshot (identifier or ARN) to create the database from; changing it replaces the database.",
    )

    @model_validator(mode="after")
    def _storage(self) -> LabelStudioDatabaseSettings:
        if self.max_allocated_storage_gib < self.allocated_storage_gib:
            raise ValueError("max_allocated_storage_gib must be at least allocated_storage_gib")
        return self


class LabelStudioServerSettings(_Section):
    """Label Studio deployed by the labeling app (ECS Fargate, PostgreSQL, HTTPS load balancer, sign-in).

    Used when `labeling.label_studio.url` is not set. See labeling/README.md, "Label Studio on AWS".
    """

    domain_name: Annotated[str, Field(pattern=_DOMAIN_NAME)] = Field(
        description="The HTTPS name labelers open (e.g. labels.example.com); "
        "a DNS record points it at the load balancer."
    )
    certificate_arn: Annotated[
        str, Field(pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[0-9a-f-]{36}$")
    ] = Field(description="ACM certificate for domain_name, in the deployment region.")
    hosted_zone_id: Annotated[str, Field(pattern=r"^Z[A-Z0-9]{1,31}$")] | None = Field(
        default=None, description="Route 53 public hosted zone to create domain_name's alias record in (optional)."
    )
    hosted_zone_name: Annotated[str, Field(pattern=_DOMAIN_NAME)] | None = Field(
        default=None, description="That zone's name (e.g. example.com); with hosted_zone_id."
    )
    image: Annotated[str, Field(pattern=_PINNED_IMAGE)] = Field(
        default=LABEL_STUDIO_IMAGE,
        description="Container image, pinned by digest: repository[:tag]@sha256:<digest>. The tag is informational.",
    )
    image_pull_secret: Annotated[str, Field(pattern=_SECRETS_MANAGER_ID)] | None = Field(
        default=None,
        description='Secrets Manager secret (name or ARN) with registry credentials ({"username", "password"}) '
        "for authenticated pulls from Docker Hub or another registry; anonymous pulls otherwise (ECR: IAM).",
    )
    cpu: Literal[512, 1024, 2048, 4096] = Field(default=1024, description="Fargate CPU units of the server task.")
    memory_mib: int = Field(default=4096, description="Fargate memory of the server task (a value its cpu allows).")
    allowed_cidrs: list[Annotated[str, Field(pattern=_IPV4_CIDR)]] = Field(
        default_factory=lambda: ["0.0.0.0/0"],
        min_length=1,
        max_length=50,
        description="IPv4 ranges that may reach the load balancer (everyone still signs in).",
    )
    presigned_url_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description="Lifetime of the pre-signed S3 URLs through which browsers load the images (Label Studio's "
        "S3 storage presign_ttl).",
    )
    sign_in: LabelStudioSignInSettings = Field(default_factory=LabelStudioSignInSettings)
    database: LabelStudioDatabaseSettings = Field(default_factory=LabelStudioDatabaseSettings)

    @field_validator("allowed_cidrs")
    @classmethod
    def _network_addresses(cls, value: list[str]) -> list[str]:
        for cidr in value:
            network = ipaddress.ip_network(cidr, strict=False)
            if str(network) != cidr:
                raise ValueError(f"{cidr} has host bits set; the network is {network}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LabelStudioServerSettings:
        if self.memory_mib not in FARGATE_MEMORY_MIB[self.cpu]:
            allowed = FARGATE_MEMORY_MIB[self.cpu]
            raise ValueError(
                f"memory_mib {self.memory_mib} is not a Fargate size for cpu {self.cpu}: "
                f"{allowed.start}-{allowed.stop - 1} in steps of {allowed.step}"
            )
        if self.memory_mib < LABEL_STUDIO_MIN_MEMORY_MIB:
            raise ValueError(f"memory_mib must be at least {LABEL_STUDIO_MIN_MEMORY_MIB}: Label Studio needs 2 GiB")
        if (self.hosted_zone_id is None) != (self.hosted_zone_name is None):
            raise ValueError("hosted_zone_id and hosted_zone_name go together (or leave both out)")
        if self.hosted_zone_name is not None and not (
            self.domain_name == self.hosted_zone_name or self.domain_name.endswith("." + self.hosted_zone_name)
        ):
            raise ValueError(f"domain_name {self.domain_name} is not in hosted zone {self.hosted_zone_name}")
        if self.image_pull_secret is not None and self.ecr_repository is not None:
            raise ValueError("image_pull_secret applies to registries other than ECR (ECR images are pulled with IAM)")
        return self

    @property
    def image_reference(self) -> str:
        """What the task definition pulls: repository@digest (the tag, if any, is dropped: the digest decides)."""
        match = re.fullmatch(_PINNED_IMAGE, self.image)
        if match is None:  # the field's pattern already guarantees it
            raise ValueError(f"not a digest-pinned image: {self.image}")
        return f"{match['repository']}@{match['digest']}"

    @property
    def image_tag(self) -> str | None:
        match = re.fullmatch(_PINNED_IMAGE, self.image)
        return match["tag"] if match else None

    @property
    def ecr_repository(self) -> tuple[str, str, str] | None:
        """(account, region, repository name) when the image is in an ECR private registry, else None."""
        match = re.fullmatch(_ECR_IMAGE, self.image_reference)
        return (match["account"], match["region"], match["name"]) if match else None


class LabelStudioSettings(_Section):
    """Where the Label Studio backend runs: a server the team already has (`url`), or one the app deploys (`server`)."""

    url: Annotated[str, Field(pattern=r"^https?://[^\s/$.?#][^\s]*$")] | None = Field(
        default=None, description="An existing Label Studio server; the labeling app then deploys none."
    )
    api_token_secret: Annotated[str, Field(pattern=r"^[A-Za-z0-9/_+=.@:-]{1,2048}$")] | None = Field(
        default=None,
        description="Secrets Manager secret (name or ARN) holding the API token of the existing server (with url).",
    )
    server: LabelStudioServerSettings | None = Field(
        default=None, description="The server the labeling app deploys when url is not set."
    )
    poll_interval_seconds: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="How long the round's Wait states wait between two looks at the labeling and review progress.",
    )
    presign_ttl_minutes: int = Field(
        default=5,
        ge=1,
        le=60,
        description="Lifetime of the presigned URLs through which labelers' browsers load the images from the "
        "data bucket (the project's S3 storage; no copy of the images is made).",
    )

    @model_validator(mode="after")
    def _one_server(self) -> LabelStudioSettings:
        if (self.url is None) == (self.server is None):
            raise ValueError("set either url (with api_token_secret) for an existing server, or server to deploy one")
        if self.url is not None and self.api_token_secret is None:
            raise ValueError("api_token_secret is required with url: the secret that holds the server's API token")
        if self.url is None and self.api_token_secret is not None:
            raise ValueError("api_token_secret applies to an existing server (url); the deployed server makes its own")
        return self


class LabelingSettings(_Section):
    backend: Literal["ground_truth", "label_studio"] = Field(
        default="ground_truth",
        description="Who runs the labeling tasks: SageMaker Ground Truth (accounts that already use it; closed to "
        "new customers) or Label Studio (an existing server, or one the labeling app deploys).",
    )
    label_studio: LabelStudioSettings | None = Field(
        default=None, description="The Label Studio server; required when backend is label_studio."
    )
    workforce: WorkforceSettings | None = Field(
        default=None,
        description="Who draws the boxes (Ground Truth work team); required with backend ground_truth. Label Studio "
        "labelers are the server's users; an environment that switches backend may leave it set (unused).",
    )
    review_workforce: WorkforceSettings | None = Field(
        default=None, description="Who verifies (or adjusts) the boxes; the labeling workforce when not set."
    )
    review: Literal["verification", "adjustment"] = Field(
        default="verification",
        description="verification: reviewers approve or reject each image's boxes (rejected images are labeled "
        "again next round); adjustment: reviewers correct the boxes, and the corrected boxes are approved.",
    )
    max_images_per_job: int = Field(
        default=500,
        ge=1,
        le=100_000,
        description="The round's budget: images one round sends to labeling at most, the most informative first "
        "(uncertain device frames, then recent ones), shared fairly between devices.",
    )
    pre_labels: bool = Field(
        default=True,
        description="Offer the newest approved model's boxes as a starting point (Label Studio predictions, or a "
        "Ground Truth adjustment job instead of the bounding-box job); no approved model: labelers draw from scratch.",
    )
    task_time_limit_seconds: int = Field(default=600, ge=30, le=28_800)
    task_availability_lifetime_seconds: int = Field(
        default=259_200,
        ge=60,
        le=2_592_000,
        description="How long a task waits for workers. A round runs two jobs one after the other and must end "
        "within the 7 days the workflow pipeline waits for its state machine: at most 291600 (3.375 days).",
    )
    workers_per_image: int = Field(default=1, ge=1, le=9)
    max_concurrent_tasks: int = Field(
        default=1000, ge=1, le=5000, description="Data objects offered to workers at the same time (per job)."
    )
    job_files_retention_days: int = Field(
        default=180,
        ge=1,
        le=3650,
        description="Ground Truth manifests, templates and outputs under labeling-jobs/ expire after this many days "
        "(the labels themselves live in the feature group). Raw images never expire.",
    )
    adopt_existing_data: bool = Field(
        default=False,
        description="Use the data bucket, its KMS key, the label feature group (with its offline-store role) and "
        "the Glue database that a previous deployment retained, instead of creating them. See labeling/README.md.",
    )
    seed_labels_file: str | None = Field(
        default=None,
        description="CSV or JSON-lines file (path relative to the repository) imported at deploy time.",
    )

    @field_validator("seed_labels_file")
    @classmethod
    def _seed_file(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = Path(value)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a path inside the repository, relative to its root")
        if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
            raise ValueError("must be a .csv or .jsonl (JSON lines) file")
        return value

    @model_validator(mode="after")
    def _backend_settings(self) -> LabelingSettings:
        if self.backend == "ground_truth" and self.workforce is None:
            raise ValueError("workforce is required when backend is ground_truth (the work team that draws the boxes)")
        if self.backend == "label_studio" and self.label_studio is None:
            raise ValueError(
                "label_studio (url and api_token_secret, or server) is required when backend is label_studio"
            )
        if self.backend == "ground_truth" and self.label_studio is not None:
            raise ValueError(
                "label_studio applies to backend label_studio only; remove it or set backend: label_studio"
            )
        return self

    @model_validator(mode="after")
    def _task_limits(self) -> LabelingSettings:
        public = [w for w in (self.workforce, self.review_workforce) if w is not None and w.type == "public"]
        if public and self.task_availability_lifetime_seconds > PUBLIC_MAX_TASK_AVAILABILITY_SECONDS:
            raise ValueError(
                "task_availability_lifetime_seconds must be at most "
                f"{PUBLIC_MAX_TASK_AVAILABILITY_SECONDS} (12 hours) when the public crowd works on the tasks"
            )
        if self.task_time_limit_seconds > self.task_availability_lifetime_seconds:
            raise ValueError("task_time_limit_seconds must not exceed task_availability_lifetime_seconds")
        if 2 * self.task_availability_lifetime_seconds + ROUND_OVERHEAD_SECONDS > WORKFLOW_ACTION_LIMIT_SECONDS:
            raise ValueError(
                f"task_availability_lifetime_seconds must be at most {MAX_TASK_AVAILABILITY_SECONDS}: a round runs "
                "two Ground Truth jobs and must end within the 7 days CodePipeline waits for the workflow"
            )
        return self

    @property
    def effective_review_workforce(self) -> WorkforceSettings | None:
        return self.review_workforce or self.workforce


class AugmentationSettings(_Section):
    """How training images are varied on the fly (Ultralytics' augmentation settings of the same names)."""

    fliplr: float = Field(default=0.5, ge=0.0, le=1.0, description="Probability of a left-right flip.")
    flipud: float = Field(default=0.5, ge=0.0, le=1.0, description="Probability of an up-down flip.")
    degrees: float = Field(default=0.0, ge=0.0, le=180.0, description="Random rotation, +/- degrees.")
    translate: float = Field(default=0.1, ge=0.0, le=0.9, description="Random shift, fraction of the image.")
    scale: float = Field(default=0.5, ge=0.0, le=0.9, description="Random zoom, +/- fraction.")
    mosaic: float = Field(default=1.0, ge=0.0, le=1.0, description="Probability of a four-image mosaic.")
    mixup: float = Field(default=0.0, ge=0.0, le=1.0, description="Probability of blending two images.")
    hsv_v: float = Field(default=0.4, ge=0.0, le=1.0, description="Brightness jitter, fraction.")
    close_mosaic: int = Field(default=10, ge=0, le=1000, description="Last epochs trained without mosaic.")


class TuningRanges(_Section):
    """The search space of hyperparameter tuning (each must allow more than one value)."""

    model_size: list[ModelSize] = Field(default_factory=lambda: list[ModelSize](["n", "s"]), min_length=1)
    epochs: tuple[int, int] = Field(default=(100, 300), description="[min, max] epochs.")
    learning_rate: tuple[float, float] = Field(
        default=(0.0005, 0.005), description="[min, max], searched on a log scale."
    )
    image_size: list[int] = Field(default_factory=lambda: [448, 640], min_length=1, description="Multiples of 32.")

    @field_validator("model_size", "image_size")
    @classmethod
    def _distinct(cls, value: list[Any]) -> list[Any]:
        if len(set(value)) != len(value):
            raise ValueError("values must be distinct")
        return value

    @field_validator("image_size")
    @classmethod
    def _image_sizes(cls, value: list[int]) -> list[int]:
        bad = [size for size in value if size < 32 or size > 2048 or size % 32]
        if bad:
            raise ValueError(f"image sizes must be multiples of 32 between 32 and 2048, got {bad}")
        return value

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 1 <= low < high <= 1000:
            raise ValueError("must be [min, max] with 1 <= min < max <= 1000")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _learning_rate(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 < low < high < 1.0:
            raise ValueError("must be [min, max] with 0 < min < max < 1")
        return value


class TuningSettings(_Section):
    """Hyperparameter tuning of the training step: off by default, on for a run with `Tune=true`."""

    max_jobs: int = Field(default=8, ge=2, le=500, description="Training jobs a tuning job runs at most.")
    max_parallel_jobs: int = Field(default=2, ge=1, le=100, description="Training jobs running at the same time.")
    strategy: Literal["Bayesian", "Random"] = "Bayesian"
    ranges: TuningRanges = Field(default_factory=TuningRanges)

    @model_validator(mode="after")
    def _parallel(self) -> TuningSettings:
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError("max_parallel_jobs must not exceed max_jobs")
        return self


class TrainingSettings(_Section):
    """Defaults of the SageMaker pipeline's parameters (each run may override them) and fixed choices."""

    # -- pipeline parameters (defaults; tuned per run without a deploy) -------------------------------
    model_size: ModelSize = Field(default="n", description="YOLOv8 variant.")
    epochs: int = Field(default=300, ge=1, le=1000)
    image_size: int = Field(default=640, ge=32, le=2048, multiple_of=32, description="Square input side.")
    batch_size: int = Field(default=16, ge=1, le=512)
    patience: int = Field(
        default=100, ge=1, le=1000, description="Stop after this many epochs without a better validation score."
    )
    learning_rate: float = Field(default=0.002, gt=0.0, lt=1.0, description="Initial learning rate (lr0).")
    training_instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.g4dn.xlarge"
    processing_instance_type: Annotated[str, Field(pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")] = "ml.m5.xlarge"
    use_spot: bool = Field(default=True, description="Managed spot training (checkpoints in S3).")
    pretrained_weights_s3_uri: Annotated[str, Field(pattern=_S3_URI)] | None = Field(
        default=None,
        description="Ultralytics .pt weights to start from, under s3://<model bucket>/pretrained/; "
        "null trains from scratch. Nothing is ever downloaded from the internet.",
    )
    map50_95_threshold: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Quality gate of a group's first model: minimum test mAP50-95."
    )
    regression_margin: float = Field(
        default=0.02,
        ge=0.0,
        le=1.0,
        description="Quality gate: allowed drop in mAP50-95 below the approved model, both scored on the same images.",
    )
    confidence_threshold: float = Field(default=0.25, gt=0.0, lt=1.0)
    iou_threshold: float = Field(default=0.45, gt=0.0, lt=1.0)
    approval_status: Literal["PendingManualApproval", "Approved"] = "PendingManualApproval"
    min_images: int = Field(default=50, ge=1, description="Fewer usable images after QA fail the export step.")

    # -- fixed per deployment ---------------------------------------------------------------------------
    max_runtime_seconds: int = Field(default=86_400, ge=600, le=2_419_200, description="Training job limit.")
    onnx_opset: int = Field(default=17, ge=11, le=21)
    optimizer: Literal["SGD", "AdamW"] = Field(default="AdamW", description="Optimizer of every training run.")
    quantize_int8: bool = Field(
        default=True,
        description="The evaluation also makes an INT8 model, scored on the same test images; the archive carries "
        "both and the devices choose (edge_deployment.model_precision).",
    )
    augmentation: AugmentationSettings = Field(default_factory=AugmentationSettings)
    validation_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    min_validation_images: int = Field(default=15, ge=1, le=10_000, description="Smallest validation split.")
    min_test_images: int = Field(
        default=30, ge=1, le=10_000, description="Smallest test split; fewer labeled images fail the run."
    )
    min_test_defects: int = Field(default=20, ge=1, le=100_000, description="Fewest labeled boxes in the test split.")
    tuning: TuningSettings = Field(default_factory=TuningSettings)
    # ECR image URIs. `{dlc_registry}` is the AWS Deep Learning Containers registry of the deployment region
    # (its account differs between regions: training/dlc_registry.py); `{region}` is the deployment region.
    training_image: Annotated[str, Field(pattern=_IMAGE_URI)] = (
        "{dlc_registry}/pytorch-training:2.6.0-gpu-py312-cu126-ubuntu22.04-sagemaker"
    )
    processing_image: Annotated[str, Field(pattern=_IMAGE_URI)] = (
        "{dlc_registry}/pytorch-training:2.6.0-cpu-py312-ubuntu22.04-sagemaker"
    )
    volume_size_gb: int = Field(default=50, ge=5, le=16_384, description="Disk of each processing/training job.")
    cache_days: int = Field(default=30, ge=1, le=3650, description="How long successful steps are reused.")
    status_poll_seconds: int = Field(default=300, ge=30, le=3600, description="Workflow's pipeline status polling.")

    @model_validator(mode="after")
    def _fractions(self) -> TrainingSettings:
        if self.validation_fraction + self.test_fraction >= 0.5:
            raise ValueError("validation_fraction + test_fraction must leave at least half of the images for training")
        if self.max_runtime_seconds > MAX_TRAINING_RUNTIME_SECONDS:
            raise ValueError(
                f"max_runtime_seconds must be at most {MAX_TRAINING_RUNTIME_SECONDS}: a spot training job may wait "
                "twice as long, and the whole pipeline run must end within the 7 days CodePipeline waits for the "
                "workflow (the edge deployment app starts only when it succeeds)"
            )
        return self

    @model_validator(mode="after")
    def _int8_opset(self) -> TrainingSettings:
        if self.quantize_int8 and self.onnx_opset < INT8_MIN_ONNX_OPSET:
            raise ValueError(
                f"onnx_opset must be at least {INT8_MIN_ONNX_OPSET} when quantize_int8 is true, got "
                f"{self.onnx_opset}: the INT8 model's per-channel weights need opset {INT8_MIN_ONNX_OPSET}; raise "
                "onnx_opset or set quantize_int8 to false"
            )
        return self


class RolloutSettings(_Section):
    """How a deployment reaches the thing group: the IoT job's staged rollout, abort rule and timeouts."""

    base_rate_per_minute: int = Field(default=5, ge=1, le=1000, description="Devices notified per minute at first.")
    increment_factor: float = Field(default=2.0, ge=1.1, le=5.0, description="Rate multiplier per rollout step.")
    notified_things_per_step: int = Field(
        default=10, ge=1, description="Devices notified before the rate grows by increment_factor."
    )
    maximum_per_minute: int = Field(default=100, ge=1, le=1000, description="Upper bound of the rollout rate.")
    abort_failure_percentage: float = Field(
        default=10.0, gt=0.0, le=100.0, description="Cancel the rollout when this share of devices failed ..."
    )
    abort_min_executed_things: int = Field(default=3, ge=1, description="... once at least this many finished.")
    job_timeout_minutes: int = Field(
        default=60, ge=1, le=10_080, description="A device that has not finished by then counts as timed out."
    )
    component_update_timeout_seconds: int = Field(
        default=60, ge=1, le=3600, description="How long running components may defer an update (NOTIFY_COMPONENTS)."
    )
    poll_interval_seconds: int = Field(
        default=30, ge=5, le=3600, description="How often the workflow looks at the rollout's IoT job."
    )
    max_wait_minutes: int = Field(
        default=180,
        ge=1,
        le=10_080,
        description="How long the workflow waits for every device; devices still pending then are reported.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> RolloutSettings:
        if self.maximum_per_minute < self.base_rate_per_minute:
            raise ValueError("maximum_per_minute must be at least base_rate_per_minute")
        if self.max_wait_minutes < self.job_timeout_minutes:
            raise ValueError("max_wait_minutes must be at least job_timeout_minutes (a device may take that long)")
        if self.max_wait_minutes > MAX_ROLLOUT_WAIT_MINUTES:
            raise ValueError(
                f"max_wait_minutes must be at most {MAX_ROLLOUT_WAIT_MINUTES}: the workflow must end within the "
                "7 days CodePipeline waits for it"
            )
        return self


class HealthGateSettings(_Section):
    """When a stage's devices count as healthy: read from their own telemetry after the stage's soak time."""

    min_frames: int = Field(
        default=20,
        ge=1,
        description="Frames each device must have served during the soak (an idle device is not judged healthy).",
    )
    max_failed_frame_rate: float = Field(
        default=0.02, ge=0.0, le=1.0, description="Largest share of frames a device may fail to process."
    )
    max_latency_p95_ms: float = Field(default=1000.0, gt=0.0, description="Largest p95 inference latency of a device.")
    max_defect_rate_gap: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="Largest difference between a device's share of flagged frames and the share of test images "
        "the model flagged (model.json's test_statistics.detection_rate).",
    )


_STAGE_NAME = r"^[a-z0-9][a-z0-9-]{0,31}$"
_THING_GROUP = r"^[a-zA-Z0-9:_-]{1,128}$"


class RolloutStageSettings(_Section):
    """One stage of a staged promotion: its thing groups, how fast it rolls out, how long it soaks."""

    name: Annotated[str, Field(pattern=_STAGE_NAME)]
    thing_groups: list[Annotated[str, Field(pattern=_THING_GROUP)]] = Field(
        min_length=1, description="The devices of the stage (each group deployed to separately)."
    )
    rollout: RolloutSettings | None = Field(
        default=None,
        description="The stage's rollout rate, abort rule and waits: the keys given here replace "
        "edge_deployment.rollout's, the others are taken from it.",
    )
    soak_minutes: int = Field(
        default=0, ge=0, le=10_080, description="How long the stage serves the new model before its health is judged."
    )
    manual_approval: bool = Field(
        default=False, description="A person approves (or rejects) the next stage after the health gate passed."
    )
    approval_timeout_hours: int = Field(
        default=24, ge=1, le=72, description="Without an answer by then the stage is rolled back (fails safe)."
    )

    @field_validator("thing_groups")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        repeated = sorted({group for group in value if value.count(group) > 1})
        if repeated:
            raise ValueError(f"thing groups must be distinct; repeated: {', '.join(repeated)}")
        return value


class TelemetrySettings(_Section):
    """Where the devices' results and heartbeats are kept (S3 + Athena) and how they become metrics."""

    buffer_seconds: int = Field(
        default=300, ge=60, le=900, description="How long Firehose gathers messages before it writes a file to S3."
    )
    retention_days: int | None = Field(
        default=None, ge=1, description="Delete stored results and heartbeats after this many days; null: never."
    )
    metrics_namespace: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/#:-]{1,255}$")] | None = Field(
        default=None, description="CloudWatch namespace of the device metrics; default: <prefix>/Devices."
    )


class FleetMonitoringSettings(_Section):
    """When the devices' telemetry raises an alarm, and when a drifting model starts a new labeling round."""

    silent_minutes: int = Field(
        default=10, ge=2, le=1440, description="A device without a heartbeat this long raises its silence alarm."
    )
    latency_p95_ms: float = Field(
        default=1000.0, gt=0.0, description="Alarm when the thing group's p95 inference latency stays above this."
    )
    defect_rate_band: float = Field(
        default=3.0, ge=1.0, le=10.0, description="Width (standard deviations) of the defect rate's normal band."
    )
    uncertainty_drift_tolerance: float = Field(
        default=0.15,
        gt=0.0,
        le=1.0,
        description="Alarm when the share of uncertain frames exceeds the model's test split share by this much.",
    )
    drift_minutes: int = Field(
        default=60, ge=15, le=1440, description="How long a drift must last before its alarm (and retraining)."
    )
    min_frames_for_drift: int = Field(
        default=100, ge=1, description="Fewer frames in a drift window are not judged (a quiet line is not drift)."
    )
    retrain_on_drift: bool = Field(default=True, description="A drift alarm starts the labeling workflow pipeline.")
    retrain_min_hours: int = Field(
        default=24, ge=1, le=720, description="At most one drift-started run in this many hours (any run counts)."
    )

    @field_validator("drift_minutes")
    @classmethod
    def _whole_periods(cls, value: int) -> int:
        if value % 5:
            raise ValueError("must be a multiple of 5 (the drift alarms evaluate 5-minute periods)")
        return value


# aws.greengrass.DiskSpooler versions and the Greengrass nucleus versions each one installs with: every
# version has a hard dependency on a nucleus range that ends before the next nucleus minor version (the
# disk spooler component's dependency tables in the Greengrass developer guide). A deployment that carries a
# version whose range misses the device's nucleus fails on that device. Newer versions are accepted unchecked.
DISK_SPOOLER_NUCLEUS_RANGES: dict[str, tuple[str, str]] = {
    "1.0.1": ("2.11.0", "2.13.0"),
    "1.0.2": ("2.11.0", "2.13.0"),
    "1.0.3": ("2.11.0", "2.13.0"),
    "1.0.4": ("2.11.0", "2.14.0"),
    "1.0.5": ("2.11.0", "2.15.0"),
    "1.0.6": ("2.11.0", "2.16.0"),
    "1.0.7": ("2.11.0", "2.17.0"),
}
# The nucleus reads mqtt.spooler.storageType "Disk" from 2.11.0 on; older ones know no such value and break
# their spooler (nothing reaches AWS IoT Core), so the disk spooler needs at least this nucleus.
MIN_DISK_SPOOLER_NUCLEUS = "2.11.0"
_SEMVER = r"^\d+\.\d+\.\d+$"


def semver_tuple(version: str) -> tuple[int, int, int]:
    """`2.16.1` -> (2, 16, 1), for comparing Greengrass component versions."""
    major, minor, patch = (int(part) for part in version.split("."))
    return major, minor, patch


class OfflineSpoolSettings(_Section):
    """Results and heartbeats published while a device is offline wait on disk (the nucleus's disk spooler)."""

    disk_spooler_version: Annotated[str, Field(pattern=_SEMVER)] | None = Field(
        default="1.0.7",
        description="aws.greengrass.DiskSpooler version deployed with the components; null: the nucleus spools "
        "in memory (lost at a restart).",
    )
    nucleus_version: Annotated[str, Field(pattern=_SEMVER)] = Field(
        default="2.16.1",
        description="Greengrass nucleus version new devices install (register_device, the simulated device).",
    )
    max_size_mb: int = Field(
        default=64,
        ge=1,
        le=10_240,
        description="The spool's size (nucleus mqtt.spooler.maxSizeInBytes); when full, new messages are refused.",
    )

    @model_validator(mode="after")
    def _compatible(self) -> OfflineSpoolSettings:
        version = self.disk_spooler_version
        if version is None:
            return self
        nucleus = semver_tuple(self.nucleus_version)
        if nucleus < semver_tuple(MIN_DISK_SPOOLER_NUCLEUS):
            raise ValueError(
                f"nucleus_version {self.nucleus_version} cannot use the disk spooler (it needs "
                f"{MIN_DISK_SPOOLER_NUCLEUS} or later): raise nucleus_version or set disk_spooler_version to null"
            )
        known = DISK_SPOOLER_NUCLEUS_RANGES.get(version)
        if known is not None and not semver_tuple(known[0]) <= nucleus < semver_tuple(known[1]):
            raise ValueError(
                f"disk_spooler_version {version} installs only with nucleus >={known[0]} <{known[1]}, "
                f"not nucleus_version {self.nucleus_version}: choose a pair from the disk spooler's dependency table"
            )
        return self

    @property
    def max_size_bytes(self) -> int:
        return self.max_size_mb * 1024 * 1024


class EdgeDeploymentSettings(_Section):
    """The IoT team's app: thing group, components, what the device does and how a model rolls out."""

    thing_group_name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9:_-]{1,128}$")]
    inference_component_name: Annotated[str, Field(pattern=_COMPONENT_NAME)]
    model_component_name: Annotated[str, Field(pattern=_COMPONENT_NAME)]
    deployment_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._:-]{0,255}$")] | None = Field(
        default=None, description="Name of the Greengrass deployment to the thing group; default: the group's name."
    )
    results_topic: Annotated[str, Field(pattern=_MQTT_TOPIC)] = "inspection/{thing}/results"
    heartbeat_topic: Annotated[str, Field(pattern=_MQTT_TOPIC)] = "inspection/{thing}/heartbeat"
    heartbeat_interval_seconds: int = Field(default=60, ge=5, le=3600)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    stages: list[RolloutStageSettings] = Field(
        default_factory=list,
        description="Ordered rollout stages (pilot first); empty: one stage, thing_group_name with `rollout`.",
    )
    health: HealthGateSettings = Field(default_factory=HealthGateSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    monitoring: FleetMonitoringSettings = Field(default_factory=FleetMonitoringSettings)
    offline_spool: OfflineSpoolSettings = Field(default_factory=OfflineSpoolSettings)
    max_model_archive_mb: int = Field(
        default=200, ge=1, le=2048, description="Larger model archives are refused before anything is created."
    )
    uncertainty_band: tuple[float, float] = (0.3, 0.7)
    confident_sample_rate: float = Field(default=0.02, ge=0.0, le=1.0)
    drift_sample_rate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Share of frames with no detection sent back while the device's rate of such frames departs "
        "from the model's test split (1 - model.json's test_statistics.detection_rate): a model gone blind sends "
        "frames back.",
    )
    max_uploads_per_hour: int = Field(
        default=120, ge=0, le=36_000, description="Cap on frames one device sends back per hour (0: no cap)."
    )
    offline_queue_mb: int = Field(default=512, ge=1)
    outbox_mb: int = Field(
        default=16,
        ge=1,
        description="The inference component's outbox on disk (outboxMaxMB): results and heartbeats the nucleus "
        "refused, kept to publish again; beyond it the oldest are dropped.",
    )
    frames_directory: Annotated[str, Field(pattern=r"^[^\s]+$")] = Field(
        default="frames",
        description="Where the line camera drops frames on the device; relative: inside the component's work folder.",
    )
    frame_interval_seconds: float = Field(default=1.0, gt=0.0)
    confidence_threshold: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Overrides the model's own threshold (model.json) on the device."
    )
    iou_threshold: float | None = Field(default=None, gt=0.0, lt=1.0, description="Overrides model.json's NMS IoU.")
    model_precision: Literal["auto", "int8", "fp32"] = Field(
        default="auto",
        description="Which model file the devices serve: auto picks INT8 when it loses at most int8_max_map50_loss.",
    )
    int8_max_map50_loss: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Largest test mAP50 loss against FP32 auto accepts (0.01: 1 point)."
    )
    execution_providers: tuple[Literal["tensorrt", "cuda", "openvino", "cpu"], ...] = Field(
        default=("cpu",), min_length=1, description="onnxruntime execution providers in order of preference; CPU last."
    )
    simulated_device: bool = Field(default=False, description="Adds an EC2 instance that runs Greengrass.")
    simulated_device_instance_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]*g[a-z0-9]*\.[a-z0-9]+$")] = Field(
        default="t4g.medium", description="Graviton (arm64) instance type of the simulated device."
    )

    @field_validator("results_topic", "heartbeat_topic")
    @classmethod
    def _one_thing_level(cls, value: str) -> str:
        # Each device publishes on its own topic; the cloud reads the sender from that level (topic rules).
        if value.split("/").count("{thing}") != 1 or value.count("{thing}") != 1:
            raise ValueError("must hold {thing} exactly once, as a whole topic level (e.g. inspection/{thing}/results)")
        return value

    @field_validator("uncertainty_band")
    @classmethod
    def _band_order(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low < high <= 1")
        return value

    @model_validator(mode="before")
    @classmethod
    def _stage_rollouts_inherit(cls, data: Any) -> Any:
        # A stage's `rollout` names what differs; the rest is edge_deployment.rollout's.
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            return data
        base = data.get("rollout") or {}
        if not isinstance(base, dict):
            return data
        stages = [
            {**stage, "rollout": {**base, **stage["rollout"]}}
            if isinstance(stage, dict) and isinstance(stage.get("rollout"), dict)
            else stage
            for stage in data["stages"]
        ]
        return {**data, "stages": stages}

    @model_validator(mode="after")
    def _stages_fit(self) -> EdgeDeploymentSettings:
        names = [stage.name for stage in self.stages]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"stages: stage names must be unique; repeated: {', '.join(repeated)}")
        groups = [group for stage in self.stages for group in stage.thing_groups]
        shared = sorted({group for group in groups if groups.count(group) > 1})
        if shared:
            # one device would get two deployments of the same components (they conflict on the device)
            raise ValueError(f"stages: a thing group belongs to one stage only; in several: {', '.join(shared)}")
        if self.stages and self.stages[-1].manual_approval:
            raise ValueError(
                f"stages: the last stage ({self.stages[-1].name}) has no next stage to approve; "
                "set manual_approval on the stage before the one a person must approve"
            )
        if stage_wait_minutes(self) > MAX_ROLLOUT_WAIT_MINUTES:
            raise ValueError(
                f"stages: the stages' waits (rollout max_wait_minutes, soak_minutes, approval_timeout_hours) add up "
                f"to {stage_wait_minutes(self)} minutes, more than {MAX_ROLLOUT_WAIT_MINUTES}: the workflow must end "
                "within the 7 days CodePipeline waits for it"
            )
        return self

    @property
    def effective_stages(self) -> list[RolloutStageSettings]:
        """The configured stages, each with its rollout; none configured: one stage, the app's thing group."""
        if not self.stages:
            return [RolloutStageSettings(name="fleet", thing_groups=[self.thing_group_name], rollout=self.rollout)]
        return [
            stage if stage.rollout is not None else stage.model_copy(update={"rollout": self.rollout})
            for stage in self.stages
        ]

    @property
    def stage_thing_groups(self) -> list[str]:
        """Every thing group a deployment targets, in stage order."""
        return [group for stage in self.effective_stages for group in stage.thing_groups]

    @property
    def effective_deployment_name(self) -> str:
        return self.deployment_name or self.thing_group_name


def stage_wait_minutes(edge: EdgeDeploymentSettings) -> int:
    """The longest the stages may wait in all (rollouts, soaks, approvals), plus one rollback's rollout."""
    total = 0
    longest_rollout = 0
    for stage in edge.effective_stages:
        rollout = stage.rollout or edge.rollout
        longest_rollout = max(longest_rollout, rollout.max_wait_minutes)
        total += rollout.max_wait_minutes + stage.soak_minutes
        total += stage.approval_timeout_hours * 60 if stage.manual_approval else 0
    return total + longest_rollout


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


# --------------------------------------------------------------------------------------------------
# A real deployment
# --------------------------------------------------------------------------------------------------

EXAMPLE_ACCOUNTS = frozenset(
    {"000000000000", "111111111111", "222222222222", "333333333333", "123456789012", "111122223333", "444455556666"}
)
"""Account ids of examples and documentation: fine for `make synth` and the tests, never deployed to."""
EXAMPLE_REPOSITORY_OWNERS = frozenset({"example-org", "example", "my-org"})
_EXAMPLE_EMAIL_DOMAINS = ("example.com", "example.org", "example.net")  # and host names
_ARN_ACCOUNT = re.compile(r"^arn:[^:]+:[^:]*:[^:]*:(?P<account>\d{12}):")


def _arn_account(arn: str | None) -> str | None:
    match = _ARN_ACCOUNT.match(arn or "")
    return match["account"] if match else None


def _labeling_placeholders(labeling: LabelingSettings) -> list[str]:
    """The labeling section's example values: work teams of example accounts, the example Label Studio."""
    problems = []
    for key, workforce in (
        ("labeling.workforce", labeling.workforce),
        ("labeling.review_workforce", labeling.review_workforce),
    ):
        account = _arn_account(workforce.work_team_arn) if workforce is not None else None
        if account in EXAMPLE_ACCOUNTS:
            problems.append(
                f"{key}.work_team_arn: a work team of example account {account}; give your private work team's ARN "
                "(SageMaker Ground Truth > Labeling workforces)"
            )
    studio = labeling.label_studio
    if studio is not None and studio.url is not None:
        host = studio.url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0].lower()
        if host.endswith(_EXAMPLE_EMAIL_DOMAINS):
            problems.append(f"labeling.label_studio.url: {studio.url} is the example; the URL of your Label Studio")
    if studio is not None and studio.server is not None:
        if studio.server.domain_name.endswith(_EXAMPLE_EMAIL_DOMAINS):
            problems.append(
                f"labeling.label_studio.server.domain_name: {studio.server.domain_name} is an example domain; "
                "the name your labelers will open"
            )
        if (account := _arn_account(studio.server.certificate_arn)) in EXAMPLE_ACCOUNTS:
            problems.append(
                f"labeling.label_studio.server.certificate_arn: example account {account}; your ACM certificate"
            )
    return problems


def deployment_problems(settings: Settings) -> list[str]:
    """What stops this configuration from being deployed for real, one line per key (empty: deployable).

    The example config.yaml synthesizes and tests as it is; these are its placeholders (example accounts,
    the all-zero connection, the example repository) and the choices a deployment must make explicitly
    (where failures are reported).
    """
    problems: list[str] = []
    source = settings.source
    if source.provider == "codestar_connection":
        connection_id = (source.connection_arn or "").rsplit("/", 1)[-1]
        if set(connection_id.replace("-", "")) == {"0"}:
            problems.append(
                "source.connection_arn: the example's all-zero connection; create a CodeConnections connection to "
                "your repository and put its ARN here"
            )
        elif (account := _arn_account(source.connection_arn)) in EXAMPLE_ACCOUNTS:
            problems.append(f"source.connection_arn: example account {account}; use your connection's ARN")
        if source.repository.split("/", 1)[0] in EXAMPLE_REPOSITORY_OWNERS:
            problems.append(f"source.repository: {source.repository!r} is the example; name your fork (owner/name)")
    problems += _labeling_placeholders(settings.labeling)
    if settings.environment is not None and settings.environment.account in EXAMPLE_ACCOUNTS:
        problems.append(
            f"environments.{settings.environment_name}.account: {settings.environment.account} is an example "
            "account; put the account this environment deploys to"
        )
    notifications = settings.notifications
    for address in notifications.email_addresses:
        if address.lower().rsplit("@", 1)[-1].endswith(_EXAMPLE_EMAIL_DOMAINS):
            problems.append(f"notifications.email: {address} is an example address")
    if not notifications.has_target and notifications.opt_out_reason is None:
        problems.append(
            "notifications: no target, so failed runs would reach nobody; set notifications.email (one address or "
            "a list) or notifications.slack, or notifications.opt_out_reason to deploy without on purpose"
        )
    return problems


def check_deployable(settings: Settings, *, source: str = "config.yaml") -> None:
    """Refuse a real deployment (`make deploy`, the pipelines) of a configuration with placeholders."""
    problems = deployment_problems(settings)
    if problems:
        where = f"{source} (environment {settings.environment_name})" if settings.environment_name else source
        raise ConfigError(
            f"{where}: not deployable as it is ({len(problems)} value(s) to set first):\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _format_errors(error: ValidationError, source: str, environment: str | None = None) -> str:
    lines = [f"{source}: {error.error_count()} invalid configuration value(s):"]
    for item in error.errors():
        loc = tuple(item["loc"])
        if environment is not None and loc[:1] == ("environment",):
            loc = ("environments", environment, *loc[1:])  # the key as it is written in the file
        key = ".".join(str(part) for part in loc) or "(top level)"
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
        raise ConfigError(_format_errors(error, source, environment)) from None


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
