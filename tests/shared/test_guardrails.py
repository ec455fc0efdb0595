"""cdk-nag findings fail synth; only CDK's own wildcard shapes are acknowledged automatically."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from shared.building_blocks import access_log_bucket, grant_key_by_alias, secure_bucket
from shared.guardrails import acknowledge, acknowledge_generated_wildcards, allow, apply_guardrails, finding, render
from tests.helpers.cdk_assembly import new_app


def _app_with(build) -> cdk.App:
    app = new_app(outdir=Path(tempfile.mkdtemp(prefix="cdk-nag-")))
    stack = cdk.Stack(app, "Subject")
    build(stack)
    return app


def _role(stack: cdk.Stack) -> iam.Role:
    return iam.Role(stack, "Worker", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))


def _bucket(stack: cdk.Stack):
    key = kms.Key(stack, "Key", enable_key_rotation=True)
    return secure_bucket(stack, "Data", key=key, access_logs=access_log_bucket(stack))


def test_bucket_and_key_grants_pass_without_manual_acknowledgement():
    def build(stack):
        _bucket(stack).grant_read_write(_role(stack))

    app = _app_with(build)
    apply_guardrails(app)
    app.synth()  # raises on any unacknowledged finding


def test_the_acknowledged_findings_are_exactly_the_generated_shapes():
    def build(stack):
        _bucket(stack).grant_read(_role(stack))

    app = _app_with(build)
    acknowledged = acknowledge_generated_wildcards(app)
    findings = sorted(item.split(": ", 1)[1] for item in acknowledged)
    assert findings == sorted(
        [
            "Action::s3:GetBucket*",
            "Action::s3:GetObject*",
            "Action::s3:List*",
            f"Resource::<{_logical_id(app, 'Data')}.Arn>/*",
        ]
    )


def _logical_id(app: cdk.App, construct_id: str) -> str:
    stack = app.node.find_child("Subject")
    bucket = stack.node.find_child(construct_id)
    return stack.get_logical_id(bucket.node.default_child)


@pytest.mark.parametrize(
    ("actions", "resources", "finding"),
    [
        (["s3:*"], ["*"], "Action::s3:*"),
        (["s3:GetObject*"], ["arn:aws:dynamodb:eu-west-1:123456789012:table/*"], "Action::s3:GetObject*"),
        (["sagemaker:DescribeModelPackage"], ["*"], "Resource::*"),
        (
            ["kms:Decrypt"],
            ["arn:aws:kms:eu-west-1:123456789012:key/*"],
            "Resource::arn:aws:kms:eu-west-1:123456789012:key/*",
        ),
    ],
)
def test_other_wildcards_still_fail_synth(actions, resources, finding):
    def build(stack):
        _role(stack).add_to_policy(iam.PolicyStatement(actions=actions, resources=resources))

    app = _app_with(build)
    apply_guardrails(app)
    with pytest.raises(RuntimeError, match="ValidationFailed") as error:
        app.synth()
    assert f"AwsSolutions-IAM5[{finding}]" in str(error.value)


def test_a_key_granted_by_alias_is_accepted_only_with_its_condition():
    def build(stack):
        grant_key_by_alias(_role(stack), alias="alias/other-app-data", stack=stack)

    app = _app_with(build)
    apply_guardrails(app)
    app.synth()


def test_an_explicit_acknowledgement_needs_a_real_reason():
    app = _app_with(lambda stack: None)
    with pytest.raises(ValueError, match="needs a specific reason"):
        acknowledge(app, "AwsSolutions-IAM5", "ok")


def test_an_explicit_acknowledgement_silences_exactly_its_finding():
    def build(stack):
        role = _role(stack)
        role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:ListModelPackages"], resources=["*"]))
        acknowledge(role, "AwsSolutions-IAM5", "ListModelPackages takes no resource ARN in IAM.", finding="Resource::*")

    app = _app_with(build)
    apply_guardrails(app)
    app.synth()

    def build_with_another_wildcard(stack):
        build(stack)
        role = stack.node.find_child("Worker")
        role.add_to_policy(iam.PolicyStatement(actions=["sagemaker:List*"], resources=["*"]))

    app = _app_with(build_with_another_wildcard)
    apply_guardrails(app)
    with pytest.raises(RuntimeError, match="ValidationFailed") as error:
        app.synth()
    assert "AwsSolutions-IAM5[Action::sagemaker:List*]" in str(error.value)
    assert "AwsSolutions-IAM5[Resource::*]" not in str(error.value)


def test_render_writes_intrinsics_like_cdk_nag():
    assert render({"Fn::GetAtt": ["Bucket1", "Arn"]}) == "<Bucket1.Arn>"
    assert (
        render({"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":s3:::b/*"]]}) == "arn:<AWS::Partition>:s3:::b/*"
    )
    assert render({"Fn::Select": [1, ["a", "b"]]}) == '{"Fn::Select":[1,["a","b"]]}'


# -- allow(): the one way the apps give their own roles permissions ----------------------------------------


@pytest.mark.parametrize(
    ("actions", "resources", "named"),
    [
        (["sagemaker:ListModelPackages"], ["*"], "Resource *"),
        (["s3:GetObject*"], ["arn:aws:s3:::bucket/key"], "Action s3:GetObject*"),
        (["s3:GetObject"], ["arn:aws:s3:::bucket/raw/*"], "Resource arn:aws:s3:::bucket/raw/*"),
    ],
)
def test_allow_refuses_a_wildcard_without_a_reason(actions, resources, named):
    app = _app_with(lambda stack: None)
    role = _role(app.node.find_child("Subject"))
    with pytest.raises(ValueError, match=re.escape(f"allow(): {named} is a wildcard: say why")):
        allow(role, actions, resources)


@pytest.mark.parametrize(
    ("actions", "resources"),
    [
        (["sagemaker:ListModelPackages"], ["*"]),
        (["s3:GetObject*"], ["arn:aws:s3:::bucket/raw/*"]),
        (["iot:DescribeThing"], ["arn:aws:iot:eu-west-1:123456789012:thing/${iot:Connection.Thing.ThingName}*"]),
    ],
)
def test_allow_with_a_reason_passes_cdk_nag(actions, resources):
    def build(stack):
        allow(_role(stack), actions, resources, why="A reason specific to this statement and its wildcards.")

    app = _app_with(build)
    apply_guardrails(app)
    app.synth()


def test_allow_writes_the_statement_as_given_and_needs_no_reason_without_a_wildcard():
    def build(stack):
        statement = allow(
            _role(stack),
            ["s3:ListBucket"],
            ["arn:aws:s3:::bucket"],
            sid="ListRaw",
            conditions={"StringLike": {"s3:prefix": ["raw/"]}},
        )
        assert statement.sid == "ListRaw"

    app = _app_with(build)
    apply_guardrails(app)
    template = app.synth().get_stack_by_name("Subject").template
    (policy,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::IAM::Policy"]
    assert policy["Properties"]["PolicyDocument"]["Statement"] == [
        {
            "Sid": "ListRaw",
            "Action": "s3:ListBucket",
            "Effect": "Allow",
            "Resource": "arn:aws:s3:::bucket",
            "Condition": {"StringLike": {"s3:prefix": ["raw/"]}},
        }
    ]


def test_a_finding_is_named_as_cdk_nag_names_it():
    app = _app_with(lambda stack: None)
    stack = app.node.find_child("Subject")
    bucket = _bucket(stack)
    assert (
        finding(stack, "Resource", f"{bucket.bucket_arn}/raw/*") == f"Resource::<{_logical_id(app, 'Data')}.Arn>/raw/*"
    )
    assert finding(stack, "Resource", "arn:aws:s3:::b/${credentials-iot:ThingName}/*") == (
        "Resource::arn:aws:s3:::b/<credentials-iot:ThingName>/*"
    )


def test_allow_leaves_a_key_found_by_alias_to_the_generated_wildcard_check():
    key = "arn:aws:kms:eu-west-1:123456789012:key/*"

    def build(stack):
        allow(
            _role(stack),
            ["kms:Decrypt"],
            [key],
            conditions={"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/x"}},
        )

    app = _app_with(build)
    apply_guardrails(app)
    app.synth()
    # without the alias condition it is any key of the account: refused
    bare = _app_with(lambda stack: None)
    with pytest.raises(ValueError, match=re.escape(f"allow(): Resource {key} is a wildcard")):
        allow(_role(bare.node.find_child("Subject")), ["kms:Decrypt"], [key])
