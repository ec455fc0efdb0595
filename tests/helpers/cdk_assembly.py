"""Synthesize the apps exactly as `app.py` does and hand out their templates.

Synthesis runs the cdk-nag plugin too: a stack with an unacknowledged finding makes `synth()` raise.
Assemblies are cached per (apps, environment) for the whole session: synth takes seconds.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import assertions, cx_api

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_CONTEXT: dict[str, Any] = json.loads((REPO_ROOT / "cdk.json").read_text())["context"]


@dataclass(frozen=True)
class SynthesizedStack:
    stack_name: str
    artifact_id: str
    template: dict[str, Any]
    template_file: Path
    environment: str  # aws://account/region

    @property
    def assertions(self) -> assertions.Template:
        return assertions.Template.from_json(self.template)

    def resources(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {
            logical_id: resource
            for logical_id, resource in self.template.get("Resources", {}).items()
            if resource["Type"] == resource_type
        }


def new_app(*, app: str | None = None, env: str | None = None, config: Path | None = None, outdir: Path) -> cdk.App:
    context = dict(CDK_CONTEXT)
    if app:
        context["app"] = app
    if env:
        context["env"] = env
    if config:
        context["config"] = str(config)
    return cdk.App(outdir=str(outdir), context=context)


def synth(*, app: str | None = None, env: str | None = None, config: Path | None = None) -> cx_api.CloudAssembly:
    """Build and synthesize (validation plugins included) into a fresh temporary folder."""
    from app import build  # the real entry point's composition

    outdir = Path(tempfile.mkdtemp(prefix="cdk-out-"))
    cdk_app = new_app(app=app, env=env, config=config, outdir=outdir)
    build(cdk_app)
    return cdk_app.synth()


@functools.cache
def synthesized(app: str | None = None, env: str | None = None) -> tuple[SynthesizedStack, ...]:
    """Every stack of the assembly, stage stacks included, for the example config.yaml (cached)."""
    return stacks_of(synth(app=app, env=env))


def stacks_of(assembly: cx_api.CloudAssembly) -> tuple[SynthesizedStack, ...]:
    stacks = []
    for artifact in assembly.stacks_recursively:
        template_file = Path(assembly.directory) / artifact.template_file
        if not template_file.exists():  # stacks of nested assemblies live in their own folder
            template_file = Path(artifact.assembly.directory) / artifact.template_file
        stacks.append(
            SynthesizedStack(
                stack_name=artifact.stack_name,
                artifact_id=artifact.id,
                template=artifact.template,
                template_file=template_file,
                environment=f"aws://{artifact.environment.account}/{artifact.environment.region}",
            )
        )
    return tuple(stacks)


def stack_named(stacks: tuple[SynthesizedStack, ...], stack_name: str) -> SynthesizedStack:
    for stack in stacks:
        if stack.stack_name == stack_name:
            return stack
    raise KeyError(f"no stack {stack_name!r}; have {[s.stack_name for s in stacks]}")
