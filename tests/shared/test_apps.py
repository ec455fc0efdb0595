"""The three apps as `app.py` builds them: each alone, together, per environment; isolation; cfn-lint.

Synthesis here includes cdk-nag over every stack (stage stacks too): any unacknowledged finding
fails these tests.
"""

from __future__ import annotations

import json
import re

import pytest
from cfnlint.api import ManualArgs, lint_file

from shared.config import APP_NAMES
from shared.names import app_slug
from tests.helpers.cdk_assembly import synthesized

PREFIX = "tag-inspect"
# CDK writes DependsOn entries that a GetAtt already implies; harmless, and not ours to change.
CFN_LINT_IGNORED = ["W3005"]


@pytest.fixture(scope="module")
def all_stacks():
    return synthesized()


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


def test_an_environment_pins_account_and_region():
    stacks = synthesized("training", "prod")
    toolchain = next(s for s in stacks if s.stack_name.endswith("-toolchain"))
    assert toolchain.environment == "aws://222222222222/eu-west-1"
    # with neither an environment nor CLI credentials the stacks stay environment-agnostic
    agnostic = next(s for s in synthesized("training") if s.stack_name.endswith("-toolchain"))
    assert agnostic.environment == "aws://unknown-account/unknown-region"
