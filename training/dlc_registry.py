"""Where AWS publishes its Deep Learning Containers in each region, and container image URIs that use it.

The DLC images live in account 763104351884 in most regions, but in a region of its own account in
others (Cape Town, Hong Kong, Milan, Zurich, Tel Aviv, the China regions, ...). The table below is
AWS's published one ("Available Deep Learning Containers Images", region availability table, in the
aws/deep-learning-containers repository's available_images.md). A configured image URI starting with
`{dlc_registry}` gets the registry of the deployment region:

    {dlc_registry}/pytorch-training:2.6.0-gpu-py312-cu126-ubuntu22.04-sagemaker
    -> 626614931356.dkr.ecr.af-south-1.amazonaws.com/pytorch-training:...   (in af-south-1)

When the region is known at synth (an environment in config.yaml) the account is written as a literal,
and a region missing from the table fails synth naming it. An environment-agnostic stack gets a
CloudFormation mapping of the table, looked up with the region it is deployed to.
"""

from __future__ import annotations

import aws_cdk as cdk
from constructs import Construct

from shared.config import ConfigError

DLC_REGISTRY = "{dlc_registry}"
REGION = "{region}"

DLC_REGISTRY_ACCOUNTS: dict[str, str] = {
    "us-east-1": "763104351884",
    "us-east-2": "763104351884",
    "us-west-1": "763104351884",
    "us-west-2": "763104351884",
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "763104351884",
    "ap-south-1": "763104351884",
    "ap-south-2": "772153158452",
    "ap-northeast-1": "763104351884",
    "ap-northeast-2": "763104351884",
    "ap-northeast-3": "364406365360",
    "ap-southeast-1": "763104351884",
    "ap-southeast-2": "763104351884",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-7": "590183813437",
    "ca-central-1": "763104351884",
    "ca-west-1": "204538143572",
    "eu-central-1": "763104351884",
    "eu-central-2": "380420809688",
    "eu-north-1": "763104351884",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "eu-west-1": "763104351884",
    "eu-west-2": "763104351884",
    "eu-west-3": "763104351884",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "sa-east-1": "763104351884",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
}


def dlc_registry_account(scope: Construct) -> str:
    """The DLC registry account of the stack's region: a literal when the region is known, else a lookup."""
    stack = cdk.Stack.of(scope)
    if not cdk.Token.is_unresolved(stack.region):
        try:
            return DLC_REGISTRY_ACCOUNTS[stack.region]
        except KeyError:
            raise ConfigError(
                f"training.training_image / processing_image: AWS publishes no Deep Learning Containers registry for "
                f"region {stack.region}; use a region of training/dlc_registry.py or give the images' full URIs"
            ) from None
    mapping = stack.node.try_find_child("DlcRegistryAccounts")
    if not isinstance(mapping, cdk.CfnMapping):
        mapping = cdk.CfnMapping(
            stack,
            "DlcRegistryAccounts",
            mapping={region: {"account": account} for region, account in DLC_REGISTRY_ACCOUNTS.items()},
        )
    return mapping.find_in_map(stack.region, "account")


def resolve_image(scope: Construct, image_uri: str) -> str:
    """A configured image URI with `{dlc_registry}` and `{region}` filled in for the stack's region."""
    stack = cdk.Stack.of(scope)
    if image_uri.startswith(DLC_REGISTRY):
        registry = f"{dlc_registry_account(scope)}.dkr.ecr.{stack.region}.{stack.url_suffix}"
        image_uri = registry + image_uri[len(DLC_REGISTRY) :]
    return image_uri.replace(REGION, stack.region)


def image_repository_arn(scope: Construct, image_uri: str) -> str:
    """The ECR repository ARN of a configured image URI (`{dlc_registry}/repo:tag` or `acct.dkr.ecr.region...`)."""
    stack = cdk.Stack.of(scope)
    host, _, path = image_uri.partition("/")
    repository = path.rsplit(":", 1)[0]
    if host == DLC_REGISTRY:
        account, region = dlc_registry_account(scope), stack.region
    else:
        account, _, _, region = host.split(".")[:4]
        region = stack.region if region == REGION else region
    return f"arn:{stack.partition}:ecr:{region}:{account}:repository/{repository}"
