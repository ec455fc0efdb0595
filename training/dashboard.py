"""The training app's CloudWatch dashboard `<prefix>-training`: runs, gate verdicts, test mAP per run.

The evaluation step prints its result as one JSON line (`{"evaluation": ..., "gate": ...}`, see
training/steps/cli.py) to the processing job's log, which Logs Insights reads field by field: each
run's verdict, its test mAP50-95 (`gate.value`) and mAP50, and the dataset it was trained on. A
registered version is a run whose verdict is `register`.
"""

from __future__ import annotations

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from shared.config import Settings
from shared.dashboards import app_dashboard, function_errors, log_table, workflow_runs
from training import APP

PROCESSING_JOB_LOGS = "/aws/sagemaker/ProcessingJobs"
TRAINING_JOB_LOGS = "/aws/sagemaker/TrainingJobs"


class TrainingDashboard(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        state_machine: sfn.IStateMachine,
        champion_function: lambda_.IFunction,
    ) -> None:
        super().__init__(scope, construct_id)
        evaluations = ["filter ispresent(gate.verdict)"]
        self.dashboard: cloudwatch.Dashboard = app_dashboard(
            self,
            "Dashboard",
            settings=settings,
            app=APP,
            intro="# Training\nRuns of the training workflow, the quality gate's verdicts and the test mAP of each run "
            "(training/README.md: how to read the report and approve a model).",
            rows=[
                [
                    workflow_runs("Training runs", state_machine.state_machine_arn),
                    log_table(
                        "Test mAP50-95 per run (the gate's metric)",
                        [PROCESSING_JOB_LOGS],
                        [*evaluations, "stats max(gate.value) as mAP50_95, max(evaluation.mAP50) as mAP50 by bin(1d)"],
                        width=8,
                        chart=True,
                    ),
                    function_errors("Champion lookup errors", [champion_function]),
                ],
                [
                    log_table(
                        "Gate verdicts (register, no change, fail)",
                        [PROCESSING_JOB_LOGS],
                        [
                            *evaluations,
                            "fields @timestamp, gate.verdict as verdict, gate.value as mAP50_95,"
                            " evaluation.mAP50 as mAP50, gate.difference as vs_champion,"
                            " gate.dataset_version as dataset, gate.reason as reason",
                            "sort @timestamp desc",
                            "limit 30",
                        ],
                        width=24,
                    ),
                ],
                [
                    log_table(
                        "Best validation mAP50-95 of each training job",
                        [TRAINING_JOB_LOGS],
                        [
                            'filter @message like "#best"',
                            r"parse @message /mAP50-95=(?<best>[0-9.]+)/",
                            "fields @timestamp, @logStream as job, best",
                            "sort @timestamp desc",
                            "limit 20",
                        ],
                        width=24,
                    ),
                ],
            ],
        )
