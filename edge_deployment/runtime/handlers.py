"""Lambda entry points of the edge deployment workflow: thin wrappers over the plain functions.

Each handler reads the deployment's settings once from EDGE_DEPLOYMENT_CONFIG (`config.py`), builds its
clients (with backoff), calls one plain function and returns JSON for the state machine. Errors keep
their type name, which the state machine sees as the error name: `TransientError` is retried, input
errors are not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from edge_deployment.runtime.aws import (
    DeploymentInputError,
    account_of,
    client,
    component_arn,
    thing_group_arn,
    transient_errors,
)
from edge_deployment.runtime.components import (
    VERSION_PLACEHOLDER,
    inference_component_version,
    prepare_model_component,
    publish_inference_component,
    render_recipe_template,
)
from edge_deployment.runtime.config import EdgeDeploymentConfig
from edge_deployment.runtime.deployment import (
    REDEPLOY,
    client_token,
    create_or_reuse_deployment,
    deployment_request,
    older_running_executions,
    rollout_status,
    superseded_result,
)
from edge_deployment.runtime.model_package import (
    ModelPackage,
    WrongModelPackageGroup,
    newer_approved_package,
    resolve_model_package,
)
from edge_deployment.runtime.retraining import AlarmChange, RetrainingConfig, retrain_on_drift
from edge_deployment.runtime.spooler import with_disk_spooler
from edge_deployment.runtime.stages import (
    combine_rollouts,
    deadline_after,
    health_status,
    on_demand_failure_report,
    on_demand_stages,
    rollback_report,
    rollback_requests,
    serving_status,
    stage_deployment_name,
    stage_rollout_report,
    start_stage,
)
from edge_deployment.runtime.telemetry import TelemetryConfig, transform
from shared.runtime import cfn_response

logger = Logger()
_telemetry_config: TelemetryConfig | None = None


def _config() -> EdgeDeploymentConfig:
    return EdgeDeploymentConfig.from_environment()


def _now() -> datetime:
    return datetime.now(UTC)


@logger.inject_lambda_context(log_event=True)
def resolve(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 1. Input: the state machine input (`model_package_arn` and `model_package_group_name` from the approval
    rule, or neither: the newest approved package)."""
    group = _config().model_package_group
    arn = event.get("model_package_arn")
    named_group = event.get("model_package_group_name")
    if named_group and named_group != group:
        raise WrongModelPackageGroup(
            f"the event is for model package group {named_group!r}, but this app deploys group {group!r}; "
            "nothing was created"
        )
    result = resolve_model_package(client("sagemaker"), group_name=group, model_package_arn=arn)
    logger.info(result["message"])
    return result


@logger.inject_lambda_context(log_event=True)
def prepare_model(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 2. Input: `{"package": {...}}` from step 1. Output: the model component version."""
    config = _config()
    partition, region, account = account_of(context.invoked_function_arn)
    settings = config.model_component(partition=partition, region=region, account=account)
    package = ModelPackage.from_json(event["package"])
    return prepare_model_component(
        s3=client("s3"), greengrass=client("greengrassv2"), package=package, settings=settings
    )


def _still_newest(package: dict[str, Any], *, group: str) -> bool:
    """Whether no approved package of `group` is newer than `package` (asked at the moment of use)."""
    newer = newer_approved_package(client("sagemaker"), group_name=group, version=int(package["version"]))
    return newer is None


def _older_runs(event: dict[str, Any]) -> Any:
    """The executions started before this one that still run (none known without the execution's id)."""
    execution, started = event.get("execution_id"), event.get("execution_start")
    if not execution or not started:
        return None
    start = datetime.fromisoformat(str(started).replace("Z", "+00:00"))
    return lambda: older_running_executions(client("stepfunctions"), execution_arn=execution, started=start)


def _deployment_names(config: EdgeDeploymentConfig, stage: dict[str, Any]) -> dict[str, str]:
    return {
        group["name"]: stage_deployment_name(
            config.deployment_name, thing_group=group["name"], fleet_group=config.thing_group_name
        )
        for group in stage["thing_groups"]
    }


@logger.inject_lambda_context(log_event=True)
def begin_stage(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A stage begins. Input: `{"index", "request"}` (the execution's input). Output: its groups (checked) with what
    each ran before, and its timings.

    A rollback on demand (`{"trigger": "rollback", "stages": [...]}`) runs only the stages it names (all when it
    names none), without soak, health gate or approval: the version it puts back ran there before.
    """
    config = _config()
    partition, region, account = account_of(context.invoked_function_arn)
    wanted = on_demand_stages(event.get("request"), [stage.name for stage in config.stages])
    index = int(event["index"])
    if wanted is not None:
        index = next(i for i in wanted if i >= index)
    stage = start_stage(
        client("greengrassv2"),
        client("iot"),
        stage=config.stage(index),
        index=index,
        count=len(config.stages),
        group_arn=lambda name: thing_group_arn(partition=partition, region=region, account=account, name=name),
        partition=partition,
        region=region,
        account=account,
        now=_now(),
        on_demand=wanted is not None,
    )
    if wanted is not None:
        stage.update(on_demand=True, last=index == wanted[-1], soak_seconds=0, manual_approval=False)
    logger.info("stage started", extra={"stage": stage})
    return stage


@logger.inject_lambda_context(log_event=True)
def create_deployment(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 3. Input: the package, the model and inference component versions, the stage. Output: the stage's
    deployments (one per thing group) to follow.

    Right before creating, a package that a newer approved one overtook deploys nothing (`superseded`).
    """
    config = _config()
    package, stage = event["package"], event["stage"]
    stage_settings = config.stage(int(stage["index"]))
    # a rollback on demand deploys an older package on purpose
    newer = (
        None
        if stage.get("on_demand")
        else newer_approved_package(
            client("sagemaker"), group_name=config.model_package_group, version=int(package["version"])
        )
    )
    if newer is not None:
        superseded = superseded_result(package, newer, thing_group=f"stage {stage['name']}")
        logger.info(superseded["subject"], extra={"newer": newer})
        return superseded
    model, inference = event["model_component"], event["inference_component"]
    components = with_disk_spooler(
        {model["name"]: model["version"], inference["name"]: inference["version"]}, config.disk_spooler_version
    )
    names = _deployment_names(config, stage)
    deployments = []
    started = None
    for group in stage["thing_groups"]:
        request = deployment_request(
            thing_group_arn=group["arn"],
            deployment_name=names[group["name"]],
            components=components,
            rollout=stage_settings.rollout,
            # A retried call of one attempt creates one deployment; a new attempt (REDEPLOY) creates a new one.
            client_token=client_token(
                str(event.get("execution_id", "")),
                str(event.get("attempt", 0)),
                group["name"],
                *sorted(f"{k}={v}" for k, v in components.items()),
            ),
        )
        created = create_or_reuse_deployment(client("greengrassv2"), client("iot"), request, now=_now())
        started = started or created["started_at"]
        deployments.append(
            {
                "thing_group": group["name"],
                "deployment_id": created["deployment_id"],
                "iot_job_id": created["iot_job_id"],
                "reused": created["reused"],
            }
        )
    deployment = {"superseded": False, "started_at": started, "components": components, "deployments": deployments}
    logger.info("deployment", extra={"deployment": deployment})
    return deployment


def _group_statuses(
    event: dict[str, Any], config: EdgeDeploymentConfig, deployment: dict[str, Any], *, follow_runs: bool
) -> dict[str, Any]:
    package = event.get("package") or {}
    policy = config.stage(int(event["stage"]["index"])).rollout
    statuses = [
        (
            group["thing_group"],
            rollout_status(
                client("greengrassv2"),
                client("iot"),
                deployment={**group, "started_at": deployment["started_at"]},
                policy=policy,
                now=_now(),
                thing_group=group["thing_group"],
                model_component=config.model_component_name if follow_runs else None,
                still_newest=(lambda: _still_newest(package, group=config.model_package_group))
                if follow_runs
                else None,
                older_runs=_older_runs(event) if follow_runs else None,
            ),
        )
        for group in deployment["deployments"]
    ]
    return combine_rollouts(statuses)


@logger.inject_lambda_context(log_event=True)
def check_rollout(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 4, one poll of the stage's deployments. Input: `{"deployment", "package", "stage"}`. Output: finished?
    and, when finished, the report (and the failure a bad outcome rolls back)."""
    config = _config()
    # a rollback on demand is not overtaken by newer approvals or older runs: a person asked for this version
    follow_runs = not event["stage"].get("on_demand")
    status = _group_statuses(event, config, event["deployment"], follow_runs=follow_runs)
    if status["outcome"] == REDEPLOY:
        logger.info("an older package's deployment replaced this one: deploying again", extra={"rollout": status})
        return status
    if status["finished"]:
        status.update(
            stage_rollout_report(
                status,
                stage=event["stage"],
                deployment=event["deployment"],
                package=event.get("package") or {},
                deployment_names=_deployment_names(config, event["stage"]),
            )
        )
        logger.info(status["subject"], extra={"rollout": status})
    return status


@logger.inject_lambda_context(log_event=True)
def check_serving(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One look: does every device of the stage report the new model version in its heartbeats?

    Input: `{"stage", "deployment", "model_version"}`. Devices get the stage's max_wait_minutes from the
    deployment's start; a device still silent then fails the stage (NOT_SERVING).
    """
    config = _config()
    stage = event["stage"]
    policy = config.stage(int(stage["index"])).rollout
    started = str(event["deployment"]["started_at"])
    status = serving_status(
        client("cloudwatch"),
        client("iot"),
        stage=stage,
        namespace=config.metrics_namespace,
        fleet_group=config.thing_group_name,
        model_version=str(event["model_version"]),
        since=datetime.fromisoformat(started),
        now=_now(),
        deadline=deadline_after(started, policy.max_wait_minutes),
    )
    logger.info("serving", extra={"serving": status})
    return status


@logger.inject_lambda_context(log_event=True)
def check_health(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The health gate after the soak. Input: `{"stage", "model_version", "since"}` (when every device served it).

    Not gated: a rollback on demand (it puts back a version a person chose), and a stage without soak time
    (`soak_minutes: 0`, the one stage when none is configured): a gate over no time would judge nothing.
    """
    config = _config()
    stage = event["stage"]
    if stage.get("on_demand") or not stage.get("soak_seconds"):
        why = "rollback on demand" if stage.get("on_demand") else "soak_minutes 0"
        return {"healthy": True, "gated": False, "verdict": f"not health-gated ({why})", "samples": []}
    status = health_status(
        client("cloudwatch"),
        client("iot"),
        stage=event["stage"],
        bounds=config.health,
        namespace=config.metrics_namespace,
        fleet_group=config.thing_group_name,
        model_version=str(event["model_version"]),
        since=datetime.fromisoformat(str(event["since"])),
        now=_now(),
    )
    logger.info("health", extra={"health": status})
    return status


@logger.inject_lambda_context(log_event=True)
def roll_back_stage(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Put every group of the stage back on what it ran when the stage began. Input: `{"stage", "execution_id"}`.

    A rollback on demand is not put back (that is the version it leaves): no deployment, and CheckRollback
    reports the failure.
    """
    config = _config()
    stage = event["stage"]
    if stage.get("on_demand"):
        # a rollback on demand that failed: what the stage ran at its start is the version to leave
        rollback: dict[str, Any] = {"started_at": _now().isoformat(), "deployments": [], "on_demand": True}
        logger.info("rollback on demand failed; nothing redeployed", extra={"rollback": rollback})
        return rollback
    execution = str(event.get("execution_id", ""))
    requests = rollback_requests(
        stage,
        deployment_names=_deployment_names(config, stage),
        rollout=config.stage(int(stage["index"])).rollout,
        token=lambda group: client_token(execution, "rollback", str(stage["index"]), group),
    )
    greengrass = client("greengrassv2")
    deployments = []
    for group, request in requests:
        with transient_errors():
            created = greengrass.create_deployment(**request)
        deployments.append(
            {
                "thing_group": group,
                "deployment_id": created["deploymentId"],
                "iot_job_id": created.get("iotJobId"),
                "reused": False,
            }
        )
    rollback = {"started_at": _now().isoformat(), "deployments": deployments}
    logger.info("stage rolled back", extra={"rollback": rollback})
    return rollback


@logger.inject_lambda_context(log_event=True)
def check_rollback(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """One poll of a stage's rollback. Input: `{"rollback", "stage", "failure", "package"}`. Output: the report."""
    config = _config()
    if event["stage"].get("on_demand"):
        report = on_demand_failure_report(
            stage=event["stage"], failure_reason=event.get("failure") or {}, package=event.get("package") or {}
        )
        logger.info(report["subject"], extra={"failure": event.get("failure")})
        return {"finished": True, "outcome": None, **report}
    status = _group_statuses(event, config, event["rollback"], follow_runs=False)
    if status["finished"]:
        index = int(event["stage"]["index"])
        status.update(
            rollback_report(
                status,
                stage=event["stage"],
                failure_reason=event.get("failure") or {},
                package=event.get("package") or {},
                stages_after=[stage.name for stage in config.stages[index + 1 :]],
            )
        )
        logger.info(status["subject"], extra={"rollback": status})
    return status


# --------------------------------------------------------------------------------------------------
# CloudFormation custom resource: the inference component version built by the asset pipeline
# --------------------------------------------------------------------------------------------------


@logger.inject_lambda_context(log_event=False)  # the event holds CloudFormation's pre-signed response URL
def inference_component(event: dict[str, Any], context: Any) -> None:
    """Create (or find) the inference component version; Delete keeps it (devices may still run it)."""
    physical_id = event.get("PhysicalResourceId") or f"{event['LogicalResourceId']}-not-created"
    try:
        if event["RequestType"] == "Delete":
            cfn_response.send(event, "SUCCESS", physical_id=physical_id, reason="component versions are kept")
            return
        properties = event["ResourceProperties"]
        version = inference_component_version(
            artifact_hash=properties["ArtifactHash"], recipe_template=properties["RecipeTemplate"]
        )
        recipe = render_recipe_template(properties["RecipeTemplate"], version)
        partition, region, account = account_of(context.invoked_function_arn)
        arn = component_arn(
            partition=partition, region=region, account=account, name=recipe["ComponentName"], version=version
        )
        published = publish_inference_component(
            s3=client("s3"),
            greengrass=client("greengrassv2"),
            recipe=recipe,
            arn=arn,
            source_bucket=properties["SourceBucket"],
            source_key=properties["SourceKey"],
            bucket=properties["Bucket"],
            key=properties["KeyTemplate"].replace(VERSION_PLACEHOLDER, version),
        )
        cfn_response.send(
            event,
            "SUCCESS",
            physical_id=published.arn,
            data={"ComponentVersion": published.version, "ComponentArn": published.arn},
        )
    except Exception as error:
        logger.exception("inference component version failed")
        kind = "bad input" if isinstance(error, DeploymentInputError) else type(error).__name__
        cfn_response.send(event, "FAILED", physical_id=physical_id, reason=f"{kind}: {error}")


def process_telemetry(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Firehose data transformation of the device telemetry (no event logging: it is the devices' data)."""
    global _telemetry_config  # noqa: PLW0603 - read once per container
    if _telemetry_config is None:
        _telemetry_config = TelemetryConfig.from_environment()
    response = transform(event, _telemetry_config)
    logger.info("telemetry batch", extra={"records": len(response["records"])})
    return response


@logger.inject_lambda_context(log_event=True)
def retrain_on_drift_alarm(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A drift alarm went off: start the labeling workflow pipeline unless a run is recent."""
    config = RetrainingConfig.from_environment()
    outcome = retrain_on_drift(
        client("codepipeline"), client("sns"), config=config, change=AlarmChange.from_event(event), now=_now()
    )
    logger.info("retraining on drift", extra=outcome)
    return outcome
