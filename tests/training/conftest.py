"""Fixtures of the training app's tests (the trained tiny model itself is `tiny_model`, tests/model_fixtures.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from training.local import SyntheticSource, write_synthetic_source


@pytest.fixture
def source(tmp_path: Path) -> SyntheticSource:
    """24 synthetic tags (jpg) with their approved labels in an offline-store folder; no training."""
    return write_synthetic_source(tmp_path / "source", 24, seed=3)


def image_bytes(width: int = 64, height: int = 48, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 120, 120)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def training_stacks(tmp_path_factory):
    """The training stage's stacks synthesized with cdk-nag, as the asset pipeline deploys them.

    Built without the toolchain stack (the foundation's) so these tests see only this app's stacks;
    `test_stacks.py` also synthesizes the whole app exactly as app.py does.
    """
    import aws_cdk as cdk

    from shared.config import load_settings
    from shared.guardrails import apply_guardrails
    from tests.helpers.cdk_assembly import CDK_CONTEXT, REPO_ROOT, stacks_of
    from training.stacks import TrainingStage

    app = cdk.App(outdir=str(tmp_path_factory.mktemp("cdk-out")), context=dict(CDK_CONTEXT))
    TrainingStage(app, "Deploy", settings=load_settings(REPO_ROOT / "config.yaml"))
    apply_guardrails(app)  # cdk-nag: any unacknowledged finding fails synth
    return {stack.stack_name: stack for stack in stacks_of(app.synth())}


@pytest.fixture(scope="session")
def workflow_stack(training_stacks):
    return training_stacks["tag-inspect-training-workflow"]


@pytest.fixture(scope="session")
def definition(workflow_stack):
    """The SageMaker pipeline definition as deployed (intrinsics rendered with example account/region)."""
    import json

    from tests.training.cfn import render

    (pipeline,) = workflow_stack.resources("AWS::SageMaker::Pipeline").values()
    body = pipeline["Properties"]["PipelineDefinition"]["PipelineDefinitionBody"]
    return json.loads(render(body, mappings=workflow_stack.template.get("Mappings")))
