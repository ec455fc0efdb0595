"""Staged promotion: a model reaches the stages one after the other, each judged by its devices' own telemetry.

For each stage (`edge_deployment.stages`, in order; without any, one stage: the app's thing group):

1. `start_stage`: every thing group of the stage exists and has devices, and what each group ran before
   (its latest deployment's components) is recorded, with a check that those versions still exist, so
   the stage can be put back. Anything wrong stops the stage before it deploys (`StageInputError`).
2. The deployment to each group (`deployment.py`), followed until its IoT job has finished.
3. `serving_status`: every device of the stage reports the new model version in a heartbeat (a device
   whose new model failed to load keeps serving the old one, and its job still says SUCCEEDED).
4. After the stage's soak time, `health_status`: the health rule (`judge`) on each device's metrics of the
   soak window (frames served, failed frames, p95 latency, share of flagged frames against the model's
   test split). Pass: the next stage (after a person's approval where the stage asks for one).
5. A stage that fails any of these is put back on what it ran before (`rollback_requests`); the stages
   after it are never deployed, the ones before it keep the new model.

Every step is one short look; the state machine waits between looks (no function waits).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from edge_deployment.runtime.aws import DeploymentInputError, component_arn, error_code, transient_errors
from edge_deployment.runtime.deployment import (
    ABORTED,
    CANCELED,
    FAILED,
    INCOMPLETE,
    NO_DEVICES,
    REDEPLOY,
    SUCCEEDED,
    SUPERSEDED,
    RolloutPolicy,
    deployment_request,
    report,
)
from edge_deployment.runtime.telemetry import (
    DEFECT_FRAMES,
    EXPECTED_EMPTY,
    FRAMES,
    FRAMES_FAILED,
    HEARTBEATS_BY_VERSION,
    LATENCY,
)

NOT_SERVING = "NOT_SERVING"
"""The stage's jobs succeeded, but devices did not report the new model version in time."""
MAX_QUERIES = 500  # metric queries in one GetMetricData call
MAX_LISTED_DEVICES = 25  # devices named in a notification
COUNTER_LOOKBACK = timedelta(minutes=15)  # how far before a window a running total's last value is looked for
_BAD_ORDER = (FAILED, ABORTED, CANCELED, INCOMPLETE)


class StageInputError(DeploymentInputError):
    """A stage cannot start: a thing group missing or empty, a version it ran before gone. Nothing was deployed."""


class HealthQueryError(Exception):
    """The devices' metrics could not be read (not a throttle): the stage is not promoted."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One stage of `edge_deployment.stages` (see shared/config.py), as the functions need it."""

    name: str
    thing_groups: tuple[str, ...]
    rollout: RolloutPolicy
    poll_interval_seconds: int
    soak_minutes: int
    manual_approval: bool
    approval_timeout_hours: int

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["thing_groups"] = list(self.thing_groups)
        document["rollout"] = self.rollout.to_json()
        return document

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Stage:
        groups = raw["thing_groups"]
        if not isinstance(groups, list) or not groups or not all(isinstance(g, str) and g for g in groups):
            raise ValueError(f"stage {raw.get('name')!r}: thing_groups must be a non-empty list of names")
        return cls(
            name=str(raw["name"]),
            thing_groups=tuple(groups),
            rollout=RolloutPolicy.from_json(raw["rollout"]),
            poll_interval_seconds=int(raw["poll_interval_seconds"]),
            soak_minutes=int(raw["soak_minutes"]),
            manual_approval=bool(raw["manual_approval"]),
            approval_timeout_hours=int(raw["approval_timeout_hours"]),
        )


@dataclass(frozen=True)
class HealthBounds:
    """`edge_deployment.health`: what a healthy device of a stage shows over the soak window."""

    min_frames: int
    max_failed_frame_rate: float
    max_latency_p95_ms: float
    max_defect_rate_gap: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> HealthBounds:
        return cls(
            min_frames=int(raw["min_frames"]),
            max_failed_frame_rate=float(raw["max_failed_frame_rate"]),
            max_latency_p95_ms=float(raw["max_latency_p95_ms"]),
            max_defect_rate_gap=float(raw["max_defect_rate_gap"]),
        )


# --------------------------------------------------------------------------------------------------
# 1. Starting a stage
# --------------------------------------------------------------------------------------------------


def group_members(iot: Any, thing_group: str, *, limit: int | None = None) -> list[str]:
    """Thing names of the group's devices (all of them, or the first `limit`)."""
    found: list[str] = []
    token: str | None = None
    while True:
        request: dict[str, Any] = {"thingGroupName": thing_group, "maxResults": 250 if limit is None else limit}
        if token:
            request["nextToken"] = token
        with transient_errors():
            page = iot.list_things_in_thing_group(**request)
        found += [str(thing) for thing in page.get("things", [])]
        token = page.get("nextToken")
        if not token or (limit is not None and len(found) >= limit):
            return found if limit is None else found[:limit]


def stage_devices(iot: Any, stage: Mapping[str, Any]) -> list[str]:
    """Thing names of every device in the stage's thing groups, now."""
    return [thing for group in stage["thing_groups"] for thing in group_members(iot, group["name"])]


def previous_deployment(greengrass: Any, target_arn: str) -> dict[str, Any] | None:
    """The group's latest deployment (id and components as deployed), or None when it never had one."""
    with transient_errors():
        listed = greengrass.list_deployments(targetArn=target_arn, historyFilter="LATEST_ONLY")
    for summary in listed.get("deployments", []):
        if not summary.get("isLatestForTarget", True):
            continue
        with transient_errors():
            deployment = greengrass.get_deployment(deploymentId=summary["deploymentId"])
        return {"deployment_id": deployment["deploymentId"], "components": deployment.get("components") or {}}
    return None


def _component_exists(greengrass: Any, arn: str) -> bool:
    try:
        with transient_errors():
            greengrass.describe_component(arn=arn)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return False
        raise
    return True


def start_stage(
    greengrass: Any,
    iot: Any,
    *,
    stage: Stage,
    index: int,
    count: int,
    group_arn: Any,
    partition: str,
    region: str,
    account: str,
    now: datetime,
    on_demand: bool = False,
) -> dict[str, Any]:
    """Step 1 of a stage: its groups checked and what they run now recorded (the state machine keeps it).

    `group_arn(name)` is a thing group's ARN. StageInputError names the group or version that stops the stage.
    A rollback on demand (`on_demand`) never puts back what the stage runs now (the version a person wants
    to leave, perhaps deleted already), so those versions need not exist.
    """
    where = f"stage {stage.name} (edge_deployment.stages[{index}])"
    groups = []
    devices = 0
    for name in stage.thing_groups:
        try:
            with transient_errors():
                iot.describe_thing_group(thingGroupName=name)
        except ClientError as error:
            if error_code(error) != "ResourceNotFoundException":
                raise
            raise StageInputError(
                f"{where}: thing group {name} does not exist; create it (aws iot create-thing-group "
                f"--thing-group-name {name}) or change the stage's thing_groups. Nothing was deployed."
            ) from None
        members = len(group_members(iot, name, limit=1))
        if not members:
            raise StageInputError(
                f"{where}: thing group {name} has no devices, so the stage could not be judged; add its devices "
                "(edge_deployment/register_device.py) or remove the group from the stage. Nothing was deployed."
            )
        arn = group_arn(name)
        previous = previous_deployment(greengrass, arn)
        # what a rollback on demand leaves is never put back: its versions need not exist
        put_back = {} if on_demand else ((previous or {}).get("components") or {})
        for component, spec in sorted(put_back.items()):
            if component.startswith("aws."):
                continue  # AWS-provided components are not this account's to delete
            version = str(spec.get("componentVersion"))
            own = component_arn(partition=partition, region=region, account=account, name=component, version=version)
            if not _component_exists(greengrass, own):
                raise StageInputError(
                    f"{where}: thing group {name} runs {component} {version}, which no longer exists, so the stage "
                    "could not be put back if it fails; deploy an existing version to the group first. "
                    "Nothing was deployed."
                )
        devices += members
        groups.append({"name": name, "arn": arn, "previous": previous})
    return {
        "index": index,
        "name": stage.name,
        "last": index == count - 1,
        "next_index": index + 1,
        "thing_groups": groups,
        "poll_seconds": stage.poll_interval_seconds,
        "soak_seconds": stage.soak_minutes * 60,
        "manual_approval": stage.manual_approval,
        "approval_timeout_seconds": stage.approval_timeout_hours * 3600,
        "started_at": now.astimezone(UTC).isoformat(),
        "on_demand": on_demand,
    }


ROLLBACK_TRIGGER = "rollback"


def on_demand_stages(request: Mapping[str, Any] | None, names: Sequence[str]) -> list[int] | None:
    """The stage indexes a rollback on demand runs (its `stages`, all when it names none); None for a promotion."""
    if not request or request.get("trigger") != ROLLBACK_TRIGGER:
        return None
    named = request.get("stages") or list(names)
    if not isinstance(named, list) or not all(isinstance(name, str) for name in named):
        raise StageInputError(f"rollback: stages must be a list of stage names, got {named!r}")
    unknown = [name for name in named if name not in names]
    if unknown:
        raise StageInputError(
            f"rollback: no stage named {', '.join(unknown)} (the stages are {', '.join(names)}); nothing was deployed"
        )
    return sorted(names.index(name) for name in set(named))


def stage_deployment_name(deployment_name: str, *, thing_group: str, fleet_group: str) -> str:
    """The app's deployment name on its own thing group (as before stages); the group's name added elsewhere."""
    return deployment_name if thing_group == fleet_group else f"{deployment_name}-{thing_group}"[:256]


# --------------------------------------------------------------------------------------------------
# 2. The stage's rollout: one deployment per thing group
# --------------------------------------------------------------------------------------------------


def combine_rollouts(statuses: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One answer for the stage from each group's `rollout_status` ((group, status) pairs).

    It has finished when every group has, or one group failed (the stage is then rolled back at once);
    its outcome is the worst of them.
    """
    outcomes = [status.get("outcome") for _, status in statuses]
    finished_bad = [o for o in outcomes if o in _BAD_ORDER or o == REDEPLOY]
    counts: dict[str, int] = {}
    for _, status in statuses:
        for key, value in (status.get("counts") or {}).items():
            counts[key] = counts.get(key, 0) + int(value)
    devices = [{**device, "thing_group": group} for group, status in statuses for device in status.get("devices") or []]
    if REDEPLOY in outcomes:
        outcome: str | None = REDEPLOY
    elif finished_bad:
        outcome = min(finished_bad, key=_BAD_ORDER.index)
    elif not all(status.get("finished") for _, status in statuses):
        outcome = None
    elif SUPERSEDED in outcomes:
        outcome = SUPERSEDED
    elif all(o == NO_DEVICES for o in outcomes):
        outcome = NO_DEVICES
    else:
        outcome = SUCCEEDED
    return {
        "finished": outcome is not None,
        "outcome": outcome,
        "counts": counts,
        "devices": devices,
        "groups": [{"thing_group": group, **dict(status)} for group, status in statuses],
    }


def stage_rollout_report(
    combined: Mapping[str, Any],
    *,
    stage: Mapping[str, Any],
    deployment: Mapping[str, Any],
    package: Mapping[str, Any],
    deployment_names: Mapping[str, str],
) -> dict[str, Any]:
    """Subject and message of the stage's rollout (each group's report), and the failure a bad one rolls back."""
    parts = []
    for group in combined["groups"]:
        name = group["thing_group"]
        group_deployment = next(d for d in deployment["deployments"] if d["thing_group"] == name)
        parts.append(
            report(
                group,
                deployment={**group_deployment, "components": deployment.get("components")},
                package=package,
                thing_group=name,
                deployment_name=deployment_names[name],
            )["message"]
        )
    outcome = str(combined["outcome"])
    subject = f"Edge rollout {outcome}: model package v{package.get('version')}, stage {stage['name']}"
    answer: dict[str, Any] = {"subject": subject[:100], "message": "\n\n".join(parts)}
    if outcome in _BAD_ORDER:
        answer["failure"] = failure(
            f"the stage's rollout ended {outcome}",
            [(d["thing"], f"{d['status']} - {d['reason']}") for d in combined["devices"]],
        )
    return answer


def failure(summary: str, devices: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Why a stage is rolled back: a summary and each failing device with what it broke."""
    listed = [{"thing": thing, "problem": problem} for thing, problem in devices]
    return {
        "summary": summary,
        "devices": listed[:MAX_LISTED_DEVICES],
        "more_devices": max(0, len(listed) - MAX_LISTED_DEVICES),
    }


# --------------------------------------------------------------------------------------------------
# 3 and 4. What the devices say: heartbeats with the new version, the health rule
# --------------------------------------------------------------------------------------------------


def _stat(*, namespace: str, metric: str, dimensions: Mapping[str, str], stat: str, period: int) -> dict[str, Any]:
    return {
        "Metric": {
            "Namespace": namespace,
            "MetricName": metric,
            "Dimensions": [{"Name": name, "Value": value} for name, value in dimensions.items()],
        },
        "Period": period,
        "Stat": stat,
    }


def _window_period(start: datetime, end: datetime) -> int:
    """One period covering the window (whole minutes, as CloudWatch requires)."""
    return max(60, math.ceil((end - start).total_seconds() / 60) * 60)


def _metric_results(
    cloudwatch: Any, queries: Sequence[tuple[str, dict[str, Any]]], *, start: datetime, end: datetime
) -> Iterable[dict[str, Any]]:
    """Every MetricDataResult of the queries over [start, end], asked in batches and gathered across pages."""
    for offset in range(0, len(queries), MAX_QUERIES):
        batch = queries[offset : offset + MAX_QUERIES]
        request: dict[str, Any] = {
            "MetricDataQueries": [{"Id": qid, "MetricStat": stat, "ReturnData": True} for qid, stat in batch],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampDescending",
        }
        while True:
            try:
                with transient_errors():
                    page = cloudwatch.get_metric_data(**request)
            except ClientError as error:
                raise HealthQueryError(
                    f"the devices' metrics could not be read (CloudWatch GetMetricData: {error_code(error)}: "
                    f"{error.response.get('Error', {}).get('Message', '')})"
                ) from None
            yield from page.get("MetricDataResults", [])
            if not page.get("NextToken"):
                break
            request["NextToken"] = page["NextToken"]


def metric_values(
    cloudwatch: Any, queries: Sequence[tuple[str, dict[str, Any]]], *, start: datetime, end: datetime
) -> dict[str, float | None]:
    """Query id -> the statistic over [start, end] (None: no data point), asked in batches."""
    values: dict[str, float | None] = {}
    stats = {query_id: str(stat["Stat"]) for query_id, stat in queries}
    for result in _metric_results(cloudwatch, queries, start=start, end=end):
        found = [float(value) for value in result.get("Values") or []]
        previous = values.get(result["Id"])
        if previous is not None:
            found.append(previous)
        values[result["Id"]] = _combine(stats[result["Id"]], found) if found else None
    return values


def counter_rise(points: Iterable[tuple[datetime, float]], *, since: datetime) -> float | None:
    """How much a device's running total rose from `since` on (None: no value inside the window).

    The total counts from the device component's process start, and a new model does not restart that
    process, so its value at `since` holds failures of earlier models: only the rise counts. The rise is
    taken from the last value before the window (the failures after that heartbeat happened on the new
    model, which was serving by `since`); without one, from the window's first value. A value lower than
    the one before it means the component restarted and its total began again at 0, so that value is
    all rise (a Maximum minus Minimum would instead count the old process's lifetime failures).
    """
    ordered = sorted(points)
    inside = [value for moment, value in ordered if moment >= since]
    if not inside:
        return None
    before = [value for moment, value in ordered if moment < since]
    previous = before[-1] if before else inside[0]
    rise = 0.0
    for value in inside:
        rise += value - previous if value >= previous else value
        previous = value
    return rise


def counter_rises(
    cloudwatch: Any, queries: Sequence[tuple[str, dict[str, Any]]], *, start: datetime, end: datetime
) -> dict[str, float | None]:
    """Query id -> `counter_rise` over [start, end] of a running total asked per minute (Stat Maximum, Period 60).

    The query reaches COUNTER_LOOKBACK before `start` for the last value before the window.
    """
    points: dict[str, list[tuple[datetime, float]]] = {query_id: [] for query_id, _ in queries}
    for result in _metric_results(cloudwatch, queries, start=start - COUNTER_LOOKBACK, end=end):
        moments = [_utc(moment) for moment in result.get("Timestamps") or []]
        points[result["Id"]] += zip(moments, [float(value) for value in result.get("Values") or []], strict=True)
    return {query_id: counter_rise(found, since=start) for query_id, found in points.items()}


def _utc(moment: datetime | str) -> datetime:
    parsed = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _combine(stat: str, found: Sequence[float]) -> float:
    """One figure from the values of one query: one period covers the window, but its start may be aligned
    so that the window spans two, and a page may end between them."""
    if stat == "Sum":
        return float(sum(found))
    if stat == "Average":
        return float(sum(found) / len(found))
    return float(max(found))  # Maximum, p95: the larger (a bound holds on the worst part)


def serving_status(
    cloudwatch: Any,
    iot: Any,
    *,
    stage: Mapping[str, Any],
    namespace: str,
    fleet_group: str,
    model_version: str,
    since: datetime,
    now: datetime,
    deadline: datetime,
) -> dict[str, Any]:
    """Step 3, one look: has every device of the stage sent a heartbeat with `model_version` since `since`?"""
    devices = stage_devices(iot, stage)
    if not devices:  # emptied after the stage began (or its rollout found none): nobody served the model
        groups = ", ".join(group["name"] for group in stage["thing_groups"])
        return {
            "devices": 0,
            "serving": 0,
            "missing": [],
            "confirmed_at": now.astimezone(UTC).isoformat(),
            "finished": True,
            "outcome": NOT_SERVING,
            "failure": failure(
                f"stage {stage['name']}: thing group(s) {groups} have no devices left, so no device served model "
                f"version {model_version}; the stage is not promoted",
                [],
            ),
        }
    queries = [
        (
            f"q{index}_heartbeats",
            _stat(
                namespace=namespace,
                metric=HEARTBEATS_BY_VERSION,
                dimensions={"ThingGroup": fleet_group, "Device": thing, "ModelVersion": model_version},
                stat="Sum",
                period=_window_period(since, now),
            ),
        )
        for index, thing in enumerate(devices)
    ]
    values = metric_values(cloudwatch, queries, start=since, end=now) if queries else {}
    missing = [thing for index, thing in enumerate(devices) if not values.get(f"q{index}_heartbeats")]
    answer: dict[str, Any] = {
        "devices": len(devices),
        "serving": len(devices) - len(missing),
        "missing": missing[:MAX_LISTED_DEVICES],
        "confirmed_at": now.astimezone(UTC).isoformat(),
    }
    if not missing:
        return {**answer, "finished": True, "outcome": SUCCEEDED}
    if now < deadline:
        return {**answer, "finished": False, "outcome": None}
    minutes = (now - since).total_seconds() / 60
    return {
        **answer,
        "finished": True,
        "outcome": NOT_SERVING,
        "failure": failure(
            f"{len(missing)} of {len(devices)} devices did not report model version {model_version} in a heartbeat "
            f"within {minutes:.0f} minutes",
            [
                (
                    thing,
                    f"no heartbeat with model version {model_version} (the new model did not load, the device "
                    "is offline, or it still runs the previous version)",
                )
                for thing in missing
            ],
        ),
    }


@dataclass(frozen=True)
class DeviceSample:
    """One device's telemetry over the soak window (the metrics runtime/telemetry.py writes)."""

    thing: str
    heartbeats_new_version: float  # heartbeats that named the new model version
    frames: float
    defect_frames: float
    failed_frames: float  # frames the device failed to process during the window (its running total's rise)
    latency_p95_ms: float | None
    expected_empty_share: float | None  # 1 - the model's test split detection rate, as the device loaded model.json


def judge(sample: DeviceSample, bounds: HealthBounds, *, model_version: str) -> list[str]:
    """The health rule: every bound the device broke, in words with its figures (empty: healthy)."""
    problems = []
    if not sample.heartbeats_new_version:
        problems.append(f"no heartbeat with model version {model_version} during the soak")
    if sample.frames < bounds.min_frames:
        problems.append(f"served {sample.frames:.0f} frames, fewer than min_frames {bounds.min_frames}")
    processed = sample.frames + sample.failed_frames
    if processed:
        failed_rate = sample.failed_frames / processed
        if failed_rate > bounds.max_failed_frame_rate:
            problems.append(
                f"failed frame rate {failed_rate:.3f} above max_failed_frame_rate {bounds.max_failed_frame_rate:g} "
                f"({sample.failed_frames:.0f} of {processed:.0f})"
            )
    if sample.latency_p95_ms is not None and sample.latency_p95_ms > bounds.max_latency_p95_ms:
        problems.append(
            f"p95 latency {sample.latency_p95_ms:.0f} ms above max_latency_p95_ms {bounds.max_latency_p95_ms:g}"
        )
    if sample.frames:
        rate = sample.defect_frames / sample.frames
        if sample.expected_empty_share is None:
            problems.append(
                f"defect rate {rate:.3f} cannot be judged: the device reported no test split figures "
                "(model.json without test_statistics)"
            )
        else:
            expected = 1.0 - sample.expected_empty_share
            if abs(rate - expected) > bounds.max_defect_rate_gap:
                problems.append(
                    f"defect rate {rate:.3f} differs from the test split's {expected:.3f} by more than "
                    f"max_defect_rate_gap {bounds.max_defect_rate_gap:g}"
                )
    return problems


_HEALTH_METRICS = (
    ("heartbeats", HEARTBEATS_BY_VERSION, "Sum"),
    ("frames", FRAMES, "Sum"),
    ("defects", DEFECT_FRAMES, "Sum"),
    ("latency_p95", LATENCY, "p95"),
    ("expected_empty", EXPECTED_EMPTY, "Average"),
)


def device_samples(
    cloudwatch: Any,
    *,
    devices: Sequence[str],
    namespace: str,
    fleet_group: str,
    model_version: str,
    start: datetime,
    end: datetime,
) -> list[DeviceSample]:
    """Each device's sample of the window, from the per-device metrics (one GetMetricData call per 500 queries)."""
    period = _window_period(start, end)
    queries = []
    for index, thing in enumerate(devices):
        for key, metric, stat in _HEALTH_METRICS:
            dimensions = {"ThingGroup": fleet_group, "Device": thing}
            if metric == HEARTBEATS_BY_VERSION:
                dimensions["ModelVersion"] = model_version
            queries.append(
                (
                    f"q{index}_{key}",
                    _stat(namespace=namespace, metric=metric, dimensions=dimensions, stat=stat, period=period),
                )
            )
    values = metric_values(cloudwatch, queries, start=start, end=end) if queries else {}
    failed_queries = [
        (
            f"q{index}_failed",
            _stat(
                namespace=namespace,
                metric=FRAMES_FAILED,
                dimensions={"ThingGroup": fleet_group, "Device": thing},
                stat="Maximum",
                period=60,  # per minute: a restart (the total falling) shows; the waits stay within 15 days
            ),
        )
        for index, thing in enumerate(devices)
    ]
    values |= counter_rises(cloudwatch, failed_queries, start=start, end=end) if failed_queries else {}

    def value(index: int, key: str) -> float | None:
        return values.get(f"q{index}_{key}")

    return [
        DeviceSample(
            thing=thing,
            heartbeats_new_version=value(index, "heartbeats") or 0.0,
            frames=value(index, "frames") or 0.0,
            defect_frames=value(index, "defects") or 0.0,
            failed_frames=value(index, "failed") or 0.0,
            latency_p95_ms=value(index, "latency_p95"),
            expected_empty_share=value(index, "expected_empty"),
        )
        for index, thing in enumerate(devices)
    ]


def health_status(
    cloudwatch: Any,
    iot: Any,
    *,
    stage: Mapping[str, Any],
    bounds: HealthBounds,
    namespace: str,
    fleet_group: str,
    model_version: str,
    since: datetime,
    now: datetime,
) -> dict[str, Any]:
    """Step 4: the health rule on every device of the stage over [since, now]; the failure names each bound broken."""
    devices = stage_devices(iot, stage)
    if not devices:
        raise StageInputError(f"stage {stage['name']}: its thing groups have no devices left; nothing to judge")
    samples = device_samples(
        cloudwatch,
        devices=devices,
        namespace=namespace,
        fleet_group=fleet_group,
        model_version=model_version,
        start=since,
        end=now,
    )
    broken = [(sample.thing, judge(sample, bounds, model_version=model_version)) for sample in samples]
    failing = [(thing, "; ".join(problems)) for thing, problems in broken if problems]
    minutes = (now - since).total_seconds() / 60
    verdict = "passed" if not failing else f"failed by {len(failing)}"
    answer: dict[str, Any] = {
        "healthy": not failing,
        "gated": True,
        "verdict": f"health gate {verdict} of {len(devices)} devices over {minutes:.0f} minutes",
        "devices": len(devices),
        "window_minutes": round(minutes, 1),
        "samples": [asdict(sample) for sample in samples[:MAX_LISTED_DEVICES]],
    }
    if failing:
        answer["failure"] = failure(
            f"{len(failing)} of {len(devices)} devices failed the health gate over {minutes:.0f} minutes",
            failing,
        )
    return answer


# --------------------------------------------------------------------------------------------------
# 5. Rolling a stage back
# --------------------------------------------------------------------------------------------------


def _device_lines(failure_reason: Mapping[str, Any], *, heading: str) -> list[str]:
    """The failing devices of a notification, each with its problem (a blank line after; none: nothing)."""
    devices = failure_reason.get("devices") or []
    if not devices:
        return []
    lines = [heading, *(f"  - {d['thing']}: {d['problem']}" for d in devices)]
    if failure_reason.get("more_devices"):
        lines.append(f"  ... and {failure_reason['more_devices']} more")
    return [*lines, ""]


def rollback_requests(
    stage: Mapping[str, Any],
    *,
    deployment_names: Mapping[str, str],
    rollout: RolloutPolicy,
    token: Any,
) -> list[tuple[str, dict[str, Any]]]:
    """(group, CreateDeployment request) putting each group of the stage back on what it ran when the stage began.

    The previous deployment's components go back as they were deployed (versions and configuration);
    a group that had none gets a deployment without components (Greengrass removes this app's).
    `token(group)` is the request's idempotency token.
    """
    requests = []
    for group in stage["thing_groups"]:
        previous = group.get("previous") or {}
        components = previous.get("components") or {}
        request = deployment_request(
            thing_group_arn=group["arn"],
            deployment_name=deployment_names[group["name"]],
            components={name: str(spec.get("componentVersion")) for name, spec in components.items()},
            rollout=rollout,
            client_token=token(group["name"]),
        )
        request["components"] = {name: dict(spec) for name, spec in sorted(components.items())}
        requests.append((group["name"], request))
    return requests


def rollback_report(
    combined: Mapping[str, Any],
    *,
    stage: Mapping[str, Any],
    failure_reason: Mapping[str, Any],
    package: Mapping[str, Any],
    stages_after: Sequence[str],
) -> dict[str, str]:
    """The notification of a stage that was stopped and put back."""
    outcome = str(combined["outcome"])
    lines = [
        f"Stage {stage['name']} did not pass with model package v{package.get('version')} ({package.get('arn')}): "
        f"{failure_reason.get('summary')}.",
        "",
    ]
    lines += _device_lines(failure_reason, heading="Failing devices and the bound each broke:")
    for group in stage["thing_groups"]:
        previous = group.get("previous")
        versions = (
            ", ".join(f"{n} {s.get('componentVersion')}" for n, s in sorted((previous.get("components") or {}).items()))
            if previous
            else "no components (the group had no deployment before)"
        )
        lines.append(f"Thing group {group['name']} put back on: {versions}")
    lines.append(
        f"Rollback {'finished: ' + outcome if outcome == SUCCEEDED else 'did not succeed: ' + outcome}"
        + "".join(f"; {d['thing']}: {d['status']} - {d['reason']}" for d in combined.get("devices") or [])
    )
    if stages_after:
        lines.append(f"Not deployed (the model stopped here): stage(s) {', '.join(stages_after)}.")
    subject = f"Edge rollout stopped at stage {stage['name']}: model package v{package.get('version')} rolled back"
    return {"subject": subject[:100], "message": "\n".join(lines)}


def on_demand_failure_report(
    *, stage: Mapping[str, Any], failure_reason: Mapping[str, Any], package: Mapping[str, Any]
) -> dict[str, str]:
    """The notification of a rollback on demand whose stage did not confirm the older version.

    Nothing is redeployed: what the stage ran when it began is the version the person wanted to leave.
    """
    lines = [
        f"Rollback on demand to model package v{package.get('version')} ({package.get('arn')}) did not finish at "
        f"stage {stage['name']}: {failure_reason.get('summary')}.",
        "",
    ]
    lines += _device_lines(failure_reason, heading="Devices that did not confirm it:")
    groups = ", ".join(group["name"] for group in stage["thing_groups"])
    lines += [
        f"Nothing else was deployed: thing group(s) {groups} keep the deployment of v{package.get('version')} this "
        "rollback made (the version they ran before is the one the rollback leaves, so it is not put back).",
        "Check the devices named above, then start the rollback again; the stages after this one that it named "
        "were not run.",
    ]
    subject = f"Edge rollback on demand stopped at stage {stage['name']}: model package v{package.get('version')}"
    return {"subject": subject[:100], "message": "\n".join(lines)}


def deadline_after(started: str, minutes: int) -> datetime:
    return datetime.fromisoformat(started) + timedelta(minutes=minutes)
