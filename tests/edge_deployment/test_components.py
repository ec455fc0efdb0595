"""Step 2: the model component version (idempotent, from the package version) and component publishing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from edge_deployment.runtime.aws import DeploymentInputError
from edge_deployment.runtime.components import (
    VERSION_PLACEHOLDER,
    ComponentVersionConflict,
    ComponentVersionFailed,
    ModelComponentSettings,
    inference_component_version,
    model_component_recipe,
    model_component_version,
    prepare_model_component,
    publish_inference_component,
    render_recipe_template,
)
from edge_deployment.runtime.model_archive import MODEL_ZIP, InvalidModelArchive, ModelArchiveTooLarge
from edge_deployment.runtime.model_package import ModelPackage
from tests.edge_deployment.conftest import ACCOUNT, CLASS_NAMES, GROUP, MODEL_BUCKET, REGION, model_archive
from tests.edge_deployment.recipes import recipe_problems

COMPONENT = "com.example.tag-inspection.ScratchModel"
BUCKET = "edge-components-bucket"
ARCHIVE_KEY = "pipeline-runs/run-7/evaluate/package/model.tar.gz"
PACKAGE = ModelPackage(
    arn=f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{GROUP}/7",
    group_name=GROUP,
    version=7,
    model_data_url=f"s3://{MODEL_BUCKET}/{ARCHIVE_KEY}",
    approval_status="Approved",
    creation_time="2026-11-20T10:00:00+00:00",
)
ARN = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{COMPONENT}:versions:1.0.7"
ZIP_KEY = f"artifacts/{COMPONENT}/1.0.7/{MODEL_ZIP}"
SETTINGS = ModelComponentSettings(
    component_name=COMPONENT,
    bucket=BUCKET,
    model_bucket=MODEL_BUCKET,
    model_archive_prefix="pipeline-runs/",
    max_archive_bytes=10 * 1024 * 1024,
    class_names=CLASS_NAMES,
    partition="aws",
    region=REGION,
    account=ACCOUNT,
)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        for bucket in (MODEL_BUCKET, BUCKET):
            client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        yield client


@pytest.fixture
def greengrass():
    client = boto3.client("greengrassv2", region_name=REGION)
    sent: list[dict] = []
    client.meta.events.register(
        "provide-client-params.greengrassv2.CreateComponentVersion", lambda params, **_: sent.append(params)
    )
    with Stubber(client) as stub:
        yield client, stub, sent
        stub.assert_no_pending_responses()


def _objects(s3, bucket: str) -> list[str]:
    return [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def _status(state: str) -> dict:
    return {"arn": ARN, "componentName": COMPONENT, "componentVersion": "1.0.7", "status": {"componentState": state}}


def test_package_version_seven_is_component_version_one_zero_seven():
    assert model_component_version(7) == "1.0.7"
    assert model_component_version(123) == "1.0.123"
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="positive integer"):
            model_component_version(bad)


def test_the_model_recipe_is_a_valid_data_only_component_per_the_contract():
    recipe = model_component_recipe(
        component_name=COMPONENT, component_version="1.0.7", artifact_uri=f"s3://{BUCKET}/{ZIP_KEY}", package=PACKAGE
    )
    assert recipe_problems(recipe) == []
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"] == {
        "modelPackageArn": PACKAGE.arn,
        "modelPackageVersion": "7",
        "modelVersion": "1.0.7",
    }
    for manifest in recipe["Manifests"]:
        assert manifest["Artifacts"] == [
            {"Uri": f"s3://{BUCKET}/{ZIP_KEY}", "Unarchive": "ZIP", "Permission": {"Read": "ALL"}}
        ]
        assert set(manifest["Lifecycle"]) == {"install"}  # nothing long-running
        assert "{artifacts:decompressedPath}/model/model.onnx" in manifest["Lifecycle"]["install"]["Script"]
    assert {m["Platform"]["architecture"] for m in recipe["Manifests"]} == {"aarch64", "amd64"}


def test_the_model_recipe_checks_every_model_file_the_manifest_lists():
    from shared.contracts import ModelManifest, ModelVariant
    from tests.edge_deployment.conftest import manifest as manifest_document

    manifest = ModelManifest.from_json(manifest_document()).with_variant(
        ModelVariant(precision="int8", file="model.int8.onnx", metrics=manifest_document()["metrics"])
    )
    recipe = model_component_recipe(
        component_name=COMPONENT,
        component_version="1.0.7",
        artifact_uri=f"s3://{BUCKET}/{ZIP_KEY}",
        package=PACKAGE,
        manifest=manifest,
    )
    model_dir = "{artifacts:decompressedPath}/model"
    for platform in recipe["Manifests"]:
        assert platform["Lifecycle"]["install"]["Script"] == (
            f"test -s '{model_dir}/model.onnx' && test -s '{model_dir}/model.json' && "
            f"test -s '{model_dir}/model.int8.onnx'"
        )


def test_the_first_run_validates_repackages_uploads_and_creates_the_version(s3, greengrass):
    client, stub, sent = greengrass
    s3.put_object(Bucket=MODEL_BUCKET, Key=ARCHIVE_KEY, Body=model_archive())
    stub.add_client_error(
        "describe_component", "ResourceNotFoundException", http_status_code=404, expected_params={"arn": ARN}
    )
    stub.add_response(
        "create_component_version",
        {
            "arn": ARN,
            "componentName": COMPONENT,
            "componentVersion": "1.0.7",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "status": {"componentState": "REQUESTED"},
        },
        {"inlineRecipe": ANY, "clientToken": ANY},
    )
    result = prepare_model_component(s3=s3, greengrass=client, package=PACKAGE, settings=SETTINGS)
    assert result["created"] is True
    assert result["reused"] is False
    assert (result["name"], result["version"], result["arn"]) == (COMPONENT, "1.0.7", ARN)
    assert _objects(s3, BUCKET) == [ZIP_KEY]
    stored = s3.get_object(Bucket=BUCKET, Key=ZIP_KEY)
    assert stored["Metadata"]["model-package-arn"] == PACKAGE.arn
    assert stored["Metadata"]["sha256"] == result["model_sha256"]
    (request,) = sent
    recipe = json.loads(request["inlineRecipe"])
    assert recipe_problems(recipe) == []
    assert recipe["ComponentVersion"] == "1.0.7"
    # Greengrass takes client tokens of [a-zA-Z0-9-]{1,64}: a name with dots must not leak into it.
    assert re.fullmatch(r"[a-zA-Z0-9-]{1,64}", request["clientToken"]), request["clientToken"]
    assert recipe["Manifests"][0]["Artifacts"][0]["Uri"] == f"s3://{BUCKET}/{ZIP_KEY}"
    assert "classes: scratch" in recipe["ComponentDescription"]


def test_a_rerun_for_the_same_package_reuses_the_version_and_touches_nothing(s3, greengrass):
    client, stub, sent = greengrass
    existing = model_component_recipe(
        component_name=COMPONENT, component_version="1.0.7", artifact_uri=f"s3://{BUCKET}/{ZIP_KEY}", package=PACKAGE
    )
    existing["ComponentDescription"] = "described differently when it was created"
    stub.add_response("describe_component", _status("DEPLOYABLE"), {"arn": ARN})
    stub.add_response(
        "get_component",
        {"recipeOutputFormat": "JSON", "recipe": json.dumps(existing).encode()},
        {"arn": ARN, "recipeOutputFormat": "JSON"},
    )
    result = prepare_model_component(s3=s3, greengrass=client, package=PACKAGE, settings=SETTINGS)
    assert result["reused"] is True
    assert result["created"] is False
    assert result["arn"] == ARN
    assert sent == []  # no CreateComponentVersion
    assert _objects(s3, BUCKET) == []  # the model archive was not even read: nothing written


def test_a_version_made_from_another_package_is_a_conflict_not_a_silent_reuse(s3, greengrass):
    client, stub, _ = greengrass
    other = PACKAGE.to_json() | {"arn": PACKAGE.arn.replace("/7", "/77")}
    existing = model_component_recipe(
        component_name=COMPONENT,
        component_version="1.0.7",
        artifact_uri=f"s3://{BUCKET}/{ZIP_KEY}",
        package=ModelPackage.from_json(other),
    )
    stub.add_response("describe_component", _status("DEPLOYABLE"), {"arn": ARN})
    stub.add_response(
        "get_component",
        {"recipeOutputFormat": "JSON", "recipe": json.dumps(existing).encode()},
        {"arn": ARN, "recipeOutputFormat": "JSON"},
    )
    with pytest.raises(ComponentVersionConflict, match="exists already but was created from something else"):
        prepare_model_component(s3=s3, greengrass=client, package=PACKAGE, settings=SETTINGS)


@pytest.mark.parametrize(
    ("archive", "error", "message"),
    [
        (lambda: model_archive(model_onnx=None), InvalidModelArchive, r"has no model\.onnx"),
        (lambda: model_archive(model_json=b"[]"), InvalidModelArchive, r"model\.json"),
        (lambda: b"x" * (10 * 1024 * 1024 + 1), ModelArchiveTooLarge, r"over the limit of 10 MiB"),
    ],
    ids=["no-onnx", "bad-manifest", "over-the-limit"],
)
def test_a_bad_archive_fails_early_and_creates_nothing(s3, greengrass, archive, error, message):
    client, stub, sent = greengrass
    s3.put_object(Bucket=MODEL_BUCKET, Key=ARCHIVE_KEY, Body=archive())
    stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
    with pytest.raises(error, match=message):
        prepare_model_component(s3=s3, greengrass=client, package=PACKAGE, settings=SETTINGS)
    assert sent == []
    assert _objects(s3, BUCKET) == []


def test_an_archive_outside_the_model_bucket_is_refused(s3, greengrass):
    client, stub, sent = greengrass
    for url in ("s3://somebody-else/pipeline-runs/model.tar.gz", f"s3://{MODEL_BUCKET}/pretrained/model.tar.gz"):
        stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
        elsewhere = ModelPackage.from_json(PACKAGE.to_json() | {"model_data_url": url})
        with pytest.raises(InvalidModelArchive, match=f"outside pipeline-runs/ of the model bucket {MODEL_BUCKET}"):
            prepare_model_component(s3=s3, greengrass=client, package=elsewhere, settings=SETTINGS)
    assert sent == []


def test_a_missing_archive_is_bad_input(s3, greengrass):
    client, stub, _ = greengrass
    stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
    with pytest.raises(InvalidModelArchive, match="not found"):
        prepare_model_component(s3=s3, greengrass=client, package=PACKAGE, settings=SETTINGS)


# -- the inference component version (deploy time) ---------------------------------------------

INFERENCE = "com.example.tag-inspection.ScratchDetector"
SOURCE_BUCKET, SOURCE_KEY = "cdk-assets-bucket", "0123abcd.zip"


def _template(bucket: str = BUCKET) -> str:
    return json.dumps(
        {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": INFERENCE,
            "ComponentVersion": VERSION_PLACEHOLDER,
            "ComponentConfiguration": {"DefaultConfiguration": {"resultsTopic": "inspection/{thing}/results"}},
            "Manifests": [
                {
                    "Platform": {"os": "linux"},
                    "Lifecycle": {"run": "python3 {artifacts:decompressedPath}/inference/main.py"},
                    "Artifacts": [
                        {
                            "Uri": f"s3://{bucket}/artifacts/{INFERENCE}/{VERSION_PLACEHOLDER}/inference.zip",
                            "Unarchive": "ZIP",
                        }
                    ],
                }
            ],
        }
    )


def test_the_inference_version_is_derived_from_the_content():
    version = inference_component_version(artifact_hash="a" * 64, recipe_template=_template())
    assert version == inference_component_version(artifact_hash="a" * 64, recipe_template=_template())
    major, minor, patch = (int(part) for part in version.split("."))
    assert (major, minor) == (1, 0) and 0 <= patch < 2**28
    assert version != inference_component_version(artifact_hash="b" * 64, recipe_template=_template())
    assert version != inference_component_version(artifact_hash="a" * 64, recipe_template=_template("other-bucket"))
    # key order and whitespace are not content
    reordered = json.dumps(json.loads(_template()), sort_keys=True, indent=2)
    assert version == inference_component_version(artifact_hash="a" * 64, recipe_template=reordered)


def test_rendering_puts_the_version_everywhere_the_placeholder_was():
    recipe = render_recipe_template(_template(), "1.0.42")
    assert recipe["ComponentVersion"] == "1.0.42"
    assert recipe["Manifests"][0]["Artifacts"][0]["Uri"].endswith(f"/{INFERENCE}/1.0.42/inference.zip")
    assert VERSION_PLACEHOLDER not in json.dumps(recipe)
    with pytest.raises(ValueError, match="placeholder"):
        render_recipe_template(json.dumps({"ComponentVersion": "1.0.0"}), "1.0.1")


def _publish(s3, client, version: str = "1.0.42", **kwargs):
    recipe = render_recipe_template(_template(), version)
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{INFERENCE}:versions:{version}"
    return publish_inference_component(
        s3=s3,
        greengrass=client,
        recipe=recipe,
        arn=arn,
        source_bucket=SOURCE_BUCKET,
        source_key=SOURCE_KEY,
        bucket=BUCKET,
        key=f"artifacts/{INFERENCE}/{version}/inference.zip",
        sleep=lambda _: None,
        **kwargs,
    ), arn


def _inference_status(arn: str, state: str) -> dict:
    return {"arn": arn, "componentName": INFERENCE, "componentVersion": "1.0.42", "status": {"componentState": state}}


def test_a_new_inference_version_copies_the_asset_creates_and_waits_until_deployable(s3, greengrass):
    client, stub, sent = greengrass
    s3.create_bucket(Bucket=SOURCE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=SOURCE_BUCKET, Key=SOURCE_KEY, Body=b"PK zipped component folder")
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{INFERENCE}:versions:1.0.42"
    stub.add_client_error(
        "describe_component", "ResourceNotFoundException", http_status_code=404, expected_params={"arn": arn}
    )
    stub.add_response(
        "create_component_version",
        {
            "arn": arn,
            "componentName": INFERENCE,
            "componentVersion": "1.0.42",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "status": {"componentState": "REQUESTED"},
        },
        {"inlineRecipe": ANY, "clientToken": ANY},
    )
    stub.add_response("describe_component", _inference_status(arn, "INITIATED"), {"arn": arn})
    stub.add_response("describe_component", _inference_status(arn, "DEPLOYABLE"), {"arn": arn})
    published, _ = _publish(s3, client)
    assert published.created is True
    assert s3.get_object(Bucket=BUCKET, Key=f"artifacts/{INFERENCE}/1.0.42/inference.zip")["Body"].read() == (
        b"PK zipped component folder"
    )
    assert json.loads(sent[0]["inlineRecipe"])["ComponentVersion"] == "1.0.42"


def test_an_existing_inference_version_is_reused_without_copying(s3, greengrass):
    client, stub, sent = greengrass
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{INFERENCE}:versions:1.0.42"
    stub.add_response("describe_component", _inference_status(arn, "DEPLOYABLE"), {"arn": arn})
    stub.add_response(
        "get_component",
        {"recipeOutputFormat": "JSON", "recipe": json.dumps(render_recipe_template(_template(), "1.0.42")).encode()},
        {"arn": arn, "recipeOutputFormat": "JSON"},
    )
    stub.add_response("describe_component", _inference_status(arn, "DEPLOYABLE"), {"arn": arn})
    published, _ = _publish(s3, client)
    assert published.created is False
    assert sent == []
    assert _objects(s3, BUCKET) == []


def test_a_version_greengrass_refuses_fails_the_deploy(s3, greengrass):
    client, stub, _ = greengrass
    s3.create_bucket(Bucket=SOURCE_BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=SOURCE_BUCKET, Key=SOURCE_KEY, Body=b"PK")
    arn = f"arn:aws:greengrass:{REGION}:{ACCOUNT}:components:{INFERENCE}:versions:1.0.42"
    stub.add_client_error("describe_component", "ResourceNotFoundException", http_status_code=404)
    stub.add_response(
        "create_component_version",
        {
            "arn": arn,
            "componentName": INFERENCE,
            "componentVersion": "1.0.42",
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "status": {"componentState": "REQUESTED"},
        },
    )
    stub.add_response("describe_component", _inference_status(arn, "FAILED"), {"arn": arn})
    with pytest.raises(ComponentVersionFailed, match="is FAILED"):
        _publish(s3, client)


def test_the_recipe_must_name_the_artifact_it_publishes(s3, greengrass):
    client, _, _ = greengrass
    recipe = render_recipe_template(_template("another-bucket"), "1.0.42")
    with pytest.raises(DeploymentInputError, match="do not include"):
        publish_inference_component(
            s3=s3,
            greengrass=client,
            recipe=recipe,
            arn="arn",
            source_bucket=SOURCE_BUCKET,
            source_key=SOURCE_KEY,
            bucket=BUCKET,
            key="artifacts/x/1.0.42/inference.zip",
            sleep=lambda _: None,
        )


def test_module_paths_are_stable_for_the_lambda_bundle():
    """The functions import the runtime as edge_deployment.runtime.*: the bundle keeps that layout."""
    from edge_deployment.runtime_bundle import runtime_bundle

    bundle = runtime_bundle()
    for name in (
        "edge_deployment/__init__.py",
        "edge_deployment/runtime/handlers.py",
        "shared/contracts.py",
        "shared/__init__.py",
    ):
        assert (bundle / name).is_file(), name
    assert (bundle / "shared/contracts.py").read_bytes() == (
        Path(__file__).parents[2] / "shared/contracts.py"
    ).read_bytes()
    assert bundle == runtime_bundle()  # same content, same folder (and asset hash)
