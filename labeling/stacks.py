"""The stacks of the labeling app that its asset pipeline deploys.

* `<prefix>-labeling-data`: the data bucket, its key, the label feature group (all retained; the stack asks
  for termination protection, which `cdk deploy` applies and CDK Pipelines does not) and the deploy-time
  label seeding. With `labeling.adopt_existing_data` the retained
  resources are used by name and this stack holds only the seeding (or does not exist).
* `<prefix>-labeling-label-studio` (only with `labeling.backend: label_studio` and no existing server's `url`):
  Label Studio on ECS Fargate with its database, load balancer and sign-in (`labeling/label_studio_server.py`).
  It holds the labelers' work, so the stack asks for termination protection too.
* `<prefix>-labeling-workflow`: the labeling round's state machine, its functions, the Ground Truth role
  and the workflow pipeline that runs the state machine. It finds the data resources by name and
  deploys after the data stack.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from labeling import APP
from labeling.dashboard import LabelingDashboard
from labeling.data_store import LabelDataStore, LabelSeeding
from labeling.label_studio_server import LabelStudioServer, deployed_server
from labeling.workflow import LabelingWorkflow
from shared.app_stacks import AppWorkflowStack
from shared.config import Settings
from shared.names import resource_names


def data_stack_name(prefix: str) -> str:
    return f"{prefix}-{APP}-data"


class DataStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        adopt = settings.labeling.adopt_existing_data
        super().__init__(
            scope,
            construct_id,
            stack_name=data_stack_name(settings.project.prefix),
            description=f"{settings.project.prefix}: labeling data (raw images, label feature group)"
            + (", adopted" if adopt else ""),
            termination_protection=not adopt,
            **kwargs,
        )
        names = resource_names(settings, account=self.account, region=self.region)
        self.data = LabelDataStore(self, "Data", settings=settings, names=names)
        self.seeding = (
            LabelSeeding(self, "Seeding", settings=settings, names=names, data_store=self.data)
            if settings.labeling.seed_labels_file
            else None
        )


def label_studio_stack_name(prefix: str) -> str:
    return f"{prefix}-{APP}-label-studio"


class LabelStudioServerStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        server = deployed_server(settings.labeling)
        if server is None:
            raise ValueError(
                "LabelStudioServerStack needs labeling.backend label_studio with labeling.label_studio.server"
            )
        super().__init__(
            scope,
            construct_id,
            stack_name=label_studio_stack_name(settings.project.prefix),
            description=f"{settings.project.prefix}: Label Studio for the labeling app (Fargate, PostgreSQL, sign-in)",
            termination_protection=True,
            **kwargs,
        )
        names = resource_names(settings, account=self.account, region=self.region)
        self.server = LabelStudioServer(self, "LabelStudio", settings=settings, names=names, server=server)


class WorkflowStack(AppWorkflowStack):
    app = APP
    description = "labeling workflow (Ground Truth rounds into the feature group)"

    def build(self) -> sfn.IStateMachine:
        self.labeling = LabelingWorkflow(self, "Labeling", settings=self.settings, names=self.names)
        self.dashboard = LabelingDashboard(
            self, "Dashboard", settings=self.settings, names=self.names, workflow=self.labeling
        )
        return self.labeling.state_machine


class LabelingStage(cdk.Stage):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        labeling = settings.labeling
        # Adopted data and no seed file: nothing for a data stack to hold (CloudFormation refuses empty stacks).
        self.data = (
            DataStack(self, "Data", settings=settings)
            if not labeling.adopt_existing_data or labeling.seed_labels_file
            else None
        )
        self.workflow = WorkflowStack(self, "Workflow", settings=settings)
        if self.data is not None:
            self.workflow.add_stack_dependency(
                self.data, "the workflow uses the data bucket, key and feature group by name"
            )
        # Label Studio deployed by the app: after the data it reads, before the workflow that calls it.
        self.label_studio = (
            LabelStudioServerStack(self, "LabelStudio", settings=settings)
            if deployed_server(labeling) is not None
            else None
        )
        if self.label_studio is not None:
            if self.data is not None:
                self.label_studio.add_stack_dependency(self.data, "Label Studio reads raw-images/ of the data bucket")
            self.workflow.add_stack_dependency(
                self.label_studio, "the round calls the server and reads its API token secret by name"
            )
