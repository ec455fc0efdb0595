"""The settings the edge workflow's functions run with, written from the validated configuration.

The CDK side of `runtime/config.py`: one `EdgeDeploymentConfig`, built here from `config.yaml` and the
resource names, travels to every function of the workflow as the EDGE_DEPLOYMENT_CONFIG variable.
"""

from __future__ import annotations

from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, EdgeDeploymentConfig
from edge_deployment.runtime.deployment import RolloutPolicy
from edge_deployment.runtime.stages import HealthBounds, Stage
from shared.config import RolloutSettings, Settings
from shared.names import MODEL_ARCHIVE_PREFIX, ResourceNames


def rollout_policy(settings: Settings, rollout: RolloutSettings | None = None) -> RolloutPolicy:
    """The rollout of `rollout` (a stage's), default: edge_deployment.rollout."""
    rollout = rollout or settings.edge_deployment.rollout
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


def stages(settings: Settings) -> tuple[Stage, ...]:
    """edge_deployment.stages in order (one stage, the app's thing group, when none is configured)."""
    return tuple(
        Stage(
            name=stage.name,
            thing_groups=tuple(stage.thing_groups),
            rollout=rollout_policy(settings, stage.rollout),
            poll_interval_seconds=(stage.rollout or settings.edge_deployment.rollout).poll_interval_seconds,
            soak_minutes=stage.soak_minutes,
            manual_approval=stage.manual_approval,
            approval_timeout_hours=stage.approval_timeout_hours,
        )
        for stage in settings.edge_deployment.effective_stages
    )


def health_bounds(settings: Settings) -> HealthBounds:
    health = settings.edge_deployment.health
    return HealthBounds(
        min_frames=health.min_frames,
        max_failed_frame_rate=health.max_failed_frame_rate,
        max_latency_p95_ms=health.max_latency_p95_ms,
        max_defect_rate_gap=health.max_defect_rate_gap,
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
        stages=stages(settings),
        health=health_bounds(settings),
        metrics_namespace=names.metrics_namespace,
        disk_spooler_version=edge.offline_spool.disk_spooler_version,
    )


def function_environment(
    settings: Settings, *, names: EdgeNames, shared_names: ResourceNames, component_bucket: str
) -> dict[str, str]:
    """The environment variables of every function of the workflow."""
    config = function_config(settings, names=names, shared_names=shared_names, component_bucket=component_bucket)
    return {ENVIRONMENT_VARIABLE: config.to_json()}
