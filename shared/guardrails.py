"""cdk-nag (AwsSolutions) on every stack, and narrow, reasoned acknowledgements of its findings.

cdk-nag 3 runs as a CDK policy-validation plugin: added to the App, it checks every template of the
cloud assembly, stacks inside Stages included (the CDK Pipelines stages of each app), and synth fails
on any finding that is not acknowledged.

Most AwsSolutions-IAM5 (wildcard) findings come from policies that CDK writes itself: bucket and key
grants (`s3:GetObject*` on `bucket/*`), CodeBuild's own log and report groups, X-Ray and log delivery
actions that take no resource. `acknowledge_generated_wildcards` recognises exactly those shapes,
checks that each one really is what it looks like (the `<X.Arn>/*` resource belongs to a bucket of the
same template, the `kms:GenerateDataKey*` statement names only keys, ...) and acknowledges that one
finding on that one policy. Every other wildcard still fails synth until its owner acknowledges it
with `acknowledge(...)` and a reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from cdk_nag import AwsSolutionsChecks
from constructs import Construct, IConstruct

MIN_REASON_LENGTH = 20
IAM5 = "AwsSolutions-IAM5"


def apply_guardrails(app: cdk.App) -> None:
    """Run the AwsSolutions rules over everything this App synthesizes.

    Call it after every stack exists: it also acknowledges the CDK-generated wildcard shapes.
    """
    acknowledge_generated_wildcards(app)
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))


def acknowledge(scope: IConstruct, rule: str, reason: str, *, finding: str | None = None) -> None:
    """Acknowledge one cdk-nag rule on one construct (and its children), with a specific reason.

    `finding` narrows rules that report several findings per resource, e.g. for AwsSolutions-IAM5
    `Action::s3:GetObject*` or `Resource::arn:aws:s3:::bucket/*`; each finding is acknowledged alone.
    """
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"acknowledgement of {rule} needs a specific reason, got {reason!r}")
    rule_id = f"{rule}[{finding}]" if finding else rule
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=rule_id, reason=reason))


def finding(scope: IConstruct, kind: str, value: str) -> str:
    """The cdk-nag IAM5 finding id of a wildcard action or resource, as cdk-nag writes it.

    Tokens are resolved and rendered (`<Bucket.Arn>/*`), and IAM policy variables such as
    `${credentials-iot:ThingName}` become `<credentials-iot:ThingName>`.
    """
    return f"{kind}::" + re.sub(r"\$\{([^}]*)\}", r"<\1>", render(cdk.Stack.of(scope).resolve(value)))


def allow(
    grantee: iam.IGrantable,
    actions: Sequence[str],
    resources: Sequence[str],
    *,
    why: str | None = None,
    sid: str | None = None,
    conditions: Mapping[str, Any] | None = None,
) -> iam.PolicyStatement:
    """Add one Allow statement to `grantee`'s own policy; `why` explains every wildcard it holds.

    An action or resource with `*` is acknowledged (AwsSolutions-IAM5, that finding only) with `why`; a
    wildcard without a `why` is refused here, at synth, naming it. One shape needs none: another stack's
    KMS key granted by alias (`key/*` with a `kms:ResourceAliases` condition), which
    `acknowledge_generated_wildcards` acknowledges once it has checked every statement that names it.
    """
    principal = grantee.grant_principal
    if not isinstance(principal, Construct):
        raise TypeError(f"allow(): {principal} is not a construct of this app (an own role)")
    statement = iam.PolicyStatement(
        sid=sid, actions=list(actions), resources=list(resources), conditions=dict(conditions) if conditions else None
    )
    for kind, values in (("Action", actions), ("Resource", resources)):
        for value in values:
            found = finding(principal, kind, value)
            if "*" not in found or (kind == "Resource" and _key_by_alias(found, conditions)):
                continue
            if why is None:
                wildcard = found.replace("::", " ", 1)
                raise ValueError(f"allow(): {wildcard} is a wildcard: say why it is needed (why=...)")
            acknowledge(principal, IAM5, why, finding=found)
    principal.add_to_principal_policy(statement)
    return statement


def _key_by_alias(resource_finding: str, conditions: Mapping[str, Any] | None) -> bool:
    resource = resource_finding.removeprefix("Resource::")
    by_alias = any("kms:ResourceAliases" in keys for keys in (conditions or {}).values())
    return by_alias and bool(re.fullmatch(_ARN_HEAD + "kms:" + _REGION + ":" + _ACCOUNT + r":key/\*", resource))


def checkov_skip(resource: cdk.CfnResource, check_id: str, reason: str) -> None:
    """Record, on one resource of the template, why a checkov check does not apply to it (checkov reads it).

    checkov runs outside the test suite (see README); each finding left is explained where the resource
    is built, as with cdk-nag.
    """
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"skipping {check_id} needs a specific reason, got {reason!r}")
    metadata = resource.get_metadata("checkov") or {"skip": []}
    metadata["skip"] = [*metadata["skip"], {"id": check_id, "comment": reason}]
    resource.add_metadata("checkov", metadata)


# --------------------------------------------------------------------------------------------------
# Wildcards that CDK itself writes
# --------------------------------------------------------------------------------------------------


def render(value: Any) -> str:
    """Render a resolved CloudFormation value the way cdk-nag writes it in finding ids."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return f"<{argument}>"
        if function == "Fn::GetAtt":
            return f"<{argument[0]}.{argument[1]}>"
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(render(part) for part in parts)
    return json.dumps(value, separators=(",", ":"))  # as JavaScript's JSON.stringify writes it


@dataclass(frozen=True)
class _Statement:
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: dict[str, Any]


@dataclass(frozen=True)
class _PolicyContext:
    path: str
    statements: tuple[_Statement, ...]
    resource_types: dict[str, str]  # logical id -> CloudFormation type, in the policy's template

    def type_of(self, logical_id: str) -> str | None:
        return self.resource_types.get(logical_id)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _statements(document: Any) -> tuple[_Statement, ...]:
    result = []
    for raw in _as_list((document or {}).get("Statement", [])):
        if raw.get("Effect") != "Allow":
            continue
        result.append(
            _Statement(
                actions=tuple(render(a) for a in _as_list(raw.get("Action", []))),
                resources=tuple(render(r) for r in _as_list(raw.get("Resource", []))),
                conditions=raw.get("Condition") or {},
            )
        )
    return tuple(result)


_LOGICAL = r"<(?P<id>[A-Za-z0-9]+)(\.Arn)?>"
_ARN_HEAD = r"arn:(aws[a-z-]*|<AWS::Partition>|\*):"
_REGION = r"(<AWS::Region>|[a-z0-9-]+)"
_ACCOUNT = r"(<AWS::AccountId>|\d{12})"
_NO_RESOURCE_ACTIONS = frozenset(
    {
        # X-Ray and CloudWatch Logs delivery take no resource ARN (they need "*").
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:GetSamplingRules",
        "xray:GetSamplingTargets",
        "logs:CreateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:DescribeLogGroups",
        "logs:DescribeResourcePolicies",
        "logs:GetLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:UpdateLogDelivery",
    }
)
_SELF_MUTATION_STAR_ACTIONS = frozenset({"cloudformation:DescribeStacks", "s3:ListBucket"})


def _is_bucket_arn(resource: str, context: _PolicyContext) -> bool:
    match = re.fullmatch(_LOGICAL + r"(/.*)?", resource)
    if match:
        return context.type_of(match["id"]) == "AWS::S3::Bucket"
    return bool(re.fullmatch(_ARN_HEAD + r"s3:::[a-z0-9<][^*]*(/.*)?", resource))


def _is_key_arn(resource: str, context: _PolicyContext, statement: _Statement) -> bool:
    match = re.fullmatch(_LOGICAL, resource)
    if match:
        return context.type_of(match["id"]) == "AWS::KMS::Key"
    by_alias = any("kms:ResourceAliases" in keys for keys in statement.conditions.values())
    return by_alias and bool(re.fullmatch(_ARN_HEAD + "kms:" + _REGION + ":" + _ACCOUNT + r":key/\*", resource))


def _statements_with(
    context: _PolicyContext, *, action: str | None = None, resource: str | None = None
) -> list[_Statement]:
    return [
        s
        for s in context.statements
        if (action is None or action in s.actions) and (resource is None or resource in s.resources)
    ]


_GRANT_ACTION_FAMILIES = {
    "s3:GetObject*": "s3",
    "s3:GetBucket*": "s3",
    "s3:List*": "s3",
    "s3:DeleteObject*": "s3",
    "s3:Abort*": "s3",
    "s3:PutObjectLegalHold*": "s3",
    "kms:GenerateDataKey*": "kms",
    "kms:ReEncrypt*": "kms",
}


def _action_reason(action: str, context: _PolicyContext) -> str | None:
    family = _GRANT_ACTION_FAMILIES.get(action)
    if family is None:
        return None
    for statement in _statements_with(context, action=action):
        for resource in statement.resources:
            if family == "s3" and not _is_bucket_arn(resource, context):
                return None
            if family == "kms" and not _is_key_arn(resource, context, statement):
                return None
    if family == "s3":
        return f"{action} is the action family CDK bucket grants use; every statement with it names specific buckets."
    return f"{action} is the action family CDK key grants use; every statement with it names specific KMS keys."


def _resource_reason(resource: str, context: _PolicyContext) -> str | None:
    match = re.fullmatch(_LOGICAL + r"/\*", resource)
    if match and context.type_of(match["id"]) == "AWS::S3::Bucket":
        return f"Objects of bucket {match['id']}, created in this stack (a CDK bucket grant)."
    match = re.fullmatch(
        _ARN_HEAD + "logs:" + _REGION + ":" + _ACCOUNT + r":log-group:/aws/codebuild/<(?P<id>\w+)>:\*", resource
    )
    if match and context.type_of(match["id"]) == "AWS::CodeBuild::Project":
        return f"Log streams of CodeBuild project {match['id']}'s own log group (written by CodeBuild)."
    match = re.fullmatch(
        _ARN_HEAD + "codebuild:" + _REGION + ":" + _ACCOUNT + r":report-group/<(?P<id>\w+)>-\*", resource
    )
    if match and context.type_of(match["id"]) == "AWS::CodeBuild::Project":
        return f"Test report groups of CodeBuild project {match['id']} (written by CodeBuild)."
    if re.fullmatch(_ARN_HEAD + "kms:" + _REGION + ":" + _ACCOUNT + r":key/\*", resource):
        statements = _statements_with(context, resource=resource)
        if statements and all(any("kms:ResourceAliases" in keys for keys in s.conditions.values()) for s in statements):
            return "A KMS key owned by another stack, narrowed by the kms:ResourceAliases condition to one alias."
    if re.fullmatch(r"arn:.*:states:.*:execution:.*:\*", resource):
        references = re.findall(r'\{"Ref":"(\w+)"\}|<(\w+)>', resource)
        ids = {ref or angle for ref, angle in references} - {"AWS::AccountId", "AWS::Region", "AWS::Partition"}
        if ids and all(context.type_of(i) == "AWS::StepFunctions::StateMachine" for i in ids):
            return "Executions of one state machine of this stack (to follow the execution it started)."
    if re.fullmatch(r"arn:\*:iam::" + _ACCOUNT + r":role/\*", resource):
        statements = _statements_with(context, resource=resource)
        if statements and all(
            s.actions == ("sts:AssumeRole",)
            and any("iam:ResourceTag/aws-cdk:bootstrap-role" in keys for keys in s.conditions.values())
            for s in statements
        ):
            return "CDK Pipelines assumes only the CDK bootstrap roles, selected by their aws-cdk:bootstrap-role tag."
    if resource == "*":
        actions = {a for s in _statements_with(context, resource="*") for a in s.actions}
        if actions <= _NO_RESOURCE_ACTIONS:
            return "X-Ray and CloudWatch Logs delivery actions support no resource-level permissions."
        if (
            "/UpdatePipeline/SelfMutation/" in context.path
            and actions <= _NO_RESOURCE_ACTIONS | _SELF_MUTATION_STAR_ACTIONS
        ):
            return "CDK Pipelines self-mutation lists stacks and buckets of the bootstrap before deploying itself."
    return None


def _policies(scope: IConstruct) -> Iterator[tuple[IConstruct, Any]]:
    for construct in scope.node.find_all():
        if isinstance(construct, (iam.CfnPolicy, iam.CfnManagedPolicy)):
            yield construct, construct.policy_document
        elif isinstance(construct, iam.CfnRole) and isinstance(construct.policies, list):
            policy: Any
            for policy in construct.policies:
                document = (
                    policy.policy_document if hasattr(policy, "policy_document") else policy.get("policyDocument")
                )
                yield construct, document


def acknowledge_generated_wildcards(scope: IConstruct) -> list[str]:
    """Acknowledge, one finding at a time, the IAM5 wildcards whose shape CDK itself generates.

    Returns the acknowledged ids (`path: finding`), for tests and for reading.
    """
    acknowledged: list[str] = []
    types_by_stack: dict[str, dict[str, str]] = {}
    for construct, document in _policies(scope):
        stack = cdk.Stack.of(construct)
        types = types_by_stack.get(stack.node.path)
        if types is None:
            types = {
                stack.get_logical_id(child): child.cfn_resource_type
                for child in stack.node.find_all()
                if isinstance(child, cdk.CfnResource) and cdk.Stack.of(child) is stack
            }
            types_by_stack[stack.node.path] = types
        context = _PolicyContext(
            path="/" + construct.node.path + "/",
            statements=_statements(stack.resolve(document)),
            resource_types=types,
        )
        findings: dict[str, str] = {}
        reasoners: tuple[
            tuple[str, Callable[[str, _PolicyContext], str | None], Callable[[_Statement], tuple[str, ...]]], ...
        ] = (
            ("Action", _action_reason, lambda s: s.actions),
            ("Resource", _resource_reason, lambda s: s.resources),
        )
        for kind, reasoner, values in reasoners:
            for statement in context.statements:
                for value in values(statement):
                    if "*" not in value or f"{kind}::{value}" in findings:
                        continue
                    reason = reasoner(value, context)
                    if reason:
                        findings[f"{kind}::{value}"] = reason
        for finding, reason in findings.items():
            acknowledge(construct, IAM5, reason, finding=finding)
            acknowledged.append(f"{construct.node.path}: {finding}")
    return acknowledged
