"""cdk-nag findings fail synth; only CDK's own wildcard shapes are acknowledged automatically."""

from __future__ import annotations

import tempfile
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms

from shared.building_blocks import access_log_bucket, grant_key_by_alias, secure_bucket
from shared.guardrails import acknowledge, acknowledge_generated_wildcards, apply_guardrails, render
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
