"""The labeling stage's stacks: data bucket, feature group, workflow, permissions; cdk-nag and cfn-lint clean."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aws_cdk.assertions import Match
from cfnlint.api import ManualArgs, lint_file

from labeling.runtime.config import LabelingConfig
from labeling.runtime.ground_truth import TASK_UI_DIR
from shared.contracts import LABEL_FEATURES
from shared.names import resource_names
from tests.helpers import asl
from tests.helpers.cdk_assembly import synthesized
from tests.helpers.requirements import requirement_name
from tests.labeling.stage import GROUND_TRUTH, SEED_EXAMPLE, Stage, settings_with, stage

SUBSTITUTIONS = {"AWS::AccountId": "123456789012", "AWS::Region": "eu-west-1"}
REPO_ROOT = Path(__file__).resolve().parents[2]
CERTIFICATE = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
NAMES = resource_names(settings_with(), account="123456789012", region="eu-west-1")


@pytest.fixture(scope="module")
def default() -> Stage:
    """An account that uses Ground Truth (the backend's own tests)."""
    return stage(**GROUND_TRUTH)


@pytest.fixture(scope="module")
def studio() -> Stage:
    """config.yaml as it is: Label Studio on an existing server, pre-labels on."""
    return stage()


def rendered(value: object, substitutions: dict[str, str] | None = None) -> str:
    return asl.render_token(value, substitutions or {})


def only(resources: dict[str, dict]) -> tuple[str, dict]:
    assert len(resources) == 1, list(resources)
    return next(iter(resources.items()))


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def test_data_bucket_is_encrypted_private_versioned_logged_and_retained(default):
    bucket_id, bucket = next(
        (lid, r) for lid, r in default.resources("data", "AWS::S3::Bucket").items() if "BucketName" in r["Properties"]
    )
    properties = bucket["Properties"]
    assert rendered(properties["BucketName"]) == "tag-inspect-data-123456789012-eu-west-1"
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    key_id, _ = only(default.resources("data", "AWS::KMS::Key"))
    assert rule["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms",
        "KMSMasterKeyID": {"Fn::GetAtt": [key_id, "Arn"]},
    }
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
    }  # fmt: skip
    assert "DestinationBucketName" in properties["LoggingConfiguration"]
    # lifecycle rules only for the temporary job files
    (lifecycle,) = properties["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Prefix"] == "labeling-jobs/" and lifecycle["ExpirationInDays"] == 180
    assert properties["CorsConfiguration"]["CorsRules"] == [
        {"AllowedMethods": ["GET"], "AllowedOrigins": ["*"], "ExposedHeaders": ["Access-Control-Allow-Origin"]}
    ]
    statements = [
        s
        for p in default.resources("data", "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": bucket_id}
        for s in p["Properties"]["PolicyDocument"]["Statement"]
    ]
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} for s in statements
    )
    deny_delete = next(s for s in statements if s.get("Sid") == "RawImagesAreNeverDeleted")
    assert deny_delete["Effect"] == "Deny" and deny_delete["Principal"] == {"AWS": "*"}
    assert deny_delete["Action"] == ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    assert (
        rendered(deny_delete["Resource"], {bucket_id + ".Arn": "arn:aws:s3:::data"}) == "arn:aws:s3:::data/raw-images/*"
    )


def test_data_key_is_found_by_alias_and_leaves_access_to_iam_policies(default):
    _, key = only(default.resources("data", "AWS::KMS::Key"))
    _, alias = only(default.resources("data", "AWS::KMS::Alias"))
    assert alias["Properties"]["AliasName"] == "alias/tag-inspect-data"
    assert key["DeletionPolicy"] == alias["DeletionPolicy"] == "Retain"
    assert key["Properties"]["EnableKeyRotation"] is True
    (statement,) = key["Properties"]["KeyPolicy"]["Statement"]
    assert (
        statement["Action"] == "kms:*"
        and rendered(statement["Principal"]["AWS"], SUBSTITUTIONS) == "arn:aws:iam::123456789012:root"
    )


def test_label_feature_group_follows_the_contract(default):
    data = default.stack("data")
    _, group = only(data.resources("AWS::SageMaker::FeatureGroup"))
    properties = group["Properties"]
    key_id, _ = only(data.resources("AWS::KMS::Key"))
    key_arn = {"Fn::GetAtt": [key_id, "Arn"]}
    assert group["DeletionPolicy"] == "Retain"
    assert properties["FeatureGroupName"] == "tag-inspect-labels"
    assert (properties["RecordIdentifierFeatureName"], properties["EventTimeFeatureName"]) == (
        "image_uri",
        "event_time",
    )
    assert {f["FeatureName"]: f["FeatureType"] for f in properties["FeatureDefinitions"]} == LABEL_FEATURES
    offline = properties["OfflineStoreConfig"]
    bucket_id = next(lid for lid, r in data.resources("AWS::S3::Bucket").items() if "BucketName" in r["Properties"])
    assert rendered(offline["S3StorageConfig"]["S3Uri"], {bucket_id: "data-bucket"}) == "s3://data-bucket/feature-store"
    assert offline["S3StorageConfig"]["KmsKeyId"] == key_arn
    assert offline["DataCatalogConfig"] == {
        "Catalog": "AwsDataCatalog", "Database": "tag_inspect_feature_store", "TableName": "tag_inspect_labels",
    }  # fmt: skip
    assert offline["TableFormat"] == "Glue" and offline["DisableGlueTableCreation"] is False
    assert properties["OnlineStoreConfig"] == {
        "EnableOnlineStore": True,
        "StorageType": "Standard",
        "SecurityConfig": {"KmsKeyId": key_arn},
    }
    role_id, role = only(data.resources("AWS::IAM::Role"))
    assert properties["RoleArn"] == {"Fn::GetAtt": [role_id, "Arn"]}
    assert role["Properties"]["RoleName"] == "tag-inspect-label-feature-store" and role["DeletionPolicy"] == "Retain"
    for action in ("s3:PutObject", "s3:GetBucketAcl", "kms:GenerateDataKey", "kms:Decrypt"):
        assert asl.role_allows(data.template, role_id, action), action
    _, database = only(data.resources("AWS::Glue::Database"))
    assert (
        database["Properties"]["DatabaseInput"]["Name"] == "tag_inspect_feature_store"
        and database["DeletionPolicy"] == "Retain"
    )
    data.assertions.has_resource(
        "AWS::SageMaker::FeatureGroup", {"DependsOn": Match.array_with([Match.string_like_regexp("CatalogDatabase")])}
    )


def test_the_data_stack_asks_for_termination_protection_and_deploys_before_the_workflow(default):
    assert default.termination_protection == {"tag-inspect-labeling-data": True, "tag-inspect-labeling-workflow": False}
    assert default.dependencies["tag-inspect-labeling-workflow"] == {"tag-inspect-labeling-data"}
    assert default.dependencies["tag-inspect-labeling-data"] == set()


# --------------------------------------------------------------------------------------------------
# Workflow
# --------------------------------------------------------------------------------------------------


def functions(stage_: Stage) -> dict[str, tuple[str, dict]]:
    """handler name -> (logical id, resource) of the workflow's Lambda functions."""
    found = {}
    for logical_id, function in stage_.resources("workflow", "AWS::Lambda::Function").items():
        handler = function["Properties"]["Handler"]
        if handler.startswith("labeling.runtime.handlers."):
            found[handler.rsplit(".", 1)[1]] = (logical_id, function)
    return found


def test_state_machine_is_named_logged_and_traced(default):
    workflow = default.stack("workflow")
    (machine,) = asl.state_machines(workflow.template).values()
    assert machine.properties["StateMachineName"] == "tag-inspect-labeling"
    assert machine.properties["TracingConfiguration"] == {"Enabled": True}
    assert machine.properties["LoggingConfiguration"]["Level"] == "ALL"
    assert machine.properties["LoggingConfiguration"]["IncludeExecutionData"] is True
    # the workflow pipeline runs exactly this state machine
    _, pipeline = only(workflow.resources("AWS::CodePipeline::Pipeline"))
    assert rendered(pipeline["Properties"]["Name"]) == NAMES.workflow_pipeline("labeling")
    actions = [a for s in pipeline["Properties"]["Stages"] for a in s["Actions"]]
    invoke = next(a for a in actions if a["ActionTypeId"]["Provider"] == "StepFunctions")
    assert invoke["Configuration"]["StateMachineArn"] == {"Ref": machine.logical_id}


def test_functions_run_the_bundled_runtime_with_the_deployment_settings(default):
    found = functions(default)
    assert set(found) == {
        "start_round", "find_unlabeled", "select_images", "pre_label",
        "prepare_labeling", "prepare_review", "write_labels",
    }  # fmt: skip
    for handler, (_, function) in found.items():
        properties = function["Properties"]
        assert properties["Runtime"] == "python3.14" and properties["Architectures"] == ["arm64"], handler
        assert properties["TracingConfig"] == {"Mode": "Active"}
        config = LabelingConfig.from_json(
            rendered(
                properties["Environment"]["Variables"]["LABELING_CONFIG"],
                {"LabelingGroundTruthRoleAF5937E0.Arn": "arn:aws:iam::123456789012:role/gt"} | SUBSTITUTIONS,
            )
        )
        assert config.data_bucket == "tag-inspect-data-123456789012-eu-west-1"
        assert (config.feature_group, config.class_names, config.review_mode) == (
            "tag-inspect-labels",
            ("scratch",),
            "verification",
        )
        assert config.ground_truth_role_arn == "arn:aws:iam::123456789012:role/gt"
        assert config.output_kms_key == "arn:aws:kms:eu-west-1:123456789012:alias/tag-inspect-data"
        assert config.workforce.work_team_arn.endswith("workteam/private-crowd/tag-inspectors")


def test_the_lambda_bundle_imports_without_the_repository(default):
    """The asset holds the runtime, the shared contract and Powertools, and imports from its own folder."""
    _, (_, function) = next(iter(functions(default).items()))
    asset_hash = function["Properties"]["Code"]["S3Key"].removesuffix(".zip")
    bundle = default.directory / f"asset.{asset_hash}"
    for name in (
        "labeling/runtime/handlers.py",
        "labeling/runtime/task_ui/verification.liquid.html",
        "shared/contracts.py",
    ):
        assert (bundle / name).is_file(), name
    assert (bundle / "aws_lambda_powertools").is_dir()
    assert not (bundle / "shared" / "config.py").exists()  # only the contract travels, not the CDK-side code
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import labeling.runtime.handlers as h, labeling.runtime.ground_truth as g; "
        "assert g.TASK_UI_DIR.is_dir(); print([name for name in dir(h) if callable(getattr(h, name))])"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, '.'); {probe}"],
        cwd=bundle,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "write_labels" in result.stdout
    assert TASK_UI_DIR.name == "task_ui"


REQUIRED_ACTIONS = {
    "start_round": ["states:ListExecutions"],
    "find_unlabeled": [
        "s3:ListBucket",
        "s3:PutObject",
        "sagemaker:BatchGetRecord",
        "kms:Decrypt",
        "kms:GenerateDataKey",
    ],
    "select_images": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "kms:Decrypt", "kms:GenerateDataKey"],
    "pre_label": [
        "s3:GetObject",
        "s3:PutObject",
        "sagemaker:ListModelPackages",
        "sagemaker:DescribeModelPackage",
        "kms:Decrypt",
    ],
    "prepare_labeling": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "kms:Decrypt", "kms:GenerateDataKey"],
    "prepare_review": ["s3:ListBucket", "s3:GetObject", "s3:PutObject", "kms:Decrypt"],
    "write_labels": ["s3:GetObject", "s3:PutObject", "sagemaker:BatchGetRecord", "sagemaker:PutRecord", "kms:Decrypt"],
}


@pytest.mark.parametrize("handler", sorted(REQUIRED_ACTIONS))
def test_each_function_may_call_what_its_code_calls_and_no_more(default, handler):
    template = default.stack("workflow").template
    _, function = functions(default)[handler]
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    for action in REQUIRED_ACTIONS[handler]:
        assert asl.role_allows(template, role_id, action), f"{handler} lacks {action}"
    granted = {
        a
        for s in asl.role_statements(template, role_id)
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert not {a for a in granted if a.startswith(("sagemaker:Create", "s3:Delete", "iam:"))}, granted
    if handler != "write_labels":
        assert not asl.role_allows(template, role_id, "sagemaker:PutRecord")


def test_ground_truth_role_reads_images_and_writes_only_job_files(default):
    template = default.stack("workflow").template
    role_id, role = next(
        (lid, r) for lid, r in default.resources("workflow", "AWS::IAM::Role").items() if "GroundTruth" in lid
    )
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    statements = asl.role_statements(template, role_id)
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert [rendered(s["Resource"], SUBSTITUTIONS) for s in writes] == [
        "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/labeling-jobs/*"
    ]
    reads = next(s for s in statements if s["Action"] == "s3:GetObject")
    assert sorted(rendered(r, SUBSTITUTIONS) for r in reads["Resource"]) == [
        "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/labeling-jobs/*",
        "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1/raw-images/*",
    ]
    kms = next(s for s in statements if "kms:Decrypt" in s["Action"])
    assert kms["Condition"] == {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/tag-inspect-data"}}
    # metrics only in SageMaker's namespaces (Ground Truth's is /aws/sagemaker/LabelingJobs)
    (metrics,) = [s for s in statements if s["Action"] == "cloudwatch:PutMetricData"]
    assert metrics["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}


@pytest.mark.parametrize(
    "action",
    [
        # the key policy of "Encrypt Output Data using KMS" (Ground Truth guide) for the job's execution role:
        # Encrypt, Decrypt, ReEncrypt*, GenerateDataKey*, DescribeKey
        "kms:Encrypt",
        "kms:Decrypt",
        "kms:ReEncryptFrom",
        "kms:ReEncryptTo",
        "kms:GenerateDataKey",
        "kms:GenerateDataKeyWithoutPlaintext",
        "kms:DescribeKey",
    ],
)
def test_ground_truth_role_may_use_the_output_key_as_ground_truth_requires(default, action):
    template = default.stack("workflow").template
    role_id = next(lid for lid in default.resources("workflow", "AWS::IAM::Role") if "GroundTruth" in lid)
    granting = [
        s
        for s in asl.role_statements(template, role_id)
        if action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    ]
    assert granting, f"the Ground Truth role lacks {action} on the data key"
    for statement in granting:  # only on the data key, found by its alias
        assert statement["Condition"] == {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/tag-inspect-data"}}


# --------------------------------------------------------------------------------------------------
# Label Studio and pre-labels
# --------------------------------------------------------------------------------------------------

LABEL_STUDIO_HANDLERS = {
    "prepare_label_studio_tasks": ["s3:GetObject", "s3:PutObject", "sagemaker:BatchGetRecord"],
    "label_studio_progress": [],
    "prepare_label_studio_review": ["s3:GetObject", "s3:PutObject"],
    "write_label_studio_labels": ["s3:GetObject", "s3:PutObject", "sagemaker:BatchGetRecord", "sagemaker:PutRecord"],
}


def test_label_studio_rounds_have_their_functions_and_no_ground_truth(studio):
    found = functions(studio)
    assert set(found) == {"start_round", "find_unlabeled", "select_images", "pre_label", *LABEL_STUDIO_HANDLERS}
    roles = studio.resources("workflow", "AWS::IAM::Role")
    assert not [lid for lid in roles if "GroundTruth" in lid]
    template = studio.stack("workflow").template
    (machine,) = asl.state_machines(template).values()
    for action in ("sagemaker:CreateLabelingJob", "iam:PassRole", "events:PutRule"):
        assert not asl.role_allows(template, machine.role_logical_id, action), action
    _, function = found["prepare_label_studio_tasks"]
    config = LabelingConfig.from_json(
        rendered(function["Properties"]["Environment"]["Variables"]["LABELING_CONFIG"], SUBSTITUTIONS)
    )
    assert (config.backend, config.label_studio_url, config.label_studio_token_secret) == (
        "label_studio",
        "https://label-studio.example.com",
        "tag-inspect/labeling/label-studio-api-token",
    )
    assert (config.workforce, config.ground_truth_role_arn, config.pre_labels) == (None, "", True)
    assert config.model_package_group == "tag-inspect-scratch-detector"


@pytest.mark.parametrize("handler", sorted(LABEL_STUDIO_HANDLERS))
def test_label_studio_functions_read_the_token_secret_and_what_their_code_needs(studio, handler):
    template = studio.stack("workflow").template
    _, function = functions(studio)[handler]
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    for action in LABEL_STUDIO_HANDLERS[handler]:
        assert asl.role_allows(template, role_id, action), f"{handler} lacks {action}"
    (secret,) = [s for s in asl.role_statements(template, role_id) if s["Action"] == "secretsmanager:GetSecretValue"]
    assert rendered(secret["Resource"], SUBSTITUTIONS) == (
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:tag-inspect/labeling/label-studio-api-token-??????"
    )
    if handler != "write_label_studio_labels":
        assert not asl.role_allows(template, role_id, "sagemaker:PutRecord")


def test_the_deployed_server_is_reached_by_its_domain_with_the_shared_secret():
    variant = stage(
        label_studio={"server": {"domain_name": "labels.example.com", "certificate_arn": CERTIFICATE}},
    )
    _, function = functions(variant)["label_studio_progress"]
    config = LabelingConfig.from_json(
        rendered(function["Properties"]["Environment"]["Variables"]["LABELING_CONFIG"], SUBSTITUTIONS)
    )
    assert config.label_studio_url == "https://labels.example.com"
    assert config.label_studio_token_secret == NAMES.label_studio_api_token_secret


def test_the_pre_label_function_runs_the_device_detector_at_the_device_pins(studio, tmp_path):
    _, function = functions(studio)["pre_label"]
    assert function["Properties"]["MemorySize"] == 3008 and function["Properties"]["Timeout"] == 900
    bundle = studio.directory / f"asset.{function['Properties']['Code']['S3Key'].removesuffix('.zip')}"
    device = REPO_ROOT / "edge_deployment/components/inference/inspector"
    for name in ("detector.py", "config.py", "native.py", "native.c"):
        assert (bundle / "inspector" / name).read_bytes() == (device / name).read_bytes(), name
    # The bundled package imports on its own (the function has no edge_deployment package to fall back on).
    alone = tmp_path / "alone"
    shutil.copytree(bundle / "inspector", alone / "inspector")
    check = "import sys; sys.path.insert(0, sys.argv[1]); from inspector import detector; print(detector.__file__)"
    done = subprocess.run([sys.executable, "-c", check, str(alone)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(alone / "inspector" / "detector.py")
    for package in ("onnxruntime", "numpy", "PIL", "aws_lambda_powertools", "labeling", "shared"):
        assert (bundle / package).is_dir(), package
    # wheels for the functions' platform (arm64, the runtime's Python), not this machine's
    (extension,) = (bundle / "onnxruntime" / "capi").glob("onnxruntime_pybind11_state*.so")
    assert "cpython-314-aarch64-linux-gnu" in extension.name
    size = sum(path.stat().st_size for path in bundle.rglob("*") if path.is_file())
    assert size < 250 * 2**20  # Lambda's limit for an unzipped function
    device_pins = requirement_pins(REPO_ROOT / "edge_deployment/components/inference/requirements.txt")
    assert requirement_pins(REPO_ROOT / "labeling/pre_label_requirements.txt").items() <= device_pins.items()


def test_the_pre_label_function_reads_only_the_training_apps_model_registry(studio):
    template = studio.stack("workflow").template
    _, function = functions(studio)["pre_label"]
    role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
    statements = asl.role_statements(template, role_id)
    (describe,) = [s for s in statements if s["Action"] == "sagemaker:DescribeModelPackage"]
    assert rendered(describe["Resource"], SUBSTITUTIONS) == (
        "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/*"
    )
    reads = [
        rendered(r, SUBSTITUTIONS) for s in statements if s["Action"] == "s3:GetObject" for r in _list(s["Resource"])
    ]
    assert "arn:aws:s3:::tag-inspect-models-123456789012-eu-west-1/*" in reads
    keys = [s["Condition"] for s in statements if "kms:Decrypt" in _list(s["Action"])]
    assert {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/tag-inspect-models"}} in keys


def test_without_pre_labels_there_is_no_pre_label_step():
    variant = stage(pre_labels=False)
    assert "pre_label" not in functions(variant)
    (machine,) = asl.state_machines(variant.stack("workflow").template).values()
    assert "PreLabel" not in machine.definition["States"]


def _list(value: object) -> list:
    return value if isinstance(value, list) else [value]


def requirement_pins(path: Path) -> dict[str, str]:
    """name -> pinned version of a requirements file."""
    lines = (raw.split("#", 1)[0].strip() for raw in path.read_text().splitlines())
    return {requirement_name(line): line.split("==", 1)[1] for line in lines if "==" in line}


# --------------------------------------------------------------------------------------------------
# Configuration variants
# --------------------------------------------------------------------------------------------------


def test_adopting_retained_data_creates_none_of_it():
    adopted = stage(adopt_existing_data=True)
    assert set(adopted.stacks) == {"tag-inspect-labeling-workflow"}  # nothing left for a data stack
    workflow = adopted.stack("workflow")
    for resource_type in ("AWS::SageMaker::FeatureGroup", "AWS::Glue::Database", "Custom::LabelSeed"):
        assert not workflow.resources(resource_type)
    aliases = [r["Properties"]["AliasName"] for r in workflow.resources("AWS::KMS::Alias").values()]
    assert "alias/tag-inspect-data" not in aliases
    assert all("WorkflowPipeline" in lid for lid in workflow.resources("AWS::S3::Bucket"))  # only the pipeline's own
    # the workflow is the same as when the data is created here
    assert set(functions(adopted)) == set(functions(stage()))


def test_seed_labels_are_imported_at_deploy_time_even_into_adopted_data():
    for seeded in (
        stage(seed_labels_file=SEED_EXAMPLE),
        stage(seed_labels_file=SEED_EXAMPLE, adopt_existing_data=True),
    ):
        data = seeded.stack("data")
        _, seed = only(data.resources("Custom::LabelSeed"))
        properties = seed["Properties"]
        assert (
            properties["FileName"] == "seed-labels.example.jsonl" and properties["FeatureGroup"] == "tag-inspect-labels"
        )
        assert (
            rendered(properties["BaseUri"], SUBSTITUTIONS) == "s3://tag-inspect-data-123456789012-eu-west-1/raw-images/"
        )
        function_id, function = only(data.resources("AWS::Lambda::Function"))
        assert properties["ServiceToken"] == {"Fn::GetAtt": [function_id, "Arn"]}
        assert function["Properties"]["Handler"] == "labeling.runtime.handlers.seed_resource"
        role_id = function["Properties"]["Role"]["Fn::GetAtt"][0]
        for action in ("s3:GetObject", "sagemaker:PutRecord", "sagemaker:BatchGetRecord", "kms:Decrypt"):
            assert asl.role_allows(data.template, role_id, action)
    created = stage(seed_labels_file=SEED_EXAMPLE).stack("data")
    created.assertions.has_resource(
        "Custom::LabelSeed", {"DependsOn": Match.array_with([Match.string_like_regexp("LabelFeatureGroup")])}
    )
    adopted = stage(seed_labels_file=SEED_EXAMPLE, adopt_existing_data=True)
    assert "AWS::SageMaker::FeatureGroup" not in json.dumps(adopted.stack("data").template)
    assert adopted.termination_protection["tag-inspect-labeling-data"] is False


def test_a_missing_seed_file_fails_synth_with_its_name():
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match=r"labeling.seed_labels_file: labeling/nope.jsonl does not exist"):
        stage(seed_labels_file="labeling/nope.jsonl")


def test_public_crowd_and_adjustment_reviews_synthesize():
    variant = stage(
        backend="ground_truth",
        label_studio=None,
        workforce={
            "type": "public",
            "public_task_price_usd": 0.036,
            "public_content": {"free_of_personal_data": True, "free_of_adult_content": False},
        },
        review_workforce={
            "type": "private",
            "work_team_arn": "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/reviewers",
        },
        review="adjustment",
        task_availability_lifetime_seconds=43_200,
        task_time_limit_seconds=900,
        max_images_per_job=250,
        workers_per_image=3,
        max_concurrent_tasks=200,
    )
    _, function = functions(variant)["prepare_review"]
    text = rendered(
        function["Properties"]["Environment"]["Variables"]["LABELING_CONFIG"],
        {"LabelingGroundTruthRoleAF5937E0.Arn": "x"} | SUBSTITUTIONS,
    )
    config = LabelingConfig.from_json(text)
    assert (config.workforce.type, config.workforce.price_usd, config.review_mode) == ("public", 0.036, "adjustment")
    # the team's own declarations reach the function that builds the job request
    assert (config.workforce.free_of_personal_data, config.workforce.free_of_adult_content) == (True, False)
    assert config.review_workforce.work_team_arn.endswith("private-crowd/reviewers")
    # the task limits and the batch size reach the functions from config.yaml
    assert (
        config.task_availability_lifetime_seconds,
        config.task_time_limit_seconds,
        config.max_images_per_job,
        config.workers_per_image,
        config.max_concurrent_tasks,
    ) == (43_200, 900, 250, 3, 200)


# --------------------------------------------------------------------------------------------------
# Linting and the real composition
# --------------------------------------------------------------------------------------------------


def test_templates_pass_cfn_lint():
    problems = []
    for variant in (stage(), stage(**GROUND_TRUTH), stage(seed_labels_file=SEED_EXAMPLE, adopt_existing_data=True)):
        for synthesized_stack in variant.stacks.values():
            config = ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=["W3005"])
            problems += [
                f"{synthesized_stack.stack_name}: {m}"
                for m in lint_file(Path(synthesized_stack.template_file), config=config)
            ]
    assert problems == []


def test_the_app_synthesizes_as_app_py_builds_it():
    """`cdk synth -c app=labeling` with the toolchain stack; cdk-nag runs over every stack."""
    names = {stack.stack_name for stack in synthesized("labeling")}
    assert {"tag-inspect-labeling-toolchain", "tag-inspect-labeling-data", "tag-inspect-labeling-workflow"} <= names


def test_only_ground_truth_rounds_expire_ground_truths_own_job_logs(default, studio):
    (retention,) = default.resources("workflow", "Custom::ServiceLogRetention").values()
    assert retention["Properties"]["LogGroupNames"] == ["/aws/sagemaker/LabelingJobs"]
    assert not studio.resources("workflow", "Custom::ServiceLogRetention")  # Label Studio writes no such logs
