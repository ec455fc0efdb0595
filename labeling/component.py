"""The stacks of the labeling app that its asset pipeline deploys.

* `<prefix>-labeling-data`: the data bucket, its key, the label feature group (all retained; the stack asks
  for termination protection, which `cdk deploy` applies and CDK Pipelines does not) and the deploy-time
  label seeding. With `labeling.adopt_existing_data` the retained
  resources are used by name and this stack holds only the seeding (or does not exist).
* `<prefix>-labeling-workflow`: the labeling round's state machine, its functions, the Ground Truth role
  and the workflow pipeline that runs the state machine. It finds the data resources by name and
  deploys after the data stack.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from labeling.data_store import LabelDataStore, LabelSeeding
from labeling.workflow import APP, LabelingWorkflow
from shared.config import Settings
from shared.names import resource_names
from shared.pipelines import WorkflowPipeline


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


class WorkflowStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        names = resource_names(settings, account=cdk.Aws.ACCOUNT_ID, region=cdk.Aws.REGION)
        super().__init__(
            scope,
            construct_id,
            stack_name=names.workflow_stack(APP),
            description=f"{settings.project.prefix}: labeling workflow (Ground Truth rounds into the feature group)",
            **kwargs,
        )
        names = resource_names(settings, account=self.account, region=self.region)
        self.labeling = LabelingWorkflow(self, "Labeling", settings=settings, names=names)
        self.pipeline = WorkflowPipeline(
            self, "WorkflowPipeline", settings=settings, app=APP, state_machine=self.labeling.state_machine
        )


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
