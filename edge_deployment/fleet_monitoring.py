"""The fleet's alarms, its dashboard, and retraining when the model drifts.

Alarms (to the edge app's notification topic; thresholds in `edge_deployment.monitoring`):

* `latency-p95`: the thing group's p95 inference latency above `latency_p95_ms` for 15 minutes;
* `defect-rate-anomaly`: the share of flagged frames outside the band CloudWatch anomaly detection
  learned for it (`defect_rate_band` standard deviations) for 15 minutes: the line, or the model,
  changed;
* `uncertainty-drift`: over `drift_minutes`, the share of frames whose top score is in the uncertainty
  band exceeds what the serving model showed on its test split (model.json, reported by the devices)
  by more than `uncertainty_drift_tolerance` (windows with fewer than `min_frames_for_drift` frames
  are not judged);
* `empty-frames-drift`: a device's share of frames without a detection has left its model's test
  split (the device's own test, in its heartbeat) for `drift_minutes`: a model gone blind;
* `rejected-messages`: device messages the telemetry store could not read (kept under rejected/);
* `workflow-failed`: an edge deployment run failed, timed out or was aborted.

Each device's own silence, dropped-upload and dropped-message alarms are made by register_device (device_alarms.py).
With `retrain_on_drift`, the two drift alarms start the labeling workflow pipeline through a function
that starts at most one run per `retrain_min_hours` and notifies either way (runtime/retraining.py).
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from edge_deployment import APP
from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.retraining import RetrainingConfig
from edge_deployment.runtime.telemetry import (
    DEFECT_FRAMES,
    EMPTY_FRAMES_DRIFTING,
    EXPECTED_UNCERTAIN,
    FRAMES,
    HEARTBEAT_COUNT,
    HEARTBEATS_BY_VERSION,
    LATENCY,
    PUBLISH_DROPPED,
    PUBLISH_PENDING,
    REJECTED_MESSAGES,
    UNCERTAIN_FRAMES,
    UPLOADS_DROPPED,
    UPLOADS_PENDING,
)
from shared.building_blocks import EventDeadLetters, grant_publish_by_name, log_retention, pipeline_arn, python_function
from shared.config import AppName, Settings
from shared.dashboards import LoopDashboard
from shared.guardrails import allow
from shared.names import resource_names
from shared.workflow_states import app_topic

FIVE_MINUTES = cdk.Duration.minutes(5)
DRIFT_ALARMS = ("uncertainty-drift", "empty-frames-drift")
DEFECT_RATE = "defects / frames"
LABELING_APP: AppName = "labeling"  # its workflow pipeline starts the loop


class FleetMonitoring(Construct):
    """Alarms over the device metrics and the edge workflow, the fleet dashboard, retraining on drift."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: EdgeNames,
        state_machine: sfn.IStateMachine,
        telemetry_logs: logs.ILogGroup,
        function_code: Any,
        retrain_handler: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        monitoring = settings.edge_deployment.monitoring
        self._namespace = names.metrics_namespace
        self._group = {"ThingGroup": names.thing_group}
        topic = app_topic(self, names.notification_topic)
        self.alarms: dict[str, cloudwatch.CfnAlarm | cloudwatch.Alarm] = {}

        def alarm(name: str, **props: Any) -> cloudwatch.Alarm:
            created = cloudwatch.Alarm(self, _camel(name), alarm_name=f"{names.alarm_prefix}{name}", **props)
            created.add_alarm_action(cloudwatch_actions.SnsAction(topic))
            created.add_ok_action(cloudwatch_actions.SnsAction(topic))
            self.alarms[name] = created
            return created

        alarm(
            "latency-p95",
            alarm_description=f"p95 inference latency of {names.thing_group} above {monitoring.latency_p95_ms:g} ms "
            "for 15 minutes (slow device, wrong execution provider, larger model).",
            metric=self.metric(LATENCY, "p95"),
            threshold=monitoring.latency_p95_ms,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=3,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm(
            "rejected-messages",
            alarm_description="Device messages the telemetry store could not read: kept with the reason in the "
            "rejected table (edge_deployment/README.md, Monitoring).",
            metric=self.metric(REJECTED_MESSAGES, "Sum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        alarm(
            "workflow-failed",
            alarm_description="An edge deployment run failed, timed out or was aborted (its notification says why).",
            metric=cloudwatch.MathExpression(
                expression="failed + timed_out + aborted",
                using_metrics={
                    "failed": state_machine.metric_failed(period=FIVE_MINUTES, statistic="Sum"),
                    "timed_out": state_machine.metric_timed_out(period=FIVE_MINUTES, statistic="Sum"),
                    "aborted": state_machine.metric_aborted(period=FIVE_MINUTES, statistic="Sum"),
                },
                period=FIVE_MINUTES,
                label="runs not succeeded",
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        drift_periods = monitoring.drift_minutes // 5
        alarm(
            "empty-frames-drift",
            alarm_description=f"A device of {names.thing_group} has seen frames without a detection at another rate "
            f"than its model's test split for {monitoring.drift_minutes} minutes: a model gone blind, or a changed "
            "line. Starts retraining when edge_deployment.monitoring.retrain_on_drift is on.",
            metric=self.metric(EMPTY_FRAMES_DRIFTING, "Maximum"),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=drift_periods,
            datapoints_to_alarm=drift_periods,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        window = cdk.Duration.minutes(monitoring.drift_minutes)
        alarm(
            "uncertainty-drift",
            alarm_description=f"Over {monitoring.drift_minutes} minutes, more frames of {names.thing_group} had a "
            "top score in the uncertainty band than the model's test split, by over "
            f"{monitoring.uncertainty_drift_tolerance:g} (windows under min_frames_for_drift frames are not judged). "
            "Starts retraining when retrain_on_drift is on.",
            metric=cloudwatch.MathExpression(
                expression=f"IF(frames >= {monitoring.min_frames_for_drift}, uncertain / frames - expected, 0)",
                using_metrics={
                    "frames": self.metric(FRAMES, "Sum", period=window),
                    "uncertain": self.metric(UNCERTAIN_FRAMES, "Sum", period=window),
                    "expected": self.metric(EXPECTED_UNCERTAIN, "Average", period=window),
                },
                period=window,
                label="uncertain share above the test split's",
            ),
            threshold=monitoring.uncertainty_drift_tolerance,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self._defect_rate_anomaly(names, monitoring.defect_rate_band, topic)

        if monitoring.retrain_on_drift:
            self._retraining(
                settings, names, stack=stack, topic=topic, function_code=function_code, handler=retrain_handler
            )

        self.dashboard = self._dashboard(names, state_machine, telemetry_logs)
        self.loop_dashboard = LoopDashboard(
            self,
            "LoopDashboard",
            settings=settings,
            names=resource_names(settings, account=stack.account, region=stack.region),
            fleet_metrics=[
                self.metric(FRAMES, "Sum").with_(label="frames", period=cdk.Duration.hours(1)),
                self.metric(DEFECT_FRAMES, "Sum").with_(label="flagged frames", period=cdk.Duration.hours(1)),
            ],
            alarms=[_as_alarm(self, name, self.alarms[name]) for name in DRIFT_ALARMS],
        )

    # -- metrics ------------------------------------------------------------------------------------
    def metric(self, name: str, statistic: str, *, period: cdk.Duration = FIVE_MINUTES) -> cloudwatch.Metric:
        """A device metric of the whole thing group."""
        return cloudwatch.Metric(
            namespace=self._namespace, metric_name=name, dimensions_map=self._group, statistic=statistic, period=period
        )

    def _search(self, name: str, statistic: str, *, by: str = "Device") -> cloudwatch.MathExpression:
        """One line per device (or model version): SEARCH finds those that reported in the graph's time range."""
        schema = "{" + f"{self._namespace},ThingGroup,{by}" + "}"
        search = f'{schema} MetricName="{name}" ThingGroup="{self._group["ThingGroup"]}"'
        query = f"SEARCH('{search}', '{statistic}', 300)"
        return cloudwatch.MathExpression(expression=query, label="", period=FIVE_MINUTES, using_metrics={})

    # -- the anomaly band of the defect rate ---------------------------------------------------------
    def _defect_rate_anomaly(self, names: EdgeNames, band: float, topic: sns.ITopic) -> None:
        """An anomaly detection alarm on the expression defects / frames (L1: CDK has no L2 for it)."""
        counts = {"defects": DEFECT_FRAMES, "frames": FRAMES}
        group = names.thing_group
        detector = cloudwatch.CfnAnomalyDetector(
            self,
            "DefectRateDetector",
            metric_math_anomaly_detector=cloudwatch.CfnAnomalyDetector.MetricMathAnomalyDetectorProperty(
                metric_data_queries=[
                    *[
                        cloudwatch.CfnAnomalyDetector.MetricDataQueryProperty(
                            id=query_id,
                            return_data=False,
                            metric_stat=cloudwatch.CfnAnomalyDetector.MetricStatProperty(
                                metric=cloudwatch.CfnAnomalyDetector.MetricProperty(
                                    namespace=self._namespace,
                                    metric_name=metric,
                                    dimensions=[
                                        cloudwatch.CfnAnomalyDetector.DimensionProperty(name="ThingGroup", value=group)
                                    ],
                                ),
                                period=300,
                                stat="Sum",
                            ),
                        )
                        for query_id, metric in counts.items()
                    ],
                    cloudwatch.CfnAnomalyDetector.MetricDataQueryProperty(
                        id="rate", expression=DEFECT_RATE, label="defect rate", return_data=True
                    ),
                ]
            ),
        )
        queries = [
            *[_stat_query(query_id, self._namespace, metric, group) for query_id, metric in counts.items()],
            cloudwatch.CfnAlarm.MetricDataQueryProperty(
                id="rate", expression=DEFECT_RATE, label="defect rate", return_data=True
            ),
        ]
        created = cloudwatch.CfnAlarm(
            self,
            "DefectRateAnomaly",
            alarm_name=f"{names.alarm_prefix}defect-rate-anomaly",
            alarm_description=f"The share of flagged frames of {names.thing_group} left its normal band for 15 "
            "minutes: more (or fewer) scratched tags, a changed line, or a model that changed its mind.",
            metrics=[
                *queries,
                cloudwatch.CfnAlarm.MetricDataQueryProperty(
                    id="band",
                    expression=f"ANOMALY_DETECTION_BAND(rate, {band:g})",
                    label="normal band",
                    return_data=True,
                ),
            ],
            threshold_metric_id="band",
            comparison_operator="LessThanLowerOrGreaterThanUpperThreshold",
            evaluation_periods=3,
            datapoints_to_alarm=3,
            treat_missing_data="notBreaching",
            alarm_actions=[topic.topic_arn],
            ok_actions=[topic.topic_arn],
        )
        created.add_dependency(detector)
        self.alarms["defect-rate-anomaly"] = created

    # -- retraining on drift --------------------------------------------------------------------------
    def _retraining(
        self,
        settings: Settings,
        names: EdgeNames,
        *,
        stack: cdk.Stack,
        topic: sns.ITopic,
        function_code: Any,
        handler: str,
    ) -> None:
        shared = resource_names(settings, account=stack.account, region=stack.region)
        labeling_pipeline = shared.workflow_pipeline(LABELING_APP)
        config = RetrainingConfig(
            pipeline=labeling_pipeline,
            topic_arn=topic.topic_arn,
            min_interval_hours=settings.edge_deployment.monitoring.retrain_min_hours,
        )
        self.retrain_function: lambda_.Function = python_function(
            self,
            "RetrainFunction",
            code_dir=function_code,
            handler=handler,
            description="Drift alarm: starts the labeling workflow pipeline, at most once per retrain_min_hours",
            environment={"RETRAINING_CONFIG": config.to_json()},
            log_retention=log_retention(settings.toolchain.log_retention_days),
        )
        allow(
            self.retrain_function,
            ["codepipeline:ListPipelineExecutions", "codepipeline:StartPipelineExecution"],
            [pipeline_arn(stack, labeling_pipeline)],
        )
        grant_publish_by_name(
            self.retrain_function,
            topic_name=names.notification_topic,
            key_alias=shared.notification_key_alias(APP),
            stack=stack,
        )
        rule_name = f"{names.prefix}-edge-drift-retrains"
        dead_letters = EventDeadLetters(
            self,
            "RetrainDeadLetters",
            key_alias=f"alias/{names.prefix}-edge-drift-dead-letters",
            rule_arn=stack.format_arn(service="events", resource="rule", resource_name=rule_name),
            alarm_name=f"{names.alarm_prefix}drift-events-undelivered",
            alarm_topic_arn=config.topic_arn,
            description="drift alarms that did not reach the retraining function",
        )
        alarm_arns = [
            stack.format_arn(
                service="cloudwatch",
                resource="alarm",
                resource_name=f"{names.alarm_prefix}{name}",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
            )
            for name in DRIFT_ALARMS
        ]
        self.retrain_rule = events.Rule(
            self,
            "DriftRule",
            rule_name=rule_name,
            description="A drift alarm going off starts the labeling workflow pipeline (rate-limited)",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=alarm_arns,
                detail={"state": {"value": ["ALARM"]}},
            ),
            targets=[
                targets.LambdaFunction(
                    self.retrain_function,
                    retry_attempts=4,
                    max_event_age=cdk.Duration.hours(2),
                    dead_letter_queue=dead_letters.queue,
                )
            ],
        )

    # -- dashboard ------------------------------------------------------------------------------------
    def _dashboard(
        self, names: EdgeNames, state_machine: sfn.IStateMachine, telemetry_logs: logs.ILogGroup
    ) -> cloudwatch.Dashboard:
        rate = cloudwatch.MathExpression(
            expression=DEFECT_RATE,
            using_metrics={"defects": self.metric(DEFECT_FRAMES, "Sum"), "frames": self.metric(FRAMES, "Sum")},
            label="defect rate",
            period=FIVE_MINUTES,
        )
        uncertain = cloudwatch.MathExpression(
            expression="uncertain / frames",
            using_metrics={"uncertain": self.metric(UNCERTAIN_FRAMES, "Sum"), "frames": self.metric(FRAMES, "Sum")},
            label="uncertain share",
            period=FIVE_MINUTES,
        )
        dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"{names.prefix}-edge-fleet", default_interval=cdk.Duration.hours(24)
        )
        width = 8
        dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown=f"# {names.thing_group}\nResults and health of the devices (telemetry store; "
                "edge_deployment/README.md, Monitoring). Device metrics per 5 minutes.",
                width=24,
                height=2,
            ),
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=[_as_alarm(self, name, a) for name, a in self.alarms.items()], width=24, height=3
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Devices online (heartbeats per device)",
                left=[self._search(HEARTBEAT_COUNT, "Sum")],
                width=width,
            ),
            cloudwatch.GraphWidget(title="Frames per device", left=[self._search(FRAMES, "Sum")], width=width),
            cloudwatch.GraphWidget(
                title="Defect rate and uncertain share (thing group)",
                left=[
                    rate,
                    uncertain,
                    self.metric(EXPECTED_UNCERTAIN, "Average").with_(label="uncertain share, test split"),
                ],
                width=width,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Flagged frames per device", left=[self._search(DEFECT_FRAMES, "Sum")], width=width
            ),
            cloudwatch.GraphWidget(
                title="Inference latency (ms)",
                left=[
                    self.metric(LATENCY, "p50").with_(label="p50"),
                    self.metric(LATENCY, "p95").with_(label="p95"),
                ],
                right=[self._search(LATENCY, "p95")],
                width=width,
            ),
            cloudwatch.GraphWidget(
                title="Frames and messages waiting, and dropped (per device)",
                left=[self._search(UPLOADS_PENDING, "Maximum"), self._search(PUBLISH_PENDING, "Maximum")],
                right=[self._search(UPLOADS_DROPPED, "Maximum"), self._search(PUBLISH_DROPPED, "Maximum")],
                width=width,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.LogQueryWidget(
                title="Model version and status by device (last heartbeat)",
                log_group_names=[telemetry_logs.log_group_name],
                query_lines=[
                    f"filter ispresent({HEARTBEAT_COUNT}) and ispresent(ModelVersion)",
                    "stats latest(ModelVersion) as model, latest(Status) as status,"
                    " max(@timestamp) as last_heartbeat by Device",
                    "sort Device asc",
                ],
                view=cloudwatch.LogQueryVisualizationType.TABLE,
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Devices per model version (heartbeats)",
                left=[self._search(HEARTBEATS_BY_VERSION, "Sum", by="ModelVersion")],
                width=6,
            ),
            cloudwatch.GraphWidget(
                title="Deployments (edge workflow runs)",
                left=[
                    state_machine.metric_succeeded(period=cdk.Duration.hours(1), statistic="Sum", label="succeeded"),
                    state_machine.metric_failed(period=cdk.Duration.hours(1), statistic="Sum", label="failed"),
                    state_machine.metric_timed_out(period=cdk.Duration.hours(1), statistic="Sum", label="timed out"),
                ],
                width=6,
            ),
        )
        return dashboard


def _stat_query(
    query_id: str, namespace: str, metric: str, thing_group: str
) -> cloudwatch.CfnAlarm.MetricDataQueryProperty:
    return cloudwatch.CfnAlarm.MetricDataQueryProperty(
        id=query_id,
        return_data=False,
        metric_stat=cloudwatch.CfnAlarm.MetricStatProperty(
            metric=cloudwatch.CfnAlarm.MetricProperty(
                namespace=namespace,
                metric_name=metric,
                dimensions=[cloudwatch.CfnAlarm.DimensionProperty(name="ThingGroup", value=thing_group)],
            ),
            period=300,
            stat="Sum",
        ),
    )


def _as_alarm(scope: Construct, name: str, alarm: cloudwatch.CfnAlarm | cloudwatch.Alarm) -> cloudwatch.IAlarm:
    if isinstance(alarm, cloudwatch.Alarm):
        return alarm
    return cloudwatch.Alarm.from_alarm_arn(scope, f"{_camel(name)}Ref", alarm.attr_arn)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))
