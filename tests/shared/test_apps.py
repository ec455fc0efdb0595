"""The three apps as `app.py` builds them: each alone, together, per environment; isolation; cfn-lint.

Synthesis here includes cdk-nag over every stack (stage stacks too): any unacknowledged finding
fails these tests.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from cfnlint.api import ManualArgs, lint_file

from shared.code_bundle import handler_file
from shared.config import APP_NAMES
from shared.names import app_slug
from tests.helpers.asl import iter_states, state_machines
from tests.helpers.cdk_assembly import synthesized

PREFIX = "tag-inspect"
REPO_ROOT = Path(__file__).resolve().parents[2]
# CDK writes DependsOn entries that a GetAtt already implies; harmless, and not ours to change.
CFN_LINT_IGNORED = ["W3005"]


@pytest.fixture(scope="module")
def all_stacks():
    return synthesized()


def _top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_every_lambda_handler_names_a_function_of_the_repository(all_stacks):
    """`a.b.c.f` is `def f` in `a/b/c.py`: one can grep from a deployed function to its code."""
    handlers = {
        resource["Properties"]["Handler"]
        for stack in all_stacks
        for resource in stack.resources("AWS::Lambda::Function").values()
    }
    assert {handler.split(".", 1)[0] for handler in handlers} >= {*APP_NAMES, "shared"}  # every app has functions
    for handler in sorted(handlers):
        path = handler_file(handler, REPO_ROOT)
        assert path.is_file(), f"{handler}: no {path.relative_to(REPO_ROOT)} in the repository"
        assert handler.rsplit(".", 1)[1] in _top_level_functions(path), f"{handler}: no such function"


def test_all_apps_synthesize_together(all_stacks):
    names = {stack.stack_name for stack in all_stacks}
    for app in APP_NAMES:
        assert f"{PREFIX}-{app_slug(app)}-toolchain" in names
        assert f"{PREFIX}-{app_slug(app)}-workflow" in names


@pytest.mark.parametrize("app", APP_NAMES)
def test_each_app_synthesizes_alone(app):
    stacks = synthesized(app)
    own = f"{PREFIX}-{app_slug(app)}-"
    assert stacks, f"{app} synthesized no stack"
    assert all(stack.stack_name.startswith(own) for stack in stacks), [s.stack_name for s in stacks]
    assert any(stack.stack_name == f"{own}toolchain" for stack in stacks)


@pytest.mark.parametrize("app", APP_NAMES)
def test_no_template_of_one_app_references_another_apps_stacks(app, all_stacks):
    others = [other for other in APP_NAMES if other != app]
    # every stack another app deploys (toolchain, workflow and the others, such as labeling's data stack)
    other_stacks = sorted(
        stack.stack_name
        for stack in all_stacks
        if any(stack.stack_name.startswith(f"{PREFIX}-{app_slug(other)}-") for other in others)
    )
    assert len(other_stacks) >= 2 * len(others)
    for stack in synthesized(app):
        text = json.dumps(stack.template)
        assert "Fn::ImportValue" not in text, f"{stack.stack_name} imports a value"
        exports = [name for name, output in stack.template.get("Outputs", {}).items() if "Export" in output]
        assert not exports, f"{stack.stack_name} exports {exports}"
        for other_stack in other_stacks:
            assert not re.search(re.escape(other_stack) + r"(?![\w-])", text), f"{stack.stack_name} names {other_stack}"
        for other in others:
            # stack outputs of another app could only be read through a cross-stack reference
            assert not re.search(rf'"{re.escape(app_slug(other))}[A-Za-z]*Stack', text)


def _tags(resource: dict) -> dict | None:
    tags = resource.get("Properties", {}).get("Tags")
    if isinstance(tags, list) and all(isinstance(tag, dict) and "Key" in tag for tag in tags):
        return {tag["Key"]: tag["Value"] for tag in tags}
    if isinstance(tags, dict):
        return tags
    return None


def test_project_tags_reach_every_stack_including_those_inside_stages(all_stacks, settings):
    expected = settings.project.tags
    assert expected, "config.yaml should set project.tags for this test to mean something"
    for stack in all_stacks:
        tagged = {logical_id: _tags(resource) for logical_id, resource in stack.template["Resources"].items()}
        tagged = {logical_id: tags for logical_id, tags in tagged.items() if tags is not None}
        assert tagged, f"{stack.stack_name}: no resource carries the project tags"
        for logical_id, tags in tagged.items():
            assert expected.items() <= tags.items(), f"{stack.stack_name}/{logical_id}: tags {tags}"


def test_every_template_passes_cfn_lint(all_stacks):
    problems = []
    for stack in all_stacks:
        config = ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=CFN_LINT_IGNORED)
        for match in lint_file(stack.template_file, config=config):
            problems.append(f"{stack.stack_name}: {match}")
    assert problems == []


def test_no_template_silences_a_cfn_lint_rule(all_stacks):
    """A rule is ignored only in CFN_LINT_IGNORED above (with its reason), never per resource in a template."""
    silenced = [
        f"{stack.stack_name}/{logical_id}: {resource['Metadata']['cfn-lint']}"
        for stack in all_stacks
        for logical_id, resource in stack.template["Resources"].items()
        if "cfn-lint" in resource.get("Metadata", {})
    ]
    assert silenced == []


def _execution_roles(stack) -> list:
    (pipeline,) = [r for r in stack.template["Resources"].values() if r["Type"] == "AWS::CodePipeline::Pipeline"]
    return [
        action["Configuration"]["RoleArn"]
        for stage in pipeline["Properties"]["Stages"]
        for action in stage["Actions"]
        if action["Name"].endswith(".Prepare")
    ]


def test_change_set_actions_name_their_execution_role_with_sub(all_stacks):
    """The stage's stacks go to the pipeline's own account: the role ARN is built from pseudo parameters (Fn::Sub)."""
    expected = {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/cdk-hnb659fds-cfn-exec-role-"
        "${AWS::AccountId}-${AWS::Region}"
    }
    prod = [s for s in synthesized("training", "prod") if s.stack_name.endswith("-toolchain")]
    for stack in [*(s for s in all_stacks if s.stack_name.endswith("-toolchain")), *prod]:
        roles = _execution_roles(stack)
        assert roles and all(role == expected for role in roles), (stack.stack_name, roles)


def test_every_task_of_every_state_machine_has_a_catch(all_stacks):
    """A task without a Catch ends its execution with an AWS error nobody is told about."""
    uncaught = []
    for stack in all_stacks:
        for machine in state_machines(stack.template).values():
            for name, state in iter_states(machine.definition):
                if state["Type"] == "Task" and not any(
                    "States.ALL" in c["ErrorEquals"] for c in state.get("Catch", [])
                ):
                    uncaught.append(f"{stack.stack_name}: {name}")
    assert uncaught == []


def test_every_log_group_is_encrypted_with_its_stacks_key_and_expires(all_stacks, settings):
    """Log groups hold execution data (function events, state machine input and output, build output)."""
    for stack in all_stacks:
        groups = stack.resources("AWS::Logs::LogGroup")
        keys = stack.resources("AWS::KMS::Key")
        for logical_id, group in groups.items():
            properties = group["Properties"]
            assert properties.get("RetentionInDays") == settings.toolchain.log_retention_days, (
                stack.stack_name,
                logical_id,
            )
            key_id = properties.get("KmsKeyId", {}).get("Fn::GetAtt", [None])[0]
            assert key_id in keys, f"{stack.stack_name}/{logical_id} is not encrypted with a key of its stack"
            statements = keys[key_id]["Properties"]["KeyPolicy"]["Statement"]
            (logs_service,) = [st for st in statements if "logs." in json.dumps(st.get("Principal", {}))]
            assert "kms:EncryptionContext:aws:logs:arn" in logs_service["Condition"]["ArnLike"]


def test_sagemakers_own_job_log_groups_get_the_retention_too(all_stacks, settings):
    found = {}
    for stack in all_stacks:
        for resource in stack.resources("Custom::ServiceLogRetention").values():
            properties = resource["Properties"]
            assert properties["RetentionInDays"] == settings.toolchain.log_retention_days
            found[stack.stack_name] = properties["LogGroupNames"]
    expected = {"tag-inspect-training-workflow": ["/aws/sagemaker/ProcessingJobs", "/aws/sagemaker/TrainingJobs"]}
    if settings.labeling.backend == "ground_truth":  # only Ground Truth's labeling jobs write there
        expected["tag-inspect-labeling-workflow"] = ["/aws/sagemaker/LabelingJobs"]
    assert found == expected


def test_each_checkov_finding_left_carries_its_reason(all_stacks):
    """checkov (run by hand, see README) reads these; a skip without a reason would hide a finding."""
    skips: dict[str, set[str]] = {}
    for stack in all_stacks:
        for logical_id, resource in stack.template["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                assert len(skip["comment"]) >= 20, (stack.stack_name, logical_id, skip)
                skips.setdefault(resource["Type"], set()).add(skip["id"])
            if resource["Type"] == "AWS::Lambda::Function":
                ids = {skip["id"] for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])}
                assert {"CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173"} <= ids, logical_id
    assert skips == {
        "AWS::Lambda::Function": {"CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117", "CKV_AWS_173"},
        "AWS::S3::Bucket": {"CKV_AWS_18"},
        "AWS::IAM::Policy": {"CKV_AWS_111"},
    }


def test_an_environment_pins_account_and_region():
    stacks = synthesized("training", "prod")
    toolchain = next(s for s in stacks if s.stack_name.endswith("-toolchain"))
    assert toolchain.environment == "aws://222222222222/eu-west-1"
    # with neither an environment nor CLI credentials the stacks stay environment-agnostic
    agnostic = next(s for s in synthesized("training") if s.stack_name.endswith("-toolchain"))
    assert agnostic.environment == "aws://unknown-account/unknown-region"
