"""The labeling app's CloudWatch dashboard `<prefix>-labeling`: rounds, images sent, labels written, failures.

Counts come from the functions' structured logs (Powertools writes each step's result as JSON), so the
dashboard needs no metric of its own: `images selected` (the round's selection) and `labels written`
(the last page of a round's write, `cursor.done`), and the workflow's own log for failed rounds.
"""

from __future__ import annotations

from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from labeling import APP
from labeling.workflow import LabelingWorkflow
from shared.config import Settings
from shared.dashboards import app_dashboard, function_errors, log_table, state_machine_log_group, workflow_runs
from shared.names import ResourceNames

WRITE_HANDLERS = ("write_labels", "write_label_studio_labels")  # Ground Truth's, Label Studio's


class LabelingDashboard(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: ResourceNames,
        workflow: LabelingWorkflow,
    ) -> None:
        super().__init__(scope, construct_id)
        (writer,) = [f for handler, f in workflow.backend_functions.items() if handler in WRITE_HANDLERS]
        backend = settings.labeling.backend.replace("_", " ")
        self.dashboard: cloudwatch.Dashboard = app_dashboard(
            self,
            "Dashboard",
            settings=settings,
            app=APP,
            intro=f"# Labeling ({backend})\nRounds of the labeling workflow, what they sent to people and what came "
            "back as verified labels (labeling/README.md).",
            rows=[
                [
                    workflow_runs("Labeling rounds", workflow.state_machine.state_machine_arn),
                    log_table(
                        "Images sent to labeling per day",
                        [workflow.select_images.log_group.log_group_name],
                        ['filter message = "images selected"', "stats sum(selection.images) as images by bin(1d)"],
                        width=8,
                        chart=True,
                    ),
                    log_table(
                        "Verified labels written per day",
                        [writer.log_group.log_group_name],
                        [
                            'filter message = "labels written" and cursor.done = 1',
                            "stats sum(cursor.written) as written, sum(cursor.rejected) as rejected by bin(1d)",
                        ],
                        width=8,
                        chart=True,
                    ),
                ],
                [
                    log_table(
                        "Failed rounds (and why)",
                        [state_machine_log_group(names, APP)],
                        [
                            'filter type = "ExecutionFailed"',
                            "fields @timestamp, execution_arn, details.error as error, details.cause as cause",
                            "sort @timestamp desc",
                            "limit 20",
                        ],
                        width=16,
                    ),
                    function_errors("Function errors", workflow.functions),
                ],
            ],
        )
