"""The settings the edge workflow's functions run with, written from the validated configuration.

The CDK side of `runtime/config.py`: one `EdgeDeploymentConfig`, built here from `config.yaml` and the
resource names, travels to every function of the workflow as the EDGE_DEPLOYMENT_CONFIG variable.
"""

from __future__ import annotations

from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, EdgeDeploymentConfig
from edge_deployment.runtime.deployment import RolloutPolicy
from shared.config import Settings
from shared.names import MODEL_ARCHIVE_PREFIX, ResourceNames


def rollout_policy(settings: Settings) -> RolloutPolicy:
    rollout = settings.edge_deployment.rollout
    return RolloutPolicy(
        base_rate_per_minute=rollout.base_rate_per_minute,
        increment_factor=rollout.increment_factor,
        notified_things_per_step=rollout.notified_things_per_step,
        maximum_per_minute=rollout.maximum_per_minute,
        abort_failure_percentage=rollout.abort_failure_percentage,
        abort_min_executed_things=rollout.abort_min_executed_things,
        job_timeout_minutes=rollout.job_timeout_minutes,
        component_update_timeout_seconds=rollout.component_update_timeout_seconds,
        max_wait_minutes=rollout.max_wait_minutes,
    )


def function_config(
    settings: Settings, *, names: EdgeNames, shared_names: ResourceNames, component_bucket: str
) -> EdgeDeploymentConfig:
    """The functions' settings; `component_bucket` is the fleet's bucket (a token at synth time)."""
    edge = settings.edge_deployment
    return EdgeDeploymentConfig(
        model_package_group=shared_names.model_package_group,
        thing_group_name=edge.thing_group_name,
        deployment_name=names.deployment_name,
        model_component_name=edge.model_component_name,
        component_bucket=component_bucket,
        model_bucket=shared_names.model_bucket,
        model_archive_prefix=MODEL_ARCHIVE_PREFIX,
        max_archive_bytes=edge.max_model_archive_mb * 1024 * 1024,
        class_names=tuple(settings.project.class_names),
        rollout=rollout_policy(settings),
        disk_spooler_version=edge.offline_spool.disk_spooler_version,
    )


def function_environment(
    settings: Settings, *, names: EdgeNames, shared_names: ResourceNames, component_bucket: str
) -> dict[str, str]:
    """The environment variables of every function of the workflow."""
    config = function_config(settings, names=names, shared_names=shared_names, component_bucket=component_bucket)
    return {ENVIRONMENT_VARIABLE: config.to_json()}
