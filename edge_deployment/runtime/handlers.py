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

from edge_deployment.runtime.aws import DeploymentInputError, account_of, client, component_arn, thing_group_arn
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
    report,
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


@logger.inject_lambda_context(log_event=True)
def create_deployment(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 3. Input: the package, the model and inference component versions. Output: the deployment to follow.

    Right before creating, a package that a newer approved one overtook deploys nothing (`superseded`).
    """
    config = _config()
    partition, region, account = account_of(context.invoked_function_arn)
    group = config.thing_group_name
    package = event["package"]
    newer = newer_approved_package(
        client("sagemaker"), group_name=config.model_package_group, version=int(package["version"])
    )
    if newer is not None:
        superseded = superseded_result(package, newer, thing_group=group)
        logger.info(superseded["subject"], extra={"newer": newer})
        return superseded
    model, inference = event["model_component"], event["inference_component"]
    components = with_disk_spooler(
        {model["name"]: model["version"], inference["name"]: inference["version"]}, config.disk_spooler_version
    )
    request = deployment_request(
        thing_group_arn=thing_group_arn(partition=partition, region=region, account=account, name=group),
        deployment_name=config.deployment_name,
        components=components,
        rollout=config.rollout,
        # A retried call of one attempt creates one deployment; a new attempt (REDEPLOY) creates a new one.
        client_token=client_token(
            str(event.get("execution_id", "")),
            str(event.get("attempt", 0)),
            *sorted(f"{k}={v}" for k, v in components.items()),
        ),
    )
    deployment = create_or_reuse_deployment(client("greengrassv2"), client("iot"), request, now=_now())
    logger.info("deployment", extra={"deployment": deployment})
    return deployment


@logger.inject_lambda_context(log_event=True)
def check_rollout(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Step 4, one poll. Input: `{"deployment": {...}, "package": {...}}`. Output: finished? and the report."""
    config = _config()
    package = event.get("package") or {}
    status = rollout_status(
        client("greengrassv2"),
        client("iot"),
        deployment=event["deployment"],
        policy=config.rollout,
        now=_now(),
        thing_group=config.thing_group_name,
        model_component=config.model_component_name,
        still_newest=lambda: _still_newest(package, group=config.model_package_group),
        older_runs=_older_runs(event),
    )
    if status["outcome"] == REDEPLOY:
        logger.info("an older package's deployment replaced this one: deploying again", extra={"rollout": status})
        return status
    if status["finished"]:
        status.update(
            report(
                status,
                deployment=event["deployment"],
                package=package,
                thing_group=config.thing_group_name,
                deployment_name=config.deployment_name,
            )
        )
        logger.info(status["subject"], extra={"rollout": status})
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
