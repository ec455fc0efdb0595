"""Greengrass component versions: the model component of a package, and publishing any recipe idempotently.

Component versions are immutable. The model component's version comes from the model package
version (package 7 -> 1.0.7), so a re-run for the same package finds the version it created and
reuses it; the inference component's version comes from its content (see
edge_deployment/inference_component.py).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from edge_deployment.runtime.aws import (
    DeploymentInputError,
    component_arn,
    error_code,
    parse_s3_uri,
    transient_errors,
)
from edge_deployment.runtime.model_archive import (
    MODEL_ZIP,
    InvalidModelArchive,
    check_archive_size,
    repackage_model_archive,
)
from edge_deployment.runtime.model_package import ModelPackage
from shared.contracts import ModelManifest

RECIPE_FORMAT_VERSION = "2020-01-25"
ARTIFACT_PREFIX = "artifacts/"
MODEL_COMPONENT_MAJOR_MINOR = "1.0"
DEPLOYABLE = "DEPLOYABLE"
FAILED_STATES = frozenset({"FAILED", "DEPRECATED"})
# Stands for the inference component's version in its recipe template until the version is known.
VERSION_PLACEHOLDER = "9999.9999.9999"
INFERENCE_COMPONENT_MAJOR_MINOR = "1.0"
# Where Greengrass unpacks model.zip: {artifacts:decompressedPath}/model/ (the ZIP's name without .zip).
MODEL_DIR = "{artifacts:decompressedPath}/model"


class ComponentVersionConflict(DeploymentInputError):
    """A component version of that name exists already but was made from something else."""


class ComponentVersionFailed(Exception):
    """Greengrass refused the component version (its status is FAILED)."""


def model_component_version(package_version: int) -> str:
    """Model package version 7 -> component version 1.0.7 (shared/contracts.py)."""
    if isinstance(package_version, bool) or int(package_version) < 1:
        raise ValueError(f"model package version must be a positive integer, got {package_version!r}")
    return f"{MODEL_COMPONENT_MAJOR_MINOR}.{int(package_version)}"


def inference_component_version(*, artifact_hash: str, recipe_template: str) -> str:
    """The inference component's version, derived from its content: the artifact and the recipe.

    Same artifact and same recipe (configuration, artifact bucket) -> same version, reused; any change
    -> a new version. The patch number is 28 bits of a SHA-256, far below the 2^31 Greengrass allows.
    """
    canonical = json.dumps(json.loads(recipe_template), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{artifact_hash}\n{canonical}".encode()).hexdigest()
    return f"{INFERENCE_COMPONENT_MAJOR_MINOR}.{int(digest[:7], 16)}"


def render_recipe_template(recipe_template: str, version: str) -> dict[str, Any]:
    """The recipe of `version` from its template (every VERSION_PLACEHOLDER replaced)."""
    if VERSION_PLACEHOLDER not in recipe_template:
        raise ValueError(f"the recipe template does not contain the version placeholder {VERSION_PLACEHOLDER}")
    return dict(json.loads(recipe_template.replace(VERSION_PLACEHOLDER, version)))


def artifact_key(component_name: str, component_version: str, filename: str) -> str:
    """S3 key of a component artifact in the component bucket (versions never share a key)."""
    return f"{ARTIFACT_PREFIX}{component_name}/{component_version}/{filename}"


def model_component_recipe(
    *,
    component_name: str,
    component_version: str,
    artifact_uri: str,
    package: ModelPackage,
    manifest: ModelManifest | None = None,
    publisher: str = "edge deployment workflow",
) -> dict[str, Any]:
    """The model component's recipe: one artifact (model.zip, unarchived), no long-running lifecycle.

    The install phase only checks that the unpacked model is there, so a broken artifact fails the
    deployment on the device (and rolls it back) instead of starting the inference on nothing.
    """
    description = f"YOLOv8 ONNX model of model package {package.group_name} version {package.version}"
    if manifest is not None:
        metrics = ", ".join(f"{name} {value:.3f}" for name, value in sorted(manifest.metrics.items()))
        description += f" (classes: {', '.join(manifest.class_names)}; test {metrics})"
    files = manifest.model_files if manifest is not None else ("model.onnx",)
    check = " && ".join(f"test -s '{MODEL_DIR}/{name}'" for name in (files[0], "model.json", *files[1:]))
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": component_name,
        "ComponentVersion": component_version,
        "ComponentDescription": description[:1000],
        "ComponentPublisher": publisher,
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                "modelPackageArn": package.arn,
                "modelPackageVersion": str(package.version),
                "modelVersion": component_version,
            }
        },
        "Manifests": [
            {
                "Name": f"Linux {architecture}",
                "Platform": {"os": "linux", "architecture": architecture},
                "Lifecycle": {"install": {"Script": check, "Timeout": 60, "RequiresPrivilege": False}},
                "Artifacts": [{"Uri": artifact_uri, "Unarchive": "ZIP", "Permission": {"Read": "ALL"}}],
            }
            for architecture in ("aarch64", "amd64")
        ],
    }


@dataclass(frozen=True)
class PublishedComponent:
    name: str
    version: str
    arn: str
    created: bool
    state: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "arn": self.arn, "created": self.created}


def component_state(greengrass: Any, arn: str) -> str | None:
    """The component version's state (REQUESTED, INITIATED, DEPLOYABLE, FAILED, DEPRECATED), None if absent."""
    try:
        with transient_errors():
            described = greengrass.describe_component(arn=arn)
    except ClientError as error:
        if error_code(error) == "ResourceNotFoundException":
            return None
        raise
    return str(described["status"]["componentState"])


def existing_recipe(greengrass: Any, arn: str) -> dict[str, Any]:
    with transient_errors():
        answer = greengrass.get_component(arn=arn, recipeOutputFormat="JSON")
    recipe = answer["recipe"]
    return dict(json.loads(recipe.decode("utf-8") if isinstance(recipe, (bytes, bytearray)) else recipe))


def _identity(recipe: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """What makes two recipes of one version the same: default configuration and artifact URIs."""
    configuration = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration")
    uris = sorted({a.get("Uri", "") for m in recipe.get("Manifests", []) for a in m.get("Artifacts", [])})
    return configuration, uris


def check_same_component(greengrass: Any, arn: str, recipe: Mapping[str, Any]) -> None:
    """Raise ComponentVersionConflict when the existing version was created from another recipe."""
    existing = existing_recipe(greengrass, arn)
    if _identity(existing) != _identity(recipe):
        raise ComponentVersionConflict(
            f"component {recipe['ComponentName']} version {recipe['ComponentVersion']} exists already "
            f"but was created from something else (configuration/artifacts {_identity(existing)} instead of "
            f"{_identity(recipe)}); component versions are immutable, so nothing was changed. If the component "
            "bucket was replaced (stack destroyed and deployed again), delete that old version first: "
            f"aws greengrassv2 delete-component --arn {arn}"
        )


def publish_component_version(greengrass: Any, recipe: Mapping[str, Any], *, arn: str) -> PublishedComponent:
    """Create the component version of `recipe`, or reuse it when that exact version exists already."""
    state = component_state(greengrass, arn)
    if state is not None:
        check_same_component(greengrass, arn, recipe)
        return PublishedComponent(
            name=str(recipe["ComponentName"]),
            version=str(recipe["ComponentVersion"]),
            arn=arn,
            created=False,
            state=state,
        )
    return _create_or_adopt(greengrass, recipe, arn=arn)


def _create_or_adopt(greengrass: Any, recipe: Mapping[str, Any], *, arn: str) -> PublishedComponent:
    name, version = str(recipe["ComponentName"]), str(recipe["ComponentVersion"])
    try:
        with transient_errors():
            created = greengrass.create_component_version(
                inlineRecipe=json.dumps(recipe, sort_keys=True).encode("utf-8"),
                # Idempotent per component version; Greengrass takes [a-zA-Z0-9-]{1,64} only (no dots).
                clientToken=hashlib.sha256(f"{name}\n{version}".encode()).hexdigest(),
            )
    except ClientError as error:
        if error_code(error) != "ConflictException":
            raise
        # Created meanwhile (a concurrent run): the same version, if the same recipe.
        check_same_component(greengrass, arn, recipe)
        return PublishedComponent(name=name, version=version, arn=arn, created=False, state="REQUESTED")
    return PublishedComponent(
        name=name,
        version=version,
        arn=str(created["arn"]),
        created=True,
        state=str(created["status"]["componentState"]),
    )


def wait_until_deployable(
    greengrass: Any,
    arn: str,
    *,
    attempts: int = 30,
    interval_seconds: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until the version is DEPLOYABLE (used at deploy time by the inference component's custom resource)."""
    for _ in range(attempts):
        state = component_state(greengrass, arn)
        if state == DEPLOYABLE:
            return state
        if state in FAILED_STATES:
            raise ComponentVersionFailed(f"component version {arn} is {state}")
        sleep(interval_seconds)
    raise TimeoutError(f"component version {arn} is not deployable after {attempts * interval_seconds:.0f} s")


@dataclass(frozen=True)
class ModelComponentSettings:
    """What the model component step needs from the configuration (passed in the function's environment)."""

    component_name: str
    bucket: str
    model_bucket: str
    model_archive_prefix: str
    max_archive_bytes: int
    class_names: Sequence[str]
    partition: str
    region: str
    account: str


def prepare_model_component(
    *, s3: Any, greengrass: Any, package: ModelPackage, settings: ModelComponentSettings, workdir: Path | None = None
) -> dict[str, Any]:
    """Step 2: the model component version of `package`, created once and reused by every later run.

    Order matters for bad input: the archive is checked (size first, from its metadata) and
    repackaged before anything is written, so a bad package creates nothing.
    """
    version = model_component_version(package.version)
    arn = component_arn(
        partition=settings.partition,
        region=settings.region,
        account=settings.account,
        name=settings.component_name,
        version=version,
    )
    key = artifact_key(settings.component_name, version, MODEL_ZIP)
    artifact_uri = f"s3://{settings.bucket}/{key}"
    recipe = model_component_recipe(
        component_name=settings.component_name, component_version=version, artifact_uri=artifact_uri, package=package
    )
    if component_state(greengrass, arn) is not None:
        # A re-run for the same package: the version exists, so nothing is downloaded or written.
        check_same_component(greengrass, arn, recipe)
        reused = PublishedComponent(name=settings.component_name, version=version, arn=arn, created=False, state="")
        return {**reused.to_json(), "artifact_uri": artifact_uri, "reused": True}

    bucket, archive_key = parse_s3_uri(package.model_data_url)
    if bucket != settings.model_bucket or not archive_key.startswith(settings.model_archive_prefix):
        raise InvalidModelArchive(
            f"model archive {package.model_data_url} is outside {settings.model_archive_prefix} of the model bucket "
            f"{settings.model_bucket} (where training writes them, and all this app may read); nothing was created"
        )
    try:
        with transient_errors():
            head = s3.head_object(Bucket=bucket, Key=archive_key)
    except ClientError as error:
        if error_code(error) not in ("404", "403", "NoSuchKey", "NotFound", "AccessDenied"):
            raise
        raise InvalidModelArchive(
            f"model archive {package.model_data_url} not found or not readable ({error_code(error)}); "
            "nothing was created"
        ) from None
    check_archive_size(int(head["ContentLength"]), max_bytes=settings.max_archive_bytes, source=package.model_data_url)
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        local_archive = Path(scratch) / "model.tar.gz"
        with transient_errors():
            s3.download_file(bucket, archive_key, str(local_archive))
        repackaged = repackage_model_archive(
            local_archive,
            Path(scratch) / MODEL_ZIP,
            max_archive_bytes=settings.max_archive_bytes,
            expected_class_names=settings.class_names,
            source=package.model_data_url,
        )
        recipe = model_component_recipe(
            component_name=settings.component_name,
            component_version=version,
            artifact_uri=artifact_uri,
            package=package,
            manifest=repackaged.manifest,
        )
        with transient_errors(), repackaged.zip_path.open("rb") as body:
            # Nothing uses this key before the component version exists, so a retried run may rewrite it.
            s3.put_object(
                Bucket=settings.bucket,
                Key=key,
                Body=body,
                ContentType="application/zip",
                Metadata={"model-package-arn": package.arn, "sha256": repackaged.sha256},
            )
    published = _create_or_adopt(greengrass, recipe, arn=arn)
    return {
        **published.to_json(),
        "artifact_uri": artifact_uri,
        "reused": not published.created,
        "model_sha256": repackaged.sha256,
        "class_names": list(repackaged.manifest.class_names),
    }


def copy_artifact_once(s3: Any, *, source_bucket: str, source_key: str, bucket: str, key: str) -> bool:
    """Copy the artifact into the component bucket unless it is there already (never overwrites one)."""
    try:
        with transient_errors():
            s3.head_object(Bucket=bucket, Key=key)
        return False
    except ClientError as error:
        if error_code(error) not in ("404", "NoSuchKey", "NotFound"):
            raise
    with transient_errors():
        s3.copy_object(
            CopySource={"Bucket": source_bucket, "Key": source_key},
            Bucket=bucket,
            Key=key,
            ContentType="application/zip",
            MetadataDirective="REPLACE",
        )
    return True


def publish_inference_component(
    *,
    s3: Any,
    greengrass: Any,
    recipe: Mapping[str, Any],
    arn: str,
    source_bucket: str,
    source_key: str,
    bucket: str,
    key: str,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishedComponent:
    """Deploy time: copy the asset into the component bucket and create the version (or reuse it)."""
    expected_uri = f"s3://{bucket}/{key}"
    if expected_uri not in _identity(recipe)[1]:
        raise DeploymentInputError(f"the recipe's artifacts {_identity(recipe)[1]} do not include {expected_uri}")
    state = component_state(greengrass, arn)
    if state is not None:
        check_same_component(greengrass, arn, recipe)
        published = PublishedComponent(
            name=str(recipe["ComponentName"]),
            version=str(recipe["ComponentVersion"]),
            arn=arn,
            created=False,
            state=state,
        )
    else:
        copy_artifact_once(s3, source_bucket=source_bucket, source_key=source_key, bucket=bucket, key=key)
        published = _create_or_adopt(greengrass, recipe, arn=arn)
    wait_until_deployable(greengrass, arn, sleep=sleep)
    return published
