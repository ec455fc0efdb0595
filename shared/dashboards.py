"""The widgets the apps' CloudWatch dashboards are made of: workflow runs, function errors, log queries.

Every app has a dashboard (`<prefix>-<app>`) built from these; the edge app also draws the fleet
(`edge_deployment/fleet_monitoring.py`) and the overview of the whole loop (`loop_dashboard`). A
workflow's runs come from Step Functions' own metrics, found by the state machine's ARN (which
`shared.names` computes), so a dashboard can show another app's workflow without a reference to its stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from shared.config import AppName, Settings
from shared.names import ResourceNames

HOUR = cdk.Duration.hours(1)
# Step Functions' metrics of a run's end, and the label each gets on a dashboard.
RUN_OUTCOMES = {"ExecutionsSucceeded": "succeeded", "ExecutionsFailed": "failed", "ExecutionsTimedOut": "timed out"}


def state_machine_arn(stack: cdk.Stack, names: ResourceNames, app: AppName) -> str:
    return stack.format_arn(
        service="states",
        resource="stateMachine",
        resource_name=names.workflow_state_machine(app),
        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
    )


def workflow_runs(title: str, arn: str, *, width: int = 8) -> cloudwatch.GraphWidget:
    """Runs of a workflow per hour by how they ended (a state machine of any app, by its ARN)."""
    return cloudwatch.GraphWidget(
        title=title,
        left=[
            cloudwatch.Metric(
                namespace="AWS/States",
                metric_name=metric,
                dimensions_map={"StateMachineArn": arn},
                statistic="Sum",
                period=HOUR,
                label=label,
            )
            for metric, label in RUN_OUTCOMES.items()
        ],
        stacked=True,
        width=width,
    )


def function_errors(title: str, functions: Sequence[lambda_.IFunction], *, width: int = 8) -> cloudwatch.GraphWidget:
    """Errors of each of the app's functions per hour (a failed step is retried or reported by the workflow)."""
    return cloudwatch.GraphWidget(
        title=title,
        left=[
            function.metric_errors(period=HOUR, statistic="Sum", label=function.node.id.removesuffix("Function"))
            for function in functions
        ],
        width=width,
    )


def log_table(
    title: str, log_groups: Sequence[str], query: Sequence[str], *, width: int = 12, chart: bool = False
) -> cloudwatch.LogQueryWidget:
    """A Logs Insights query over the apps' structured logs, as a table (or a bar chart over time)."""
    return cloudwatch.LogQueryWidget(
        title=title,
        log_group_names=list(log_groups),
        query_lines=list(query),
        view=cloudwatch.LogQueryVisualizationType.BAR if chart else cloudwatch.LogQueryVisualizationType.TABLE,
        width=width,
    )


def app_dashboard(
    scope: Construct,
    construct_id: str,
    *,
    settings: Settings,
    app: AppName,
    intro: str,
    rows: Sequence[Sequence[cloudwatch.IWidget]],
) -> cloudwatch.Dashboard:
    """The app's dashboard `<prefix>-<app slug>`: a line of text, then the rows of widgets."""
    dashboard = cloudwatch.Dashboard(
        scope,
        construct_id,
        dashboard_name=f"{settings.project.prefix}-{app.replace('_', '-')}",
        default_interval=cdk.Duration.days(7),
    )
    dashboard.add_widgets(cloudwatch.TextWidget(markdown=intro, width=24, height=2))
    for row in rows:
        dashboard.add_widgets(*row)
    return dashboard


def state_machine_log_group(names: ResourceNames, app: AppName) -> str:
    """The log group of an app's workflow (`shared.building_blocks.workflow_state_machine` names it so)."""
    return f"/aws/vendedlogs/states/{names.workflow_state_machine(app)}"


class LoopDashboard(Construct):
    """`<prefix>-loop`: the whole loop on one page. Each app's workflow runs (found by ARN), the fleet's frames
    and defect rate, and the alarms that restart the loop. It lives in the edge app, where the fleet's
    metrics are."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: ResourceNames,
        fleet_metrics: Sequence[cloudwatch.IMetric],
        alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        apps: list[tuple[AppName, str]] = [
            ("labeling", "1. Labeling rounds"),
            ("training", "2. Training runs"),
            ("edge_deployment", "3. Deployments to the devices"),
        ]
        self.dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=f"{settings.project.prefix}-loop", default_interval=cdk.Duration.days(14)
        )
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown="# The loop\nFrames the devices are unsure of go back to labeling, new labels train a model, "
                "an approved model goes to the devices; a drift alarm starts the next round. Each app's own "
                f"dashboard: `{settings.project.prefix}-labeling`, `-training`, `-edge-fleet`.",
                width=24,
                height=2,
            )
        )
        self.dashboard.add_widgets(*[workflow_runs(title, state_machine_arn(stack, names, app)) for app, title in apps])
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="4. The line (all devices)", left=list(fleet_metrics), width=12),
            cloudwatch.AlarmStatusWidget(title="Alarms that restart the loop", alarms=list(alarms), width=12, height=6),
        )
