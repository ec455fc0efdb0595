"""Names of everything one app finds of another's: the only coupling between the three apps.

The owner of a resource and every reader call `resource_names()` with the same settings, so they
agree on the name without a CloudFormation export, a cross-stack reference or a shared object.
`account` and `region` may be CDK tokens (environment-agnostic stacks) or literal strings
(runtime code, tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import APP_NAMES, AppName, Settings

RAW_IMAGE_PREFIX = "raw-images/"
"""Every raw image lives under this prefix of the data bucket; nothing ever deletes or overwrites one."""

EDGE_UPLOAD_PREFIX = RAW_IMAGE_PREFIX + "edge/"
"""Devices upload frames to `raw-images/edge/<device>/<yyyy-mm-dd>/<file>` so labeling picks them up."""

LABELING_JOBS_PREFIX = "labeling-jobs/"
"""Ground Truth manifests and outputs (temporary job files) in the data bucket."""

OFFLINE_STORE_PREFIX = "feature-store/"
"""Feature Store offline store (the label feature group's parquet files) in the data bucket."""
MODEL_ARCHIVE_PREFIX = "pipeline-runs/"
"""Under this prefix of the model bucket, the training pipeline writes each run's model.tar.gz (the archive
a model package names); the edge deployment app reads model archives there and nowhere else."""


def app_slug(app: AppName | str) -> str:
    """`edge_deployment` -> `edge-deployment`: the form used inside resource names."""
    if app not in APP_NAMES:
        raise ValueError(f"unknown app {app!r}; expected one of {', '.join(APP_NAMES)}")
    return app.replace("_", "-")


def workflow_stack_name(prefix: str, app: AppName | str) -> str:
    """The stack the asset pipeline deploys: the app's workflow and its resources."""
    return f"{prefix}-{app_slug(app)}-workflow"


def upstream_app(app: AppName | str) -> str | None:
    """The app whose workflow success starts this app's asset pipeline (None for the first)."""
    index = APP_NAMES.index(app_slug(app).replace("-", "_"))
    return APP_NAMES[index - 1] if index else None


@dataclass(frozen=True)
class ResourceNames:
    prefix: str
    account: str
    region: str

    # -- owned by labeling ------------------------------------------------------------------------
    @property
    def data_bucket(self) -> str:
        """Raw images and labeling job files. Bucket names are global, hence account and region."""
        return f"{self.prefix}-data-{self.account}-{self.region}"

    @property
    def data_key_alias(self) -> str:
        """KMS key of the data bucket and the offline store; readers are granted it by this alias."""
        return f"alias/{self.prefix}-data"

    @property
    def label_feature_group(self) -> str:
        return f"{self.prefix}-labels"

    @property
    def label_catalog_database(self) -> str:
        """Glue database of the offline store's catalog table (Glue names take no hyphens)."""
        return f"{self.prefix.replace('-', '_')}_feature_store"

    @property
    def label_catalog_table(self) -> str:
        return f"{self.prefix.replace('-', '_')}_labels"

    @property
    def label_studio_api_token_secret(self) -> str:
        """Secrets Manager secret with the API token of the Label Studio server the labeling app deploys.

        The server's service account is created with this token; the labeling round's functions call the
        API with it. (With an existing server, `labeling.label_studio.api_token_secret` names the secret.)
        """
        return f"{self.prefix}/labeling/label-studio-api-token"

    @property
    def label_studio_key_alias(self) -> str:
        """KMS key of the deployed Label Studio (its database, logs and secrets, the API token among them).

        Whoever reads the API token secret needs `kms:Decrypt` on this key (through Secrets Manager).
        """
        return f"alias/{self.prefix}-label-studio"

    # -- owned by training ------------------------------------------------------------------------
    @property
    def model_package_group(self) -> str:
        return f"{self.prefix}-scratch-detector"

    @property
    def model_bucket(self) -> str:
        """Training artifacts, including the model archives that the model packages point to."""
        return f"{self.prefix}-models-{self.account}-{self.region}"

    @property
    def model_key_alias(self) -> str:
        return f"alias/{self.prefix}-models"

    @property
    def training_pipeline(self) -> str:
        """The SageMaker pipeline."""
        return f"{self.prefix}-training"

    # -- per app ----------------------------------------------------------------------------------
    def toolchain_stack(self, app: AppName | str) -> str:
        """The stack a team deploys by hand once: the asset pipeline and what it needs."""
        return f"{self.prefix}-{app_slug(app)}-toolchain"

    def workflow_stack(self, app: AppName | str) -> str:
        """The stack the asset pipeline deploys: the app's workflow and its resources."""
        return workflow_stack_name(self.prefix, app)

    def asset_pipeline(self, app: AppName | str) -> str:
        return f"{self.prefix}-{app_slug(app)}-asset-pipeline"

    def workflow_pipeline(self, app: AppName | str) -> str:
        return f"{self.prefix}-{app_slug(app)}-workflow-pipeline"

    def workflow_state_machine(self, app: AppName | str) -> str:
        """The Step Functions state machine that the workflow pipeline runs."""
        return f"{self.prefix}-{app_slug(app)}"

    def notification_topic(self, app: AppName | str) -> str:
        return f"{self.prefix}-{app_slug(app)}-notifications"

    def notification_key_alias(self, app: AppName | str) -> str:
        return f"alias/{self.prefix}-{app_slug(app)}-notifications"

    def alarm_prefix(self, app: AppName | str) -> str:
        """Names of the app's CloudWatch alarms start with this; only those may publish to its topic."""
        return f"{self.prefix}-{app_slug(app)}-"


def resource_names(settings: Settings, *, account: str, region: str) -> ResourceNames:
    """The one function that names every interface, for the owner and for every reader."""
    return ResourceNames(prefix=settings.project.prefix, account=account, region=region)
