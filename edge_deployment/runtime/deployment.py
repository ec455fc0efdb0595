"""Steps 3 and 4: the Greengrass deployment to the thing group, and following its rollout.

A thing-group deployment is carried out by a continuous IoT job. The workflow polls it (a Wait
state between polls, no idling function) until every device of the group has finished, the job
was cancelled (the abort rule, or a newer deployment), or the configured wait runs out; then it
publishes what happened, device by device for the ones that failed.

Runs of the workflow may overlap (two approvals close together, an approval and the workflow
pipeline), and a new deployment to the group revises the one before. The group ends on the newest
approved package (highest version), whatever the order the runs reach Greengrass in:

* a run whose package is no longer the newest approved creates nothing (`superseded_result`);
* a run whose deployment was revised by a deployment of a newer (or the same) package version ends
  as SUPERSEDED, a good outcome: the other run reports that rollout;
* a run whose deployment was revised by an older package's deployment (that run checked before this
  package was approved) deploys again (REDEPLOY), as long as its package is still the newest approved;
* a run whose rollout succeeded while a newer package has been approved meanwhile ends as SUPERSEDED;
* a run whose rollout succeeded does not end while an execution started before it is still running
  (it could still be about to replace the deployment): it keeps looking until those have ended, and
  the look after that sees any replacement (the job is then cancelled, see above).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from edge_deployment.runtime.aws import error_code, transient_errors

ROLLBACK = "ROLLBACK"
NOTIFY_COMPONENTS = "NOTIFY_COMPONENTS"
SUCCEEDED, NO_DEVICES, FAILED, ABORTED, CANCELED, INCOMPLETE = (
    "SUCCEEDED",
    "NO_DEVICES",
    "FAILED",
    "ABORTED",
    "CANCELED",
    "INCOMPLETE",
)
SUPERSEDED = "SUPERSEDED"
"""A deployment of the same or a newer package version revised this run's: that run reports the rollout."""
REDEPLOY = "REDEPLOY"
"""An older package's deployment revised this run's while its package is still the newest approved."""
GOOD_OUTCOMES = frozenset({SUCCEEDED, NO_DEVICES, SUPERSEDED})
FAILURE_STATUSES = ("FAILED", "REJECTED", "TIMED_OUT")
PENDING_STATUSES = ("QUEUED", "IN_PROGRESS")
_COUNTERS = {
    "succeeded": "numberOfSucceededThings",
    "failed": "numberOfFailedThings",
    "rejected": "numberOfRejectedThings",
    "timed_out": "numberOfTimedOutThings",
    "canceled": "numberOfCanceledThings",
    "removed": "numberOfRemovedThings",
    "queued": "numberOfQueuedThings",
    "in_progress": "numberOfInProgressThings",
}
MAX_REPORTED_DEVICES = 25


@dataclass(frozen=True)
class Counter:
    """A loop counter in the workflow's state: the model component's polls, the deployment's attempts.

    The workflow seeds it from here (`Counter().to_json()`) and counts up with States.MathAdd on `count`.
    """

    count: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class RolloutPolicy:
    """edge_deployment.rollout of the configuration, as the deployment needs it."""

    base_rate_per_minute: int
    increment_factor: float
    notified_things_per_step: int
    maximum_per_minute: int
    abort_failure_percentage: float
    abort_min_executed_things: int
    job_timeout_minutes: int
    component_update_timeout_seconds: int
    max_wait_minutes: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RolloutPolicy:
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__})


def deployment_request(
    *,
    thing_group_arn: str,
    deployment_name: str,
    components: Mapping[str, str],
    rollout: RolloutPolicy,
    client_token: str | None = None,
) -> dict[str, Any]:
    """The CreateDeployment request: exactly these component versions, safe rollout, rollback on failure.

    Each component's configuration is reset to its recipe's defaults, so the device runs the
    configuration of the version it runs (a model component's defaults name its package).
    """
    request: dict[str, Any] = {
        "targetArn": thing_group_arn,
        "deploymentName": deployment_name,
        "components": {
            name: {"componentVersion": version, "configurationUpdate": {"reset": [""]}}
            for name, version in sorted(components.items())
        },
        "deploymentPolicies": {
            "failureHandlingPolicy": ROLLBACK,
            "componentUpdatePolicy": {
                "action": NOTIFY_COMPONENTS,
                "timeoutInSeconds": rollout.component_update_timeout_seconds,
            },
            "configurationValidationPolicy": {"timeoutInSeconds": rollout.component_update_timeout_seconds},
        },
        "iotJobConfiguration": {
            "jobExecutionsRolloutConfig": {
                "exponentialRate": {
                    "baseRatePerMinute": rollout.base_rate_per_minute,
                    "incrementFactor": rollout.increment_factor,
                    "rateIncreaseCriteria": {"numberOfNotifiedThings": rollout.notified_things_per_step},
                },
                "maximumPerMinute": rollout.maximum_per_minute,
            },
            "abortConfig": {
                "criteriaList": [
                    {
                        "failureType": "ALL",
                        "action": "CANCEL",
                        "thresholdPercentage": float(rollout.abort_failure_percentage),
                        "minNumberOfExecutedThings": rollout.abort_min_executed_things,
                    }
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": rollout.job_timeout_minutes},
        },
    }
    if client_token:
        request["clientToken"] = client_token
    return request


def client_token(*parts: str) -> str:
    """An idempotency token: a retried call of one workflow run creates one deployment, not two."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:64]


def _versions(components: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(spec.get("componentVersion")) for name, spec in components.items()}


def _job_counts(job: Mapping[str, Any]) -> dict[str, int]:
    details = job.get("jobProcessDetails") or {}
    return {name: int(details.get(field) or 0) for name, field in _COUNTERS.items()}


def latest_reusable_deployment(greengrass: Any, iot: Any, request: Mapping[str, Any]) -> dict[str, Any] | None:
    """The group's current deployment when it already deploys exactly these versions and has not failed."""
    with transient_errors():
        listed = greengrass.list_deployments(targetArn=request["targetArn"], historyFilter="LATEST_ONLY")
    for summary in listed.get("deployments", []):
        if summary.get("deploymentStatus") != "ACTIVE" or not summary.get("isLatestForTarget", True):
            continue
        with transient_errors():
            current = greengrass.get_deployment(deploymentId=summary["deploymentId"])
        if _versions(current.get("components") or {}) != _versions(request["components"]):
            continue
        job_id = current.get("iotJobId")
        if job_id:
            with transient_errors():
                job = iot.describe_job(jobId=job_id)["job"]
            counts = _job_counts(job)
            failures = counts["failed"] + counts["rejected"] + counts["timed_out"]
            if job.get("status") in ("CANCELED", "DELETION_IN_PROGRESS") or failures:
                return None  # a failed or cancelled rollout of these versions: roll out again
        return {"deployment_id": current["deploymentId"], "iot_job_id": job_id}
    return None


def create_or_reuse_deployment(
    greengrass: Any, iot: Any, request: Mapping[str, Any], *, now: datetime
) -> dict[str, Any]:
    """Step 3: create the deployment, or reuse the group's current one when it already deploys these versions."""
    reusable = latest_reusable_deployment(greengrass, iot, request)
    started = now.astimezone(UTC).isoformat()
    common = {"superseded": False, "started_at": started, "components": _versions(request["components"])}
    if reusable is not None:
        return {**reusable, "reused": True, **common}
    with transient_errors():
        created = greengrass.create_deployment(**request)
    return {"deployment_id": created["deploymentId"], "iot_job_id": created.get("iotJobId"), "reused": False, **common}


def superseded_result(package: Mapping[str, Any], newer: Mapping[str, Any], *, thing_group: str) -> dict[str, Any]:
    """Step 3's answer when a newer approved package overtook this run's: nothing is created."""
    subject = f"Edge rollout {SUPERSEDED}: model package v{package.get('version')} not deployed to {thing_group}"
    message = "\n".join(
        [
            f"Model package {package.get('arn')} (version {package.get('version')}) was not deployed to thing group "
            f"{thing_group}: version {newer['version']} ({newer['arn']}) is approved too and is newer, and the devices "
            "run the newest approved package (its own run deploys it).",
            "",
            f"To go back to version {package.get('version')}, reject the newer package(s) and run the workflow "
            "pipeline: it deploys the newest package that is still approved.",
        ]
    )
    return {"superseded": True, "newer": dict(newer), "subject": subject[:100], "message": message}


def model_version(components: Mapping[str, str], model_component: str) -> int | None:
    """The package version in a deployment's model component version (1.0.7 -> 7); None without one."""
    version = components.get(model_component)
    try:
        return int(str(version).rsplit(".", 1)[-1]) if version else None
    except ValueError:
        return None


def revision_outcome(
    greengrass: Any,
    *,
    deployment: Mapping[str, Any],
    model_component: str,
    still_newest: Callable[[], bool],
) -> tuple[str, dict[str, Any]] | None:
    """Why this run's cancelled job was cancelled, when another run's deployment revised it (see the module doc).

    None when the deployment is still the group's latest, or a deployment without this app's model
    component (a person's) replaced it: then the job's cancellation is reported as such.
    """
    with transient_errors():
        ours = greengrass.get_deployment(deploymentId=str(deployment["deployment_id"]))
        listed = greengrass.list_deployments(targetArn=ours["targetArn"], historyFilter="LATEST_ONLY")
    latest = [d for d in listed.get("deployments", []) if d.get("isLatestForTarget", True)]
    if not latest or latest[0]["deploymentId"] == ours["deploymentId"]:
        return None
    with transient_errors():
        successor = greengrass.get_deployment(deploymentId=latest[0]["deploymentId"])
    theirs = model_version(_versions(successor.get("components") or {}), model_component)
    mine = model_version(_versions(ours.get("components") or {}), model_component)
    if theirs is None or mine is None:
        return None
    detail = {"deployment_id": successor["deploymentId"], "model_version": theirs}
    if theirs >= mine:
        return SUPERSEDED, detail
    if still_newest():
        return REDEPLOY, detail
    return None


# --------------------------------------------------------------------------------------------------
# Following the rollout
# --------------------------------------------------------------------------------------------------


def classify(
    status: str, counts: Mapping[str, int], *, rolling_out: bool, policy: RolloutPolicy, waited_minutes: float
) -> str | None:
    """The rollout's outcome, or None while devices are still pending (and the wait has not run out)."""
    failures = counts["failed"] + counts["rejected"] + counts["timed_out"]
    executed = failures + counts["succeeded"]
    if status in ("CANCELED", "DELETION_IN_PROGRESS"):
        abort_rule_met = (
            executed >= policy.abort_min_executed_things
            and executed > 0
            and 100.0 * failures / executed >= policy.abort_failure_percentage
        )
        return ABORTED if abort_rule_met else CANCELED
    pending = counts["queued"] + counts["in_progress"]
    if status == "SCHEDULED" or (status != "COMPLETED" and (pending or rolling_out)):
        return INCOMPLETE if waited_minutes >= policy.max_wait_minutes else None
    if failures:
        return FAILED
    if executed == 0:
        return NO_DEVICES
    return SUCCEEDED


def group_has_members(iot: Any, thing_group: str) -> bool:
    with transient_errors():
        page = iot.list_things_in_thing_group(thingGroupName=thing_group, maxResults=1)
    return bool(page.get("things"))


def _thing_name(thing_arn: str) -> str:
    return thing_arn.rsplit("/", 1)[-1]


def executions_with_status(iot: Any, job_id: str, statuses: Iterable[str], *, limit: int) -> list[tuple[str, str]]:
    """(thing name, status) of the job's executions in `statuses`, at most `limit` of them."""
    found: list[tuple[str, str]] = []
    for status in statuses:
        token: str | None = None
        while len(found) < limit:
            request: dict[str, Any] = {"jobId": job_id, "status": status, "maxResults": min(100, limit)}
            if token:
                request["nextToken"] = token
            with transient_errors():
                page = iot.list_job_executions_for_job(**request)
            for summary in page.get("executionSummaries", []):
                found.append((_thing_name(summary["thingArn"]), status))
            token = page.get("nextToken")
            if not token:
                break
    return found[:limit]


def device_reason(greengrass: Any, thing_name: str, *, deployment_id: str, job_id: str) -> str:
    """Why the deployment failed on one device, as Greengrass recorded it (ListEffectiveDeployments)."""
    token: str | None = None
    for _ in range(3):  # newest first; our deployment is on the first page unless the device had many since
        request: dict[str, Any] = {"coreDeviceThingName": thing_name, "maxResults": 50}
        if token:
            request["nextToken"] = token
        try:
            with transient_errors():
                page = greengrass.list_effective_deployments(**request)
        except ClientError as error:
            if error_code(error) in ("ResourceNotFoundException", "AccessDeniedException"):
                return f"no Greengrass record for this device ({error_code(error)})"
            raise
        for effective in page.get("effectiveDeployments", []):
            if effective.get("deploymentId") != deployment_id and effective.get("iotJobId") != job_id:
                continue
            status = effective.get("coreDeviceExecutionStatus", "?")
            parts = [status]
            if effective.get("reason"):
                parts.append(str(effective["reason"]))
            details = effective.get("statusDetails") or {}
            if details.get("errorTypes"):
                parts.append("error types: " + ", ".join(details["errorTypes"]))
            if details.get("errorStack"):
                parts.append("error stack: " + " > ".join(details["errorStack"]))
            return "; ".join(parts)
        token = page.get("nextToken")
        if not token:
            break
    return "the device reported no details for this deployment"


def rollout_status(
    greengrass: Any,
    iot: Any,
    *,
    deployment: Mapping[str, Any],
    policy: RolloutPolicy,
    now: datetime,
    thing_group: str | None = None,
    max_reported_devices: int = MAX_REPORTED_DEVICES,
    model_component: str | None = None,
    still_newest: Callable[[], bool] | None = None,
    older_runs: Callable[[], list[str]] | None = None,
) -> dict[str, Any]:
    """Step 4, one poll: `{"finished": bool, "outcome", "counts", "devices": [...], "job_id", "job_status"}`.

    With `thing_group`, "no devices" is reported only when the group really has no members. With
    `model_component` and `still_newest`, a job cancelled because another run's deployment revised this
    one ends as SUPERSEDED or REDEPLOY (see the module doc) instead of CANCELED. With `older_runs` (the
    executions started before this one that still run), a successful rollout is not finished while any
    of them runs.
    """
    deployment_id = str(deployment["deployment_id"])
    job_id = deployment.get("iot_job_id")
    if not job_id:
        with transient_errors():
            job_id = greengrass.get_deployment(deploymentId=deployment_id).get("iotJobId")
    started = datetime.fromisoformat(str(deployment["started_at"]))
    waited = (now - started).total_seconds() / 60.0
    if not job_id:  # Greengrass has not created the IoT job yet
        finished = waited >= policy.max_wait_minutes
        return {
            "finished": finished,
            "outcome": INCOMPLETE if finished else None,
            "job_id": None,
            "job_status": None,
            "counts": dict.fromkeys(_COUNTERS, 0),
            "devices": [],
            "waited_minutes": round(waited, 1),
        }
    with transient_errors():
        job = iot.describe_job(jobId=job_id)["job"]
    counts = _job_counts(job)
    status = str(job.get("status"))
    rolling_out = bool((job.get("jobProcessDetails") or {}).get("processingTargets"))
    outcome = classify(status, counts, rolling_out=rolling_out, policy=policy, waited_minutes=waited)
    if outcome in (CANCELED, ABORTED) and model_component and still_newest is not None:
        revised = revision_outcome(
            greengrass, deployment=deployment, model_component=model_component, still_newest=still_newest
        )
        if revised is not None:
            outcome, successor = revised
            return {
                "finished": True,
                "outcome": outcome,
                "job_id": job_id,
                "job_status": status,
                "counts": counts,
                "devices": [],
                "waited_minutes": round(waited, 1),
                "successor": successor,
            }
    if outcome == NO_DEVICES and thing_group and group_has_members(iot, thing_group):
        # Devices are in the group, but the rollout has not reached any of them yet.
        outcome = INCOMPLETE if waited >= policy.max_wait_minutes else None
    if outcome in (SUCCEEDED, NO_DEVICES) and still_newest is not None and not still_newest():
        # a newer package was approved while this one rolled out: its run deploys it (this one must not
        # report the devices as running this package)
        outcome = SUPERSEDED
    if outcome in (SUCCEEDED, NO_DEVICES) and older_runs is not None and waited < policy.max_wait_minutes:
        running = older_runs()
        if running:  # one of them may still replace this deployment: look again later
            return {
                "finished": False,
                "outcome": None,
                "job_id": job_id,
                "job_status": status,
                "counts": counts,
                "devices": [],
                "waited_minutes": round(waited, 1),
                "waiting_for": running,
            }
    devices: list[dict[str, str]] = []
    if outcome in (FAILED, ABORTED, CANCELED, INCOMPLETE):
        statuses = FAILURE_STATUSES if outcome != INCOMPLETE else (*FAILURE_STATUSES, *PENDING_STATUSES)
        for thing, execution_status in executions_with_status(iot, job_id, statuses, limit=max_reported_devices):
            if execution_status in PENDING_STATUSES:
                reason = f"still {execution_status} after {waited:.0f} minutes (offline, or still updating)"
            else:
                reason = device_reason(greengrass, thing, deployment_id=deployment_id, job_id=job_id)
            devices.append({"thing": thing, "status": execution_status, "reason": reason})
    return {
        "finished": outcome is not None,
        "outcome": outcome,
        "job_id": job_id,
        "job_status": status,
        "counts": counts,
        "devices": devices,
        "waited_minutes": round(waited, 1),
        "job_comment": job.get("comment") or job.get("reasonCode"),
    }


def report(
    status: Mapping[str, Any],
    *,
    deployment: Mapping[str, Any],
    package: Mapping[str, Any],
    thing_group: str,
    deployment_name: str,
) -> dict[str, str]:
    """The SNS subject and message of a finished rollout."""
    outcome = str(status["outcome"])
    counts = status["counts"]
    components = deployment.get("components") or {}
    headline = {
        SUCCEEDED: "every device of the group runs the new model",
        NO_DEVICES: "deployed, but the thing group has no devices yet (devices get it when they join)",
        FAILED: "failed on some devices; those devices rolled back to their previous components",
        ABORTED: "aborted by the abort rule (too many failures); devices not yet updated keep the previous model",
        CANCELED: "cancelled before it finished (a newer deployment to the group, or a person)",
        INCOMPLETE: "not finished within the wait; the deployment stays active for the devices still pending",
        SUPERSEDED: "overtaken by another run of the same or a newer approved model package, which reports "
        "its own rollout",
    }[outcome]
    lines = [
        f"Edge deployment '{deployment_name}' to thing group {thing_group}: {outcome} - {headline}.",
        "",
        f"Model package: {package.get('arn')} (version {package.get('version')})",
        "Components: " + ", ".join(f"{name} {version}" for name, version in sorted(components.items())),
        f"Greengrass deployment: {deployment.get('deployment_id')}"
        + (" (reused: these versions were already deployed)" if deployment.get("reused") else ""),
        f"IoT job: {status.get('job_id')} ({status.get('job_status')})"
        + (f" - {status['job_comment']}" if status.get("job_comment") else ""),
        "Devices: "
        + ", ".join(
            f"{counts[key]} {label}"
            for key, label in (
                ("succeeded", "succeeded"),
                ("failed", "failed"),
                ("rejected", "rejected"),
                ("timed_out", "timed out"),
                ("canceled", "cancelled"),
                ("removed", "removed"),
                ("queued", "queued"),
                ("in_progress", "in progress"),
            )
        ),
    ]
    successor = status.get("successor")
    if successor:
        lines.append(
            f"Replaced by Greengrass deployment {successor['deployment_id']} (model package version "
            f"{successor['model_version']})"
        )
    devices = status.get("devices") or []
    if devices:
        lines += ["", "Devices that did not succeed:"]
        lines += [f"  - {d['thing']}: {d['status']} - {d['reason']}" for d in devices]
        shown = len(devices)
        total = sum(counts[k] for k in ("failed", "rejected", "timed_out"))
        if outcome == INCOMPLETE:
            total += counts["queued"] + counts["in_progress"]
        if total > shown:
            lines.append(f"  ... and {total - shown} more (see the IoT job's executions)")
    subject = f"Edge rollout {outcome}: model package v{package.get('version')} to {thing_group}"
    return {"subject": subject[:100], "message": "\n".join(lines)}


def older_running_executions(sfn: Any, *, execution_arn: str, started: datetime) -> list[str]:
    """ARNs of the executions of this state machine that started before `execution_arn` and still run."""
    head, _, rest = execution_arn.partition(":execution:")
    machine_name = rest.split(":", 1)[0]
    machine_arn = f"{head}:stateMachine:{machine_name}"
    older = []
    with transient_errors():
        for page in sfn.get_paginator("list_executions").paginate(stateMachineArn=machine_arn, statusFilter="RUNNING"):
            for execution in page.get("executions", []):
                if execution["executionArn"] != execution_arn and execution["startDate"] < started:
                    older.append(str(execution["executionArn"]))
    return older
