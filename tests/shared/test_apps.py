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
def test_no_template_of_one_app_references_another_apps_stacks(app):
    others = [other for other in APP_NAMES if other != app]
    for stack in synthesized(app):
        text = json.dumps(stack.template)
        assert "Fn::ImportValue" not in text, f"{stack.stack_name} imports a value"
        exports = [name for name, output in stack.template.get("Outputs", {}).items() if "Export" in output]
        assert not exports, f"{stack.stack_name} exports {exports}"
        for other in others:
            for kind in ("toolchain", "workflow"):
                other_stack = f"{PREFIX}-{app_slug(other)}-{kind}"
                assert not re.search(re.escape(other_stack) + r"(?![\w-])", text), (
                    f"{stack.stack_name} names {other_stack}"
                )
            # stack outputs of another app could only be read through a cross-stack reference
            assert not re.search(rf'"{re.escape(app_slug(other))}[A-Za-z]*Stack', text)


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
