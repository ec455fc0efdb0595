"""The labeling app's Lambda functions: one code bundle, several handlers, the settings they run with.

`python_function` bundles one folder. The runtime code imports `labeling.runtime.*` and
`shared.contracts` (the label record contract shared with training), so the bundle is staged at synth
time in a temporary folder laid out like the repository:

    labeling_lambda.py        entry module the handler strings name (generated)
    labeling/runtime/...      this app's runtime package
    shared/contracts.py       the contract module (standard library only)

The folder's name is a hash of its content, so an unchanged runtime keeps its asset hash and a change
deploys new code.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from constructs import Construct, IConstruct

from labeling.runtime.config import LabelingConfig, Workforce
from labeling.runtime.ground_truth import load_task_ui
from shared.building_blocks import log_retention, python_function
from shared.config import Settings, WorkforceSettings
from shared.guardrails import IAM5, acknowledge, render
from shared.names import LABELING_JOBS_PREFIX, RAW_IMAGE_PREFIX, ResourceNames

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
RUNTIME_DIR = APP_DIR / "runtime"
ENTRY_MODULE = "labeling_lambda"
HANDLERS = ("start_round", "find_unlabeled", "prepare_labeling", "prepare_review", "write_labels", "seed_resource")
_ENTRY_SOURCE = (
    '"""Lambda entry points of the labeling app (generated into the bundle by labeling/functions.py)."""\n\n'
    f"from labeling.runtime.handlers import {', '.join(sorted(HANDLERS))}\n\n"
    f"__all__ = {sorted(HANDLERS)!r}\n"
)
_PACKAGE_DOC = '"""Staged copy for the Lambda bundle."""\n'


def _bundle_files() -> dict[str, bytes]:
    """Relative path in the bundle -> content."""
    files: dict[str, bytes] = {
        f"{ENTRY_MODULE}.py": _ENTRY_SOURCE.encode(),
        "labeling/__init__.py": _PACKAGE_DOC.encode(),
        "shared/__init__.py": _PACKAGE_DOC.encode(),
        "shared/contracts.py": (REPO_ROOT / "shared" / "contracts.py").read_bytes(),
    }
    for path in sorted(RUNTIME_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"labeling/runtime/{path.relative_to(RUNTIME_DIR).as_posix()}"] = path.read_bytes()
    return files


def runtime_bundle_dir() -> Path:
    """Stage the bundle folder (once per content) and return it."""
    files = _bundle_files()
    digest = hashlib.sha256()
    for name, content in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(content).digest())
    target = Path(tempfile.gettempdir()) / f"labeling-lambda-{digest.hexdigest()[:20]}"
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix="labeling-lambda-staging-"))
    for name, content in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    try:
        os.replace(staging, target)
    except OSError:  # another synth staged the same content first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def labeling_function(
    scope: Construct,
    construct_id: str,
    *,
    handler: str,
    description: str,
    environment: dict[str, str],
    settings: Settings,
    timeout: cdk.Duration,
    memory_size: int = 1024,
) -> lambda_.Function:
    if handler not in HANDLERS:
        raise ValueError(f"unknown labeling handler {handler!r}; expected one of {HANDLERS}")
    return python_function(
        scope,
        construct_id,
        code_dir=runtime_bundle_dir(),
        handler=f"{ENTRY_MODULE}.{handler}",
        description=description,
        environment=environment,
        timeout=timeout,
        memory_size=memory_size,
        log_retention=log_retention(settings.toolchain.log_retention_days),
    )


def _workforce(workforce: WorkforceSettings | None) -> Workforce | None:
    if workforce is None:
        return None
    return Workforce(
        type=workforce.type, work_team_arn=workforce.work_team_arn, price_usd=workforce.public_task_price_usd
    )


def runtime_config(
    settings: Settings, names: ResourceNames, *, ground_truth_role_arn: str = "", output_kms_key: str = ""
) -> LabelingConfig:
    """What the functions need to know, from the validated settings (the worker files are checked too)."""
    labeling = settings.labeling
    load_task_ui(settings.project.class_names)  # a class without worker instructions fails synth here
    return LabelingConfig(
        project_prefix=settings.project.prefix,
        data_bucket=names.data_bucket,
        feature_group=names.label_feature_group,
        class_names=tuple(settings.project.class_names),
        raw_prefix=RAW_IMAGE_PREFIX,
        jobs_prefix=LABELING_JOBS_PREFIX,
        workforce=_workforce(labeling.workforce),
        review_workforce=_workforce(labeling.effective_review_workforce),
        ground_truth_role_arn=ground_truth_role_arn,
        output_kms_key=output_kms_key,
        review_mode=labeling.review,
        max_images_per_job=labeling.max_images_per_job,
        task_time_limit_seconds=labeling.task_time_limit_seconds,
        task_availability_lifetime_seconds=labeling.task_availability_lifetime_seconds,
        workers_per_image=labeling.workers_per_image,
        max_concurrent_tasks=labeling.max_concurrent_tasks,
    )


def acknowledge_resource(construct: IConstruct, resource: str, reason: str) -> None:
    """Acknowledge one wildcard-resource finding (AwsSolutions-IAM5) on `construct`, named as cdk-nag names it."""
    finding = "Resource::" + render(cdk.Stack.of(construct).resolve(resource))
    acknowledge(construct, IAM5, reason, finding=finding)
