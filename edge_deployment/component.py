"""The stacks of the edge_deployment app that its asset pipeline deploys."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from shared.building_blocks import workflow_state_machine
from shared.config import AppName, Settings
from shared.names import resource_names
from shared.pipelines import WorkflowPipeline

APP: AppName = "edge_deployment"


class WorkflowStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        names = resource_names(settings, account=cdk.Aws.ACCOUNT_ID, region=cdk.Aws.REGION)
        super().__init__(scope, construct_id, stack_name=names.workflow_stack(APP), **kwargs)
        names = resource_names(settings, account=self.account, region=self.region)
        state_machine = workflow_state_machine(
            self,
            "Workflow",
            state_machine_name=names.workflow_state_machine(APP),
            definition=sfn.Succeed(self, "Done"),
            timeout=cdk.Duration.hours(1),
        )
        WorkflowPipeline(self, "WorkflowPipeline", settings=settings, app=APP, state_machine=state_machine)


class EdgeDeploymentStage(cdk.Stage):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.workflow = WorkflowStack(self, "Workflow", settings=settings)
