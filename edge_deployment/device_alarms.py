"""Each device's own alarms, made and removed with the device by register_device.

A device that falls silent has no metric left to alarm on in a thing-group query, so each device gets
its own alarms, named after it (the notification names the device), as it gets its own IoT policy:

* `<alarm prefix>device-silent-<thing>`: no heartbeat for `monitoring.silent_minutes` minutes
  (missing data counts as silence);
* `<alarm prefix>uploads-dropped-<thing>`: the device's upload queue dropped frames in the last
  five minutes (its running count of dropped frames went up);
* `<alarm prefix>messages-dropped-<thing>`: results or heartbeats the nucleus refused and the device's
  outbox could not keep (full or not writable) were lost in the last five minutes.

Both notify the edge app's topic, which accepts alarms whose names start with the app's alarm prefix.
"""

from __future__ import annotations

from typing import Any

from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.telemetry import HEARTBEAT_COUNT, PUBLISH_DROPPED, UPLOADS_DROPPED
from shared.config import FleetMonitoringSettings

# Each device's alarms are named <alarm prefix><kind>-<thing>.
SILENT, UPLOADS_DROPPED_KIND, MESSAGES_DROPPED = "device-silent", "uploads-dropped", "messages-dropped"
DEVICE_ALARM_KINDS = (SILENT, UPLOADS_DROPPED_KIND, MESSAGES_DROPPED)


def _alarm_name(names: EdgeNames, kind: str, thing_name: str) -> str:
    return f"{names.alarm_prefix}{kind}-{thing_name}"


def silent_alarm_name(names: EdgeNames, thing_name: str) -> str:
    return _alarm_name(names, SILENT, thing_name)


def uploads_dropped_alarm_name(names: EdgeNames, thing_name: str) -> str:
    return _alarm_name(names, UPLOADS_DROPPED_KIND, thing_name)


def messages_dropped_alarm_name(names: EdgeNames, thing_name: str) -> str:
    return _alarm_name(names, MESSAGES_DROPPED, thing_name)


def alarm_names(names: EdgeNames, thing_name: str) -> list[str]:
    """The names of one device's alarms, in the order device_alarm_requests makes them."""
    return [_alarm_name(names, kind, thing_name) for kind in DEVICE_ALARM_KINDS]


def _rise_alarm(
    names: EdgeNames, dimensions: list[dict[str, str]], *, name: str, description: str, metric: str, label: str
) -> dict[str, Any]:
    """An alarm on the rise of a running count the device reports (it counts since the component started)."""
    return {
        "AlarmName": name,
        "AlarmDescription": description,
        "Metrics": [
            {
                "Id": "total",
                "MetricStat": {
                    "Metric": {"Namespace": names.metrics_namespace, "MetricName": metric, "Dimensions": dimensions},
                    "Period": 300,
                    "Stat": "Maximum",
                },
                "ReturnData": False,
            },
            # The rise of the running count is what was dropped in the period.
            {"Id": "newly_dropped", "Expression": "DIFF(total)", "Label": label, "ReturnData": True},
        ],
        "EvaluationPeriods": 1,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "notBreaching",
        "AlarmActions": [names.notification_topic_arn],
        "OKActions": [names.notification_topic_arn],
    }


def device_alarm_requests(
    names: EdgeNames, monitoring: FleetMonitoringSettings, thing_name: str
) -> list[dict[str, Any]]:
    """The PutMetricAlarm requests of one device's alarms."""
    dimensions = [{"Name": "ThingGroup", "Value": names.thing_group}, {"Name": "Device", "Value": thing_name}]
    actions = {"AlarmActions": [names.notification_topic_arn], "OKActions": [names.notification_topic_arn]}
    minutes = monitoring.silent_minutes
    return [
        {
            "AlarmName": silent_alarm_name(names, thing_name),
            "AlarmDescription": f"Device {thing_name} sent no heartbeat for {minutes} minutes: offline, stopped or "
            "its inference component is not running (Greengrass logs on the device; edge_deployment/README.md).",
            "Namespace": names.metrics_namespace,
            "MetricName": HEARTBEAT_COUNT,
            "Dimensions": dimensions,
            "Statistic": "Sum",
            "Period": 60,
            "EvaluationPeriods": minutes,
            "DatapointsToAlarm": minutes,
            "Threshold": 1.0,
            "ComparisonOperator": "LessThanThreshold",
            "TreatMissingData": "breaching",
            **actions,
        },
        _rise_alarm(
            names,
            dimensions,
            name=uploads_dropped_alarm_name(names, thing_name),
            description=f"Device {thing_name} dropped frames meant for labeling: its offline queue is full "
            "(long offline, or edge_deployment.offline_queue_mb too small).",
            metric=UPLOADS_DROPPED,
            label="frames dropped",
        ),
        _rise_alarm(
            names,
            dimensions,
            name=messages_dropped_alarm_name(names, thing_name),
            description=f"Device {thing_name} lost results or heartbeats: the nucleus refused them (spool full or "
            "IPC down) and the component's outbox was full or not writable (outboxMaxMB; section 5 of the guide).",
            metric=PUBLISH_DROPPED,
            label="messages dropped",
        ),
    ]


def put_device_alarms(
    cloudwatch: Any, names: EdgeNames, monitoring: FleetMonitoringSettings, thing_name: str
) -> list[str]:
    """Create (or update) the device's alarms; their names."""
    requests = device_alarm_requests(names, monitoring, thing_name)
    for request in requests:
        cloudwatch.put_metric_alarm(**request)
    return [request["AlarmName"] for request in requests]


def delete_device_alarms(cloudwatch: Any, names: EdgeNames, thing_name: str) -> list[str]:
    """Delete the device's alarms that exist; their names (none: nothing to delete)."""
    wanted = alarm_names(names, thing_name)
    found = [alarm["AlarmName"] for alarm in cloudwatch.describe_alarms(AlarmNames=wanted).get("MetricAlarms", [])]
    if found:
        cloudwatch.delete_alarms(AlarmNames=found)
    return found
