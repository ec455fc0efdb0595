"""Synthesize the labeling stage alone, with cdk-nag over its stacks, for variants of the configuration.

`tests/helpers/cdk_assembly.synthesized("labeling")` builds the app exactly as `app.py` does (toolchain
stack included); this helper builds only `LabelingStage` so that configuration variants (adopted data,
a seed file, the public crowd) synthesize quickly and are checked by the same guardrails.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import yaml
from aws_cdk import cx_api

from labeling.stacks import LabelingStage
from shared.config import Settings, parse_settings
from shared.guardrails import apply_guardrails
from tests.helpers.cdk_assembly import CDK_CONTEXT, REPO_ROOT, SynthesizedStack, stacks_of

SEED_EXAMPLE = "labeling/examples/seed-labels.example.jsonl"
WORK_TEAM = "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/tag-inspectors"
GROUND_TRUTH: dict[str, Any] = {
    "backend": "ground_truth",
    "label_studio": None,
    "workforce": {"type": "private", "work_team_arn": WORK_TEAM},
}
"""The labeling overrides of an account that uses Ground Truth (config.yaml's example uses Label Studio)."""


def settings_with(**labeling: Any) -> Settings:
    raw = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    document = copy.deepcopy(raw)
    document["labeling"].update(labeling)
    return parse_settings(document)


@dataclass(frozen=True)
class Stage:
    stacks: dict[str, SynthesizedStack]
    termination_protection: dict[str, bool]
    dependencies: dict[str, set[str]]  # stack name -> names of the stacks deployed before it
    directory: Path

    def stack(self, suffix: str) -> SynthesizedStack:
        return self.stacks[f"tag-inspect-labeling-{suffix}"]

    def resources(self, suffix: str, resource_type: str) -> dict[str, dict[str, Any]]:
        return self.stack(suffix).resources(resource_type)


@functools.cache
def synth_stage(labeling_json: str = "{}") -> Stage:
    """The stage for config.yaml with `labeling` overrides (JSON text, so that results can be cached)."""
    settings = settings_with(**json.loads(labeling_json))
    outdir = Path(tempfile.mkdtemp(prefix="labeling-stage-"))
    app = cdk.App(outdir=str(outdir), context=dict(CDK_CONTEXT))
    LabelingStage(app, "Deploy", settings=settings)
    apply_guardrails(app)  # cdk-nag over the stage's stacks: an unacknowledged finding raises here
    assembly: cx_api.CloudAssembly = app.synth()
    stacks = {stack.stack_name: stack for stack in stacks_of(assembly)}
    artifacts = assembly.stacks_recursively
    protection = {artifact.stack_name: bool(artifact.termination_protection) for artifact in artifacts}
    by_id = {artifact.id: artifact.stack_name for artifact in artifacts}
    dependencies = {a.stack_name: {by_id[d.id] for d in a.dependencies if d.id in by_id} for a in artifacts}
    return Stage(stacks, protection, dependencies, outdir)


def stage(**labeling: Any) -> Stage:
    return synth_stage(json.dumps(labeling, sort_keys=True))
