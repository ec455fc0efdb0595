"""The fleet's alarms, dashboard and retraining rule as synthesized.

The metrics the alarms and the dashboard read are checked against the metrics the record processor
actually emits (its EMF documents for real rows), so a renamed metric or dimension fails here.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template

from edge_deployment.fleet_monitoring import FleetMonitoring
from edge_deployment.naming import edge_names
from edge_deployment.runtime.retraining import RetrainingConfig
from edge_deployment.runtime.telemetry import Row, TelemetryConfig, metric_documents
from edge_deployment.runtime_bundle import HANDLER_MODULE, runtime_bundle
from shared.config import FleetMonitoringSettings
from shared.contracts import DeviceDetection, DeviceHeartbeat, DeviceResult
from tests.helpers.asl import render_token, role_statements

PREFIX = "tag-inspect-edge-deployment-"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:tag-inspect-edge-deployment-notifications"
ALARMS = {
    "latency-p95",
    "rejected-messages",
    "workflow-failed",
    "empty-frames-drift",
    "uncertainty-drift",
    "defect-rate-anomaly",
    "drift-events-undelivered",
    "approval-events-undelivered",
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else render_token(value, {})


@pytest.fixture(scope="module")
def template(workflow_stack: Any) -> dict[str, Any]:
    return workflow_stack.template  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            name = _text(resource["Properties"]["AlarmName"])
            found[name.removeprefix(PREFIX)] = resource["Properties"]
    return found


@pytest.fixture(scope="module")
def emitted(settings: Any) -> set[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) of every metric the processor emits for a result and a heartbeat."""
    edge = settings.edge_deployment
    config = TelemetryConfig(
        thing_group=edge.thing_group_name,
        namespace=f"{settings.project.prefix}/Devices",
        uncertainty_band=edge.uncertainty_band,
    )
    moment = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    result = DeviceResult("cam", "f.jpg", moment, "1.0.1", 12.0, (DeviceDetection((1, 2, 3, 4), 0, "scratch", 0.5),))
    heartbeat = DeviceHeartbeat(
        "cam", moment, "serving", "1.0.1", None, "fp32", "cpu", 5, 0, 5, 9.0, 0, True, 0, 0, 0,
        expected_uncertain_frame_rate=0.1,
    )  # fmt: skip
    rows = [
        Row("results", "2026-12-04", "cam", {}, result=result),
        Row("heartbeats", "2026-12-04", "cam", {}, heartbeat=heartbeat),
        Row("rejected", "2026-12-04", "cam", {}, reason="x"),
    ]
    found = set()
    for document in metric_documents(rows, config, moment):
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        for metric in directive["Metrics"]:
            for dimensions in directive["Dimensions"]:
                found.add((directive["Namespace"], metric["Name"], frozenset(dimensions)))
    return found


def _metric_stats(alarm: dict[str, Any]) -> list[tuple[str, str, frozenset[str]]]:
    """(namespace, metric, dimension names) an alarm reads (single metric or metric math)."""
    if "MetricName" in alarm:
        return [(alarm["Namespace"], alarm["MetricName"], frozenset(d["Name"] for d in alarm.get("Dimensions", [])))]
    stats = []
    for query in alarm["Metrics"]:
        if "MetricStat" in query:
            metric = query["MetricStat"]["Metric"]
            stats.append(
                (
                    _text(metric["Namespace"]),
                    metric["MetricName"],
                    frozenset(d["Name"] for d in metric.get("Dimensions", [])),
                )
            )
    return stats


def test_every_alarm_is_named_for_the_app_and_notifies_its_topic(alarms: dict[str, dict[str, Any]]) -> None:
    assert set(alarms) == ALARMS
    for name, alarm in alarms.items():
        assert [_text(action) for action in alarm["AlarmActions"]] == [TOPIC], name


def test_the_device_alarms_read_metrics_the_processor_emits(
    alarms: dict[str, dict[str, Any]], emitted: set[tuple[str, str, frozenset[str]]]
) -> None:
    device_alarms = ALARMS - {"workflow-failed", "drift-events-undelivered", "approval-events-undelivered"}
    for name in device_alarms:
        stats = _metric_stats(alarms[name])
        assert stats, name
        for stat in stats:
            assert stat in emitted, (name, stat)


def test_the_latency_alarm_uses_the_configured_p95_bound(alarms: dict[str, dict[str, Any]], settings: Any) -> None:
    alarm = alarms["latency-p95"]
    assert alarm["ExtendedStatistic"] == "p95"
    assert alarm["Threshold"] == settings.edge_deployment.monitoring.latency_p95_ms
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["TreatMissingData"] == "notBreaching"


def test_the_uncertainty_drift_compares_the_line_with_the_test_split_over_the_drift_window(
    alarms: dict[str, dict[str, Any]], settings: Any
) -> None:
    monitoring = settings.edge_deployment.monitoring
    alarm = alarms["uncertainty-drift"]
    (expression,) = [q for q in alarm["Metrics"] if "Expression" in q]
    assert expression["Expression"] == (
        f"IF(frames >= {monitoring.min_frames_for_drift}, uncertain / frames - expected, 0)"
    )
    periods = {q["MetricStat"]["Period"] for q in alarm["Metrics"] if "MetricStat" in q}
    assert periods == {monitoring.drift_minutes * 60}
    assert alarm["Threshold"] == monitoring.uncertainty_drift_tolerance and alarm["EvaluationPeriods"] == 1


def test_the_empty_frame_drift_must_last_the_whole_drift_window(
    alarms: dict[str, dict[str, Any]], settings: Any
) -> None:
    alarm = alarms["empty-frames-drift"]
    periods = settings.edge_deployment.monitoring.drift_minutes // 5
    assert (alarm["Period"], alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (300, periods, periods)


def test_the_defect_rate_alarm_uses_an_anomaly_band_of_the_configured_width(
    template: dict[str, Any], alarms: dict[str, dict[str, Any]], settings: Any
) -> None:
    alarm = alarms["defect-rate-anomaly"]
    band = settings.edge_deployment.monitoring.defect_rate_band
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    assert queries["band"]["Expression"] == f"ANOMALY_DETECTION_BAND(rate, {band:g})"
    assert queries["rate"]["Expression"] == "defects / frames"
    assert alarm["ThresholdMetricId"] == "band"
    assert alarm["ComparisonOperator"] == "LessThanLowerOrGreaterThanUpperThreshold"
    (detector,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::AnomalyDetector"]
    detected = detector["Properties"]["MetricMathAnomalyDetector"]["MetricDataQueries"]
    assert {q["Id"] for q in detected} == {"defects", "frames", "rate"}
    assert [q["Expression"] for q in detected if q["Id"] == "rate"] == ["defects / frames"]


def test_only_the_two_drift_alarms_going_off_start_the_retraining_function(template: dict[str, Any]) -> None:
    rules = {lid: r for lid, r in template["Resources"].items() if r["Type"] == "AWS::Events::Rule"}
    (rule,) = [r for lid, r in rules.items() if lid.startswith("MonitoringDriftRule")]
    pattern = rule["Properties"]["EventPattern"]
    assert pattern["source"] == ["aws.cloudwatch"] and pattern["detail-type"] == ["CloudWatch Alarm State Change"]
    assert pattern["detail"] == {"state": {"value": ["ALARM"]}}
    assert sorted(_text(arn) for arn in pattern["resources"]) == [
        f"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{PREFIX}empty-frames-drift",
        f"arn:aws:cloudwatch:eu-west-1:123456789012:alarm:{PREFIX}uncertainty-drift",
    ]
    (target,) = rule["Properties"]["Targets"]
    function_id = target["Arn"]["Fn::GetAtt"][0]
    assert function_id.startswith("MonitoringRetrainFunction")
    assert "DeadLetterConfig" in target and target["RetryPolicy"]["MaximumRetryAttempts"] == 4


def test_the_retraining_function_may_only_start_the_labeling_workflow_pipeline_and_notify(
    template: dict[str, Any],
) -> None:
    (function_id,) = [
        lid for lid, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Function" and lid.startswith("MonitoringRetrainFunction")
    ]  # fmt: skip
    function = template["Resources"][function_id]["Properties"]
    config = RetrainingConfig.from_json(_text(function["Environment"]["Variables"]["RETRAINING_CONFIG"]))
    assert config.pipeline == "tag-inspect-labeling-workflow-pipeline"
    assert config.min_interval_hours == 24
    role_id = function["Role"]["Fn::GetAtt"][0]
    granted = {}
    for statement in role_statements(template, role_id):
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        for action in actions:
            granted.setdefault(action, set()).update(
                _text(r)
                for r in (statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]])
            )
    pipeline = "arn:aws:codepipeline:eu-west-1:123456789012:tag-inspect-labeling-workflow-pipeline"
    assert granted["codepipeline:StartPipelineExecution"] == {pipeline}
    assert granted["codepipeline:ListPipelineExecutions"] == {pipeline}
    assert granted["sns:Publish"] == {TOPIC}
    assert not [a for a in granted if a.startswith("codepipeline:") and a not in (
        "codepipeline:StartPipelineExecution", "codepipeline:ListPipelineExecutions"
    )]  # fmt: skip


def test_without_retraining_on_drift_there_is_no_function_and_no_rule(settings: Any) -> None:
    edge = settings.edge_deployment.model_copy(update={"monitoring": FleetMonitoringSettings(retrain_on_drift=False)})
    configured = settings.model_copy(update={"edge_deployment": edge})
    stack = cdk.Stack(cdk.App(), "Monitoring", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    FleetMonitoring(
        stack,
        "Monitoring",
        settings=configured,
        names=edge_names(configured, account="123456789012", region="eu-west-1"),
        state_machine=sfn.StateMachine(
            stack, "Workflow", definition_body=sfn.DefinitionBody.from_chainable(sfn.Pass(stack, "Pass"))
        ),
        telemetry_logs=logs.LogGroup(stack, "Logs"),
        function_code=runtime_bundle(),
        retrain_handler=f"{HANDLER_MODULE}.retrain_on_drift_alarm",
    )
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::Lambda::Function", 0)
    template.resource_count_is("AWS::Events::Rule", 0)
    names = {_text(a["Properties"]["AlarmName"]) for a in template.find_resources("AWS::CloudWatch::Alarm").values()}
    assert names == {PREFIX + name for name in ALARMS - {"drift-events-undelivered", "approval-events-undelivered"}}


def test_the_dashboard_graphs_metrics_the_processor_emits_and_reads_the_processor_s_log(
    template: dict[str, Any], emitted: set[tuple[str, str, frozenset[str]]]
) -> None:
    (dashboard_id, dashboard) = next(
        (lid, r) for lid, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Dashboard"
    )
    assert dashboard["Properties"]["DashboardName"] == "tag-inspect-edge-fleet"
    body = json.loads(render_token(dashboard["Properties"]["DashboardBody"], {}))
    kinds = [widget["type"] for widget in body["widgets"]]
    assert kinds.count("metric") >= 7 and "log" in kinds and "alarm" in kinds and "text" in kinds
    names = {metric for _, metric, _ in emitted}
    namespace = "tag-inspect/Devices"
    referenced = set()
    for widget in body["widgets"]:
        for line in widget["properties"].get("metrics", []):
            for item in line:
                if isinstance(item, dict) and "expression" in item:
                    for name in re.findall(r'MetricName="(\w+)"', item["expression"]):
                        referenced.add(name)
                        assert f"{{{namespace},ThingGroup," in item["expression"]
            if line and line[0] == namespace:
                referenced.add(line[1])
    assert referenced and referenced <= names, referenced - names
    assert {"Heartbeats", "Frames", "DefectFrames", "LatencyMs", "UploadsPending", "DeviceHeartbeats"} <= referenced
    (log_widget,) = [w for w in body["widgets"] if w["type"] == "log"]
    assert "stats latest(ModelVersion)" in log_widget["properties"]["query"]
    assert log_widget["properties"]["query"].startswith("SOURCE '")
    assert dashboard_id.startswith("MonitoringDashboard")


def test_the_dashboard_preview_draws_every_widget_of_the_synthesized_body(tmp_path: Path) -> None:
    """The picture in the edge guide comes from the template: every widget, every alarm by name."""
    from tests.tools.dashboard_preview import PICTURES, render, synthesized_dashboards, widget_lines

    dashboards = synthesized_dashboards()
    assert sorted(dashboards) == [
        "tag-inspect-edge-fleet",
        "tag-inspect-labeling",
        "tag-inspect-loop",
        "tag-inspect-training",
    ]
    assert all(sum(name.endswith(suffix) for suffix in PICTURES) == 1 for name in dashboards)
    name, body = "tag-inspect-edge-fleet", dashboards["tag-inspect-edge-fleet"]
    (alarms,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert set(widget_lines(alarms)) == {
        PREFIX + a for a in ALARMS - {"drift-events-undelivered", "approval-events-undelivered"}
    }
    for widget in body["widgets"]:
        assert widget_lines(widget), widget.get("properties", {}).get("title")
    picture = render(body, tmp_path / "dashboard.png", title=name)
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 20_000


def test_a_run_that_times_out_mid_stage_raises_the_workflow_alarm(alarms: dict[str, dict[str, Any]]) -> None:
    # nothing rolls back a run the state machine's timeout stops; this alarm is what tells someone
    counted = {
        query["MetricStat"]["Metric"]["MetricName"]
        for query in alarms["workflow-failed"]["Metrics"]
        if "MetricStat" in query
    }
    assert counted == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}
