"""The IoT team's guide (edge_deployment/README.md) names what the synthesized app really creates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from edge_deployment.device_alarms import DEVICE_ALARM_KINDS
from tests.edge_deployment.conftest import GROUP, TOOLCHAIN_STACK, WORKFLOW_STACK

README = (Path(__file__).resolve().parents[2] / "edge_deployment" / "README.md").read_text(encoding="utf-8")


def _names(stacks: Any, resource_type: str, name_property: str) -> set[str]:
    return {
        resource["Properties"][name_property]
        for stack in stacks
        for resource in stack.template["Resources"].values()
        if resource["Type"] == resource_type and isinstance(resource.get("Properties", {}).get(name_property), str)
    }


def _table_name(what: str) -> str:
    """The name in the README's name table on the row that starts with `what`."""
    (name,) = re.findall(rf"^\| {re.escape(what)}[^|]*\| `([^`]+)` \|$", README, flags=re.MULTILINE)
    return name


@pytest.mark.parametrize(
    ("what", "resource_type", "name_property"),
    [
        ("workflow state machine", "AWS::StepFunctions::StateMachine", "StateMachineName"),
        ("workflow pipeline", "AWS::CodePipeline::Pipeline", "Name"),
        ("notification topic", "AWS::SNS::Topic", "TopicName"),
        ("IoT role alias", "AWS::IoT::RoleAlias", "RoleAlias"),
        ("fleet dashboard", "AWS::CloudWatch::Dashboard", "DashboardName"),
    ],
)
def test_the_name_table_names_real_resources(edge_stacks, what, resource_type, name_property):
    assert _table_name(what) in _names(edge_stacks, resource_type, name_property)


def test_the_device_policy_row_names_what_register_device_creates(workflow_stack, settings):
    from edge_deployment.naming import edge_names

    prefix = edge_names(settings, account="123456789012", region="eu-west-1").device_policy_prefix
    assert _table_name("IoT policy of each device") == f"{prefix}<thing name>"
    assert workflow_stack.template["Outputs"]["DevicePolicyPrefix"]["Value"] == prefix


def test_the_model_package_group_is_the_one_the_approval_rule_listens_to(workflow_stack):
    assert _table_name("model package group") == GROUP
    (rule,) = [
        r
        for r in workflow_stack.template["Resources"].values()
        if r["Type"] == "AWS::Events::Rule" and r["Properties"]["EventPattern"]["source"] == ["aws.sagemaker"]
    ]
    assert rule["Properties"]["EventPattern"]["detail"]["ModelPackageGroupName"] == [_table_name("model package group")]


def test_every_command_names_a_real_pipeline_and_stack(edge_stacks):
    pipelines = _names(edge_stacks, "AWS::CodePipeline::Pipeline", "Name")
    started = re.findall(r"aws codepipeline start-pipeline-execution --name (\S+)", README)
    assert started, "the guide tells how to run the workflow pipeline"
    assert set(started) <= pipelines, (started, sorted(pipelines))
    stacks = re.findall(r"describe-stacks --stack-name\s+(\S+?)`", README)
    assert stacks and set(stacks) <= {WORKFLOW_STACK, TOOLCHAIN_STACK}


def test_the_state_machine_it_points_to_is_the_workflow(edge_stacks):
    machines = _names(edge_stacks, "AWS::StepFunctions::StateMachine", "StateMachineName")
    pointed = set(re.findall(r"\*\*Step Functions console\*\* → `([^`]+)`", README))
    assert pointed and pointed <= machines


def test_the_alarm_table_names_the_stack_s_alarms_and_register_device_s(edge_stacks):
    section = README.split("Alarms go to the notification topic", 1)[1].split("**Retraining on drift.**", 1)[0]
    listed = set(re.findall(r"^\| `([a-z0-9-]+)(?:-<thing>)?` \|", section, flags=re.MULTILINE))
    prefix = "tag-inspect-edge-deployment-"
    in_stack = {name.removeprefix(prefix) for name in _names(edge_stacks, "AWS::CloudWatch::Alarm", "AlarmName")}
    made_per_device = set(DEVICE_ALARM_KINDS)  # register_device makes them (device_alarms.py)
    assert listed - made_per_device <= in_stack, (listed - made_per_device) - in_stack
    assert made_per_device <= listed
    undocumented = in_stack - listed - {"approval-events-undelivered", "drift-events-undelivered"}
    assert not undocumented, undocumented
