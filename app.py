#!/usr/bin/env python3
"""Entry point of the three CDK apps (labeling, training, edge deployment).

Context values select what is synthesized:
  -c app=training       one app's stacks only (what each team deploys); all three without it
  -c env=prod           the environment in config.yaml whose account, region and overrides apply
  -c config=path.yaml   another configuration file (default: config.yaml beside this file)
  -c deploy=true        a real deployment (`make deploy`, the asset pipelines): a configuration that still
                        holds example values or has no notification target is refused, naming each key.
                        Without it (`make synth`, the tests) the same problems are synth warnings.
"""

from __future__ import annotations

import os
import sys

import aws_cdk as cdk

from edge_deployment.stacks import EdgeDeploymentStage
from labeling.stacks import LabelingStage
from shared.config import (
    APP_NAMES,
    DEFAULT_CONFIG_FILE,
    ConfigError,
    Settings,
    check_deployable,
    deployment_problems,
    load_settings,
)
from shared.guardrails import apply_guardrails
from shared.names import resource_names
from shared.pipelines import AppToolchainStack, StageFactory
from training.stacks import TrainingStage

STAGES: dict[str, StageFactory] = {
    "labeling": LabelingStage,
    "training": TrainingStage,
    "edge_deployment": EdgeDeploymentStage,
}


def selected_apps(value: str | None) -> list[str]:
    """`-c app=...` as a list of app names; all apps when not given."""
    if not value:
        return list(APP_NAMES)
    chosen = [part.strip().replace("-", "_") for part in value.split(",") if part.strip()]
    unknown = [name for name in chosen if name not in APP_NAMES]
    if unknown or not chosen:
        raise ConfigError(
            f"context app={value!r}: unknown app {', '.join(unknown) or value!r}; "
            f"expected one of {', '.join(APP_NAMES)} (comma-separated) or nothing for all"
        )
    return chosen


def deployment_environment(settings: Settings) -> cdk.Environment:
    """The configured environment's account and region, else the CLI's (unset without credentials)."""
    if settings.environment is not None:
        return cdk.Environment(account=settings.environment.account, region=settings.environment.region)
    return cdk.Environment(account=os.environ.get("CDK_DEFAULT_ACCOUNT"), region=os.environ.get("CDK_DEFAULT_REGION"))


def is_deployment(value: object) -> bool:
    """`-c deploy=true` (the context value arrives as a string from the CLI)."""
    return str(value).strip().lower() in ("true", "1", "yes")


def build(app: cdk.App) -> list[AppToolchainStack]:
    """Add the selected apps' toolchain stacks (and through them, their stages) to `app`."""
    context = app.node.try_get_context
    config_file = context("config") or DEFAULT_CONFIG_FILE
    settings = load_settings(config_file, environment=context("env") or None)
    if is_deployment(context("deploy")):
        check_deployable(settings, source=str(config_file))
    names = resource_names(settings, account=cdk.Aws.ACCOUNT_ID, region=cdk.Aws.REGION)
    env = deployment_environment(settings)
    stacks = [
        AppToolchainStack(
            app,
            names.toolchain_stack(name),
            settings=settings,
            app=name,  # type: ignore[arg-type]
            stage_factory=STAGES[name],
            env=env,
        )
        for name in selected_apps(context("app"))
    ]
    for key, value in settings.project.tags.items():
        cdk.Tags.of(app).add(key, value)
    _say_what_a_deployment_needs(settings, stacks)
    apply_guardrails(app)
    return stacks


def _say_what_a_deployment_needs(settings: Settings, stacks: list[AppToolchainStack]) -> None:
    """Synth warnings on each toolchain stack: what `make deploy` would refuse, and a notification opt-out."""
    for stack in stacks:
        for problem in deployment_problems(settings):
            cdk.Annotations.of(stack).add_warning_v2("config:not-deployable", f"make deploy would refuse: {problem}")
        if settings.notifications.opt_out_reason:
            cdk.Annotations.of(stack).add_warning_v2(
                "config:no-notification-target",
                "notifications.opt_out_reason: no e-mail or chat channel receives this app's failures "
                f"({settings.notifications.opt_out_reason})",
            )


def main() -> int:
    app = cdk.App()
    try:
        build(app)
    except ConfigError as error:
        print(f"Configuration error: {error}", file=sys.stderr)
        return 1
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
