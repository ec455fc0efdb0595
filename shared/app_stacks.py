"""The skeleton every app is built on: a stage of stacks, one of which is the app's workflow stack.

An app (`labeling`, `training`, `edge_deployment`) is a package with

* `APP` in its `__init__.py`: the app's name, defined once (`shared.config.APP_NAMES` lists them);
* `stacks.py`: its stage (what its asset pipeline deploys) and its stacks; the workflow stack is an
  `AppWorkflowStack` that builds the app's own constructs in `build()` and returns the state machine;
* `workflow.py`: the workflow construct (functions, state machine from `shared.workflow_states`);
* `runtime/` (or `steps/`): the code the workflow runs, bundled by `shared.code_bundle`.

`AppWorkflowStack` names the stack (`<prefix>-<app>-workflow`), computes the resource names once for its
account and region (`self.names`), and adds the workflow pipeline that runs the state machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from shared.config import AppName, Settings
from shared.names import resource_names, workflow_stack_name
from shared.pipelines import WorkflowPipeline


class AppWorkflowStack(cdk.Stack):
    """An app's workflow stack; a subclass sets `app` and `description` and builds its constructs in `build()`."""

    app: ClassVar[AppName]
    description: ClassVar[str]  # what the stack holds, after "<prefix>: "
    workflow_input: ClassVar[Mapping[str, Any] | None] = None  # what the workflow pipeline starts executions with

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            scope,
            construct_id,
            stack_name=workflow_stack_name(settings.project.prefix, self.app),
            description=f"{settings.project.prefix}: {self.description}",
            **kwargs,
        )
        self.settings = settings
        self.names = resource_names(settings, account=self.account, region=self.region)
        self.state_machine = self.build()
        self.pipeline = WorkflowPipeline(
            self,
            "WorkflowPipeline",
            settings=settings,
            app=self.app,
            state_machine=self.state_machine,
            workflow_input=self.workflow_input,
        )

    def build(self) -> sfn.IStateMachine:
        """Add the app's constructs to this stack; return the workflow's state machine."""
        raise NotImplementedError(f"{type(self).__name__} must build its workflow")
