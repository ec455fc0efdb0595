"""Each device's own alarms: made by register_device with the device, written again, removed with it."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from edge_deployment.device_alarms import (
    alarm_names,
    delete_device_alarms,
    device_alarm_requests,
    messages_dropped_alarm_name,
    put_device_alarms,
    silent_alarm_name,
    uploads_dropped_alarm_name,
)
from edge_deployment.naming import edge_names
from edge_deployment.register_device import main
from shared.config import FleetMonitoringSettings
from tests.edge_deployment.conftest import ACCOUNT, REGION

THING = "line-1-cam-1"


@pytest.fixture
def names(settings):
    return edge_names(settings, account=ACCOUNT, region=REGION)


def test_the_silent_alarm_fires_on_missing_heartbeats_for_the_configured_minutes(names, settings):
    silent, _, _ = device_alarm_requests(names, FleetMonitoringSettings(silent_minutes=7), THING)
    assert silent["AlarmName"] == f"{names.alarm_prefix}device-silent-{THING}"
    assert silent["AlarmName"].startswith(names.alarm_prefix), "only the app's alarms may publish to its topic"
    assert (silent["Namespace"], silent["MetricName"]) == (f"{settings.project.prefix}/Devices", "Heartbeats")
    assert silent["Dimensions"] == [
        {"Name": "ThingGroup", "Value": names.thing_group},
        {"Name": "Device", "Value": THING},
    ]
    assert (silent["Period"], silent["EvaluationPeriods"], silent["DatapointsToAlarm"]) == (60, 7, 7)
    assert silent["ComparisonOperator"] == "LessThanThreshold" and silent["Threshold"] == 1.0
    assert silent["TreatMissingData"] == "breaching", "a silent device sends no data at all"
    topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:{settings.project.prefix}-edge-deployment-notifications"
    assert silent["AlarmActions"] == silent["OKActions"] == [topic]


@pytest.mark.parametrize(
    ("index", "alarm_name", "metric_name"),
    [
        (1, uploads_dropped_alarm_name, "UploadsDroppedTotal"),  # frames meant for labeling
        (2, messages_dropped_alarm_name, "PublishDroppedTotal"),  # results and heartbeats the outbox could not keep
    ],
)
def test_a_dropped_alarm_fires_when_the_device_s_running_count_rises(names, index, alarm_name, metric_name):
    dropped = device_alarm_requests(names, FleetMonitoringSettings(), THING)[index]
    assert dropped["AlarmName"] == alarm_name(names, THING)
    assert dropped["AlarmName"].startswith(names.alarm_prefix), "only the app's alarms may publish to its topic"
    metric, expression = dropped["Metrics"]
    assert metric["MetricStat"]["Metric"]["MetricName"] == metric_name
    assert metric["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "ThingGroup", "Value": names.thing_group},
        {"Name": "Device", "Value": THING},
    ]
    assert metric["MetricStat"]["Stat"] == "Maximum" and metric["ReturnData"] is False
    assert expression["Expression"] == f"DIFF({metric['Id']})" and expression["ReturnData"] is True
    assert (dropped["ComparisonOperator"], dropped["Threshold"]) == ("GreaterThanThreshold", 0.0)
    assert dropped["TreatMissingData"] == "notBreaching"
    assert dropped["AlarmActions"] == dropped["OKActions"] == [names.notification_topic_arn]


def test_the_requests_are_valid_cloudwatch_calls(names):
    cloudwatch = boto3.client("cloudwatch", region_name=REGION)  # requests checked strictly (tests/conftest.py)
    with Stubber(cloudwatch) as stub:
        for request in device_alarm_requests(names, FleetMonitoringSettings(), THING):
            stub.add_response("put_metric_alarm", {}, request)
        assert put_device_alarms(cloudwatch, names, FleetMonitoringSettings(), THING) == [
            silent_alarm_name(names, THING),
            uploads_dropped_alarm_name(names, THING),
            messages_dropped_alarm_name(names, THING),
        ]
        stub.assert_no_pending_responses()


def test_alarms_are_written_again_and_deleted_with_only_this_device_s(names):
    with mock_aws():
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        put_device_alarms(cloudwatch, names, FleetMonitoringSettings(), THING)
        put_device_alarms(cloudwatch, names, FleetMonitoringSettings(), "line-1-cam-2")
        put_device_alarms(cloudwatch, names, FleetMonitoringSettings(silent_minutes=30), THING)  # updated, not doubled
        alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms()["MetricAlarms"]}
        assert len(alarms) == 6 and alarms[silent_alarm_name(names, THING)]["EvaluationPeriods"] == 30
        assert sorted(delete_device_alarms(cloudwatch, names, THING)) == sorted(alarm_names(names, THING))
        remaining = sorted(a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"])
        assert remaining == sorted(alarm_names(names, "line-1-cam-2"))
        assert delete_device_alarms(cloudwatch, names, THING) == [], "deleting again finds nothing and fails nothing"


def test_registering_on_the_command_line_creates_the_alarms_and_removing_deletes_them(
    names, tmp_path, capsys, monkeypatch
):
    # moto has no Greengrass DeleteCoreDevice: the removal of thing and certificate is tested in test_register_device.
    monkeypatch.setattr(
        "edge_deployment.register_device.remove_device", lambda *_, thing_name, **__: [f"removed {thing_name}"]
    )
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        iot.create_thing_group(thingGroupName=names.thing_group)
        iot.create_role_alias(roleAlias=names.role_alias, roleArn=f"arn:aws:iam::{ACCOUNT}:role/token-exchange")
        assert main(["--thing-name", THING, "--region", REGION, "--output-dir", str(tmp_path / "d")]) == 0
        cloudwatch = boto3.client("cloudwatch", region_name=REGION)
        created = sorted(a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"])
        assert created == sorted(alarm_names(names, THING))
        capsys.readouterr()
        assert main(["--thing-name", THING, "--region", REGION, "--remove"]) == 0
        removal = capsys.readouterr().out
        assert cloudwatch.describe_alarms()["MetricAlarms"] == []
        assert f"removed {THING}" in removal and f"deleted alarm {silent_alarm_name(names, THING)}" in removal
