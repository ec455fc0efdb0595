"""The three apps' stacks, synthesized from their own constructs, and the values a deploy would give them.

Each app's stages are built exactly as `app.py` builds them (without the toolchain stacks, and without
cdk-nag, which the apps' own tests run), so the names in the templates are computed by the owner's
construct code and the readers' environment variables are the ones their Lambda functions would get.
`render()` resolves the CloudFormation intrinsics the way a deploy into account 123456789012,
eu-west-1 would, with names for the resources CloudFormation would name itself.
"""

from __future__ import annotations

import copy
import functools
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import aws_cdk as cdk

from shared.config import Settings
from tests.helpers.cdk_assembly import CDK_CONTEXT, stacks_of

ACCOUNT, REGION, PARTITION = "123456789012", "eu-west-1", "aws"
PSEUDO = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": PARTITION,
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "stack",
}


@dataclass(frozen=True)
class Template:
    stack_name: str
    body: dict[str, Any]
    # "LogicalId.Attribute" -> value: outputs of custom resources, filled in by whoever plays the deploy
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.body.get("Resources", {}))

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {lid: r for lid, r in self.resources.items() if r["Type"] == resource_type}

    def one(self, resource_type: str) -> dict[str, Any]:
        (found,) = self.of_type(resource_type).values()
        return found

    def physical_name(self, logical_id: str) -> str:
        """The name CloudFormation gives a resource: its name property, else one derived from the logical id."""
        resource = self.resources[logical_id]
        name_property = {"AWS::S3::Bucket": "BucketName", "AWS::SageMaker::FeatureGroup": "FeatureGroupName"}
        key = name_property.get(resource["Type"])
        if key and key in resource.get("Properties", {}):
            return str(self.render(resource["Properties"][key]))
        return f"{self.stack_name}-{logical_id}".lower()[:63]

    def arn(self, logical_id: str) -> str:
        kind = self.resources[logical_id]["Type"]
        name = self.physical_name(logical_id)
        return {
            "AWS::S3::Bucket": f"arn:{PARTITION}:s3:::{name}",
            "AWS::IAM::Role": f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
            "AWS::Lambda::Function": f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{name}",
            "AWS::KMS::Key": f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{logical_id.lower()}",
            "AWS::StepFunctions::StateMachine": f"arn:{PARTITION}:states:{REGION}:{ACCOUNT}:stateMachine:{name}",
        }.get(kind, f"arn:{PARTITION}:unknown:{REGION}:{ACCOUNT}:{name}")

    def render(self, value: Any) -> Any:
        """A property with every intrinsic function resolved (recursively)."""
        if isinstance(value, list):
            return [self.render(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return PSEUDO.get(argument) or self.physical_name(argument)
            if key == "Fn::GetAtt":
                logical_id, attribute = argument
                found = self.attributes.get(f"{logical_id}.{attribute}")
                if found is not None:
                    return found
                if attribute == "Arn":
                    return self.arn(logical_id)
                raise KeyError(f"{self.stack_name}: no value for {logical_id}.{attribute}")
            if key == "Fn::Join":
                separator, parts = argument
                return separator.join(str(self.render(part)) for part in parts)
            if key == "Fn::Sub":
                text = argument if isinstance(argument, str) else argument[0]
                return re.sub(r"\$\{([^}]+)\}", lambda m: str(self.render({"Ref": m.group(1)})), text)
            if key == "Fn::FindInMap":
                name, first, second = (self.render(part) for part in argument)
                return self.body["Mappings"][name][first][second]
        return {k: self.render(v) for k, v in value.items()}

    # -- Lambda functions ------------------------------------------------------------------------------
    def function(self, handler: str) -> tuple[str, dict[str, Any]]:
        """(logical id, properties) of the function whose handler is `handler`."""
        matches = [
            (lid, r["Properties"])
            for lid, r in self.of_type("AWS::Lambda::Function").items()
            if r["Properties"].get("Handler") == handler
        ]
        if len(matches) != 1:
            raise KeyError(f"{self.stack_name}: {len(matches)} functions with handler {handler}")
        return matches[0]

    def environment(self, handler: str) -> dict[str, str]:
        """The environment variables the function with `handler` would run with."""
        _, properties = self.function(handler)
        return {k: str(v) for k, v in self.render(properties.get("Environment", {}).get("Variables", {})).items()}


@dataclass(frozen=True)
class Apps:
    labeling_data: Template
    labeling_workflow: Template
    training_registry: Template
    training_workflow: Template
    edge_workflow: Template


def synthesize(settings: Settings) -> Apps:
    """The stacks of the three apps' stages, as their asset pipelines would deploy them (fresh copies)."""
    synthesized = _synthesize(settings.model_dump_json())
    return Apps(**{name: Template(t.stack_name, copy.deepcopy(t.body)) for name, t in vars(synthesized).items()})


@functools.cache
def _synthesize(settings_json: str) -> Apps:
    from edge_deployment.stacks import EdgeDeploymentStage
    from labeling.stacks import LabelingStage
    from shared.config import Settings
    from training.stacks import TrainingStage

    settings = Settings.model_validate_json(settings_json)
    app = cdk.App(outdir=tempfile.mkdtemp(prefix="e2e-cdk-"), context=dict(CDK_CONTEXT))
    LabelingStage(app, "Labeling", settings=settings)
    TrainingStage(app, "Training", settings=settings)
    EdgeDeploymentStage(app, "EdgeDeployment", settings=settings)
    stacks = {stack.stack_name: stack.template for stack in stacks_of(app.synth())}
    names = {
        "labeling_data": "labeling-data",
        "labeling_workflow": "labeling-workflow",
        "training_registry": "training-registry",
        "training_workflow": "training-workflow",
        "edge_workflow": "edge-deployment-workflow",
    }
    prefix = settings.project.prefix
    return Apps(**{field: Template(f"{prefix}-{n}", stacks[f"{prefix}-{n}"]) for field, n in names.items()})
