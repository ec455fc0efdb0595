"""The stacks of the training app that its asset pipeline deploys.

* `<prefix>-training-registry`: the model bucket, its key and the model package group (retained;
  the edge deployment app reads them by name).
* `<prefix>-training-workflow`: the SageMaker pipeline (definition, step code, roles, champion
  lookup Lambda), the workflow state machine that runs it, and the workflow pipeline that runs the state
  machine. It reaches the registry stack's resources by name and alias, not by reference.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from shared.app_stacks import AppWorkflowStack
from shared.building_blocks import ServiceLogRetention
from shared.config import Settings
from shared.names import resource_names
from training import APP
from training.dashboard import TrainingDashboard
from training.job_limits import MAX_WAIT_LIMIT_SECONDS, PROCESSING_MAX_RUNTIME_SECONDS
from training.model_registry import ModelRegistry
from training.training_pipeline import TrainingPipeline
from training.workflow import TrainingWorkflow


def workflow_timeout(settings: Settings) -> cdk.Duration:
    """Longest a pipeline execution can take: three processing steps, the training wait, some slack."""
    training = min(2 * settings.training.max_runtime_seconds, MAX_WAIT_LIMIT_SECONDS)
    return cdk.Duration.seconds(3 * PROCESSING_MAX_RUNTIME_SECONDS + training + 6 * 3600)


class ModelRegistryStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        prefix = settings.project.prefix
        super().__init__(
            scope,
            construct_id,
            stack_name=f"{prefix}-training-registry",
            description=f"{prefix}: model bucket, key and model package group of the training app (retained)",
            **kwargs,
        )
        names = resource_names(settings, account=self.account, region=self.region)
        self.registry = ModelRegistry(self, "ModelRegistry", names=names, cache_days=settings.training.cache_days)


class WorkflowStack(AppWorkflowStack):
    app = APP
    description = "SageMaker training pipeline, its workflow and workflow pipeline"

    def build(self) -> sfn.IStateMachine:
        settings, names = self.settings, self.names
        self.training_pipeline = TrainingPipeline(self, "TrainingPipeline", settings=settings, names=names)
        # SageMaker's own log groups of the jobs never expire unless told to.
        self.job_log_retention = ServiceLogRetention(
            self,
            "JobLogRetention",
            log_group_names=["/aws/sagemaker/ProcessingJobs", "/aws/sagemaker/TrainingJobs"],
            retention_days=settings.toolchain.log_retention_days,
        )
        self.workflow = TrainingWorkflow(
            self,
            "Workflow",
            names=names,
            pipeline_name=names.training_pipeline,
            pipeline_arn=self.training_pipeline.pipeline_arn,
            poll_interval=cdk.Duration.seconds(settings.training.status_poll_seconds),
            timeout=workflow_timeout(settings),
        )
        self.dashboard = TrainingDashboard(
            self,
            "Dashboard",
            settings=settings,
            state_machine=self.workflow.state_machine,
            champion_function=self.training_pipeline.champion_function,
        )
        return self.workflow.state_machine


class TrainingStage(cdk.Stage):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.registry = ModelRegistryStack(self, "Registry", settings=settings)
        self.workflow = WorkflowStack(self, "Workflow", settings=settings)
        self.workflow.add_stack_dependency(
            self.registry, "the pipeline writes to the model bucket and registers in the group"
        )
