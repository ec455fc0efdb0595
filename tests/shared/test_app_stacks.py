"""The app skeleton: a workflow stack names itself, computes the names once and adds the workflow pipeline."""

from __future__ import annotations

import tempfile
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_stepfunctions as sfn

from labeling.stacks import WorkflowStack as LabelingWorkflowStack
from shared.app_stacks import AppWorkflowStack
from shared.config import APP_NAMES
from shared.workflow_states import app_topic
from tests.helpers.cdk_assembly import new_app
from training.stacks import WorkflowStack as TrainingWorkflowStack


class _Minimal(AppWorkflowStack):
    app = "training"
    description = "a workflow of one state"
    workflow_input = {"trigger": "test"}

    def build(self) -> sfn.IStateMachine:
        app_topic(self, self.names.notification_topic(self.app))
        return sfn.StateMachine(
            self, "Machine", definition_body=sfn.DefinitionBody.from_chainable(sfn.Succeed(self, "Done"))
        )


def test_a_workflow_stack_names_itself_and_adds_the_pipeline_that_runs_its_state_machine(settings):
    app = new_app(outdir=Path(tempfile.mkdtemp(prefix="cdk-app-stacks-")))
    stack = _Minimal(
        app, "Workflow", settings=settings, env=cdk.Environment(account="123456789012", region="eu-west-1")
    )
    assert stack.stack_name == "tag-inspect-training-workflow"
    assert stack.template_options.description == "tag-inspect: a workflow of one state"
    assert (stack.names.account, stack.names.region) == ("123456789012", "eu-west-1")  # once, for its environment
    template = app.synth().get_stack_by_name(stack.stack_name).template
    (pipeline,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    assert pipeline["Properties"]["Name"] == "tag-inspect-training-workflow-pipeline"
    actions = [a for s in pipeline["Properties"]["Stages"] for a in s["Actions"]]
    invoke = next(a for a in actions if a["ActionTypeId"]["Provider"] == "StepFunctions")
    assert invoke["Configuration"]["Input"] == '{"trigger":"test"}'


def test_a_workflow_stack_without_a_workflow_is_refused(settings):
    class Empty(AppWorkflowStack):
        app = "labeling"
        description = "nothing"

    with pytest.raises(NotImplementedError, match="Empty must build its workflow"):
        Empty(cdk.App(), "Workflow", settings=settings)


def test_each_app_names_itself_once():
    from edge_deployment import APP as EDGE
    from labeling import APP as LABELING
    from training import APP as TRAINING

    assert (LABELING, TRAINING, EDGE) == APP_NAMES
    assert LabelingWorkflowStack.app == LABELING and TrainingWorkflowStack.app == TRAINING
