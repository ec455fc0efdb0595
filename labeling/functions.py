"""The labeling app's Lambda functions: one code bundle, several handlers, the settings they run with.

The bundle (`shared.code_bundle`) holds `labeling/runtime/`, `shared/contracts.py` and the CloudFormation
responder at their repository paths, so each handler string names its function:
`labeling.runtime.handlers.start_round`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from labeling.runtime.config import LabelingConfig, Workforce
from labeling.runtime.ground_truth import load_task_ui
from shared.building_blocks import LAMBDA_ARCHITECTURE, LAMBDA_RUNTIME, log_retention, python_function
from shared.code_bundle import code_bundle
from shared.config import ConfigError, Settings, WorkforceSettings
from shared.names import LABELING_JOBS_PREFIX, RAW_IMAGE_PREFIX, ResourceNames

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
HANDLER_MODULE = "labeling.runtime.handlers"
HANDLERS = (
    "start_round",
    "find_unlabeled",
    "select_images",
    "pre_label",
    "prepare_labeling",
    "prepare_review",
    "write_labels",
    "prepare_label_studio_tasks",
    "label_studio_progress",
    "prepare_label_studio_review",
    "write_label_studio_labels",
    "seed_resource",
)
RUNTIME_PACKAGES = ("labeling/runtime", "shared/runtime/cfn_response.py", "shared/runtime/model_registry.py")


def runtime_bundle_dir() -> Path:
    """Stage the bundle folder (once per content) and return it."""
    return code_bundle("labeling-lambda", RUNTIME_PACKAGES)


# -- the pre-label function: the same bundle, the device's detector and its packages for Lambda ----------

DETECTOR_FILE = REPO_ROOT / "edge_deployment" / "components" / "inference" / "inspector" / "detector.py"
# detector.py and the modules it imports (native.c: the function has no C compiler, so numpy serves there,
# but the detector finds its source where it looks for it).
DETECTOR_FILES = ("detector.py", "config.py", "native.py", "native.c")
PRE_LABEL_REQUIREMENTS = APP_DIR / "pre_label_requirements.txt"
_PLATFORMS = {"arm64": "aarch64", "x86_64": "x86_64"}


def lambda_pip_target() -> list[str]:
    """pip options that fetch wheels for the functions' runtime and architecture (no Docker, no build)."""
    machine = _PLATFORMS[LAMBDA_ARCHITECTURE.name]
    version = LAMBDA_RUNTIME.name.removeprefix("python")
    platforms = [f"manylinux_2_28_{machine}", f"manylinux_2_17_{machine}", f"manylinux2014_{machine}"]
    return [
        "--only-binary=:all:",
        "--no-deps",  # the requirements file lists the whole closure, pinned
        "--implementation",
        "cp",
        "--python-version",
        version,
        *[option for platform in platforms for option in ("--platform", platform)],
    ]


def pre_label_packages_dir() -> Path:
    """onnxruntime, numpy and Pillow at the device's pins, installed once for the Lambda platform."""
    requirements = PRE_LABEL_REQUIREMENTS.read_bytes()
    key = hashlib.sha256(requirements + " ".join(lambda_pip_target()).encode()).hexdigest()[:20]
    target = Path(tempfile.gettempdir()) / f"labeling-pre-label-packages-{key}"
    if (target / ".complete").is_file():
        return target
    staging = Path(tempfile.mkdtemp(prefix="labeling-pre-label-packages-staging-"))
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(staging),
        *lambda_pip_target(),
        "--requirement",
        str(PRE_LABEL_REQUIREMENTS),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603 - our own pip
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ConfigError(
            "labeling.pre_labels: the pre-label function's packages (labeling/pre_label_requirements.txt) could not "
            f"be installed for the Lambda platform: {(done.stderr or done.stdout).strip()[-600:]} "
            "(pip needs the package index; set labeling.pre_labels: false to synthesize without pre-labels)"
        )
    for unused in ("bin", "numpy/_core/tests", "numpy/tests", "numpy/f2py", "numpy/typing/tests"):
        shutil.rmtree(staging / unused, ignore_errors=True)
    (staging / ".complete").write_text("installed\n")
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def pre_label_bundle_dir() -> Path:
    """The runtime bundle plus the device's detector (DETECTOR_FILES, unchanged) and its packages."""
    detector = {
        "inspector/__init__.py": b'"""The device\'s detector, bundled unchanged for the pre-label function."""\n',
        **{f"inspector/{name}": (DETECTOR_FILE.parent / name).read_bytes() for name in DETECTOR_FILES},
    }
    return code_bundle(
        "labeling-pre-label-lambda", RUNTIME_PACKAGES, extra_files=detector, site_packages=pre_label_packages_dir()
    )


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
    code_dir: Path | None = None,
) -> lambda_.Function:
    if handler not in HANDLERS:
        raise ValueError(f"unknown labeling handler {handler!r}; expected one of {HANDLERS}")
    return python_function(
        scope,
        construct_id,
        code_dir=code_dir or runtime_bundle_dir(),
        handler=f"{HANDLER_MODULE}.{handler}",
        description=description,
        environment=environment,
        timeout=timeout,
        memory_size=memory_size,
        log_retention=log_retention(settings.toolchain.log_retention_days),
    )


def _workforce(workforce: WorkforceSettings | None) -> Workforce | None:
    if workforce is None:
        return None
    declared = workforce.public_content
    return Workforce(
        type=workforce.type,
        work_team_arn=workforce.work_team_arn,
        price_usd=workforce.public_task_price_usd,
        free_of_personal_data=declared.free_of_personal_data if declared else None,
        free_of_adult_content=declared.free_of_adult_content if declared else None,
    )


def label_studio_endpoint(settings: Settings, names: ResourceNames) -> tuple[str, str]:
    """(URL, API token secret) of the Label Studio server: the team's own, or the one the app deploys."""
    studio = settings.labeling.label_studio
    if studio is None:
        return "", ""
    if studio.url is not None:
        return studio.url.rstrip("/"), str(studio.api_token_secret)
    assert studio.server is not None  # the schema requires url or server
    return f"https://{studio.server.domain_name}", names.label_studio_api_token_secret


def runtime_config(
    settings: Settings, names: ResourceNames, *, ground_truth_role_arn: str = "", output_kms_key: str = ""
) -> LabelingConfig:
    """What the functions need to know, from the validated settings (the worker files are checked too)."""
    labeling = settings.labeling
    load_task_ui(settings.project.class_names)  # a class without worker instructions fails synth here
    url, secret = label_studio_endpoint(settings, names)
    return LabelingConfig(
        backend=labeling.backend,
        label_studio_url=url,
        label_studio_token_secret=secret,
        label_studio_presign_ttl_minutes=labeling.label_studio.presign_ttl_minutes if labeling.label_studio else 5,
        pre_labels=labeling.pre_labels,
        model_package_group=names.model_package_group,
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
