"""The inference component's Greengrass v2 recipe, as a pure function (no CDK, no AWS calls).

The component artifact is a ZIP of this folder (`INFERENCE_ARTIFACT_DIR`) with its contents at the
ZIP's root (what a CDK `Asset` of the folder or `build_artifact_zip` makes). Greengrass unpacks it
to `{artifacts:decompressedPath}/<ZIP name without .zip>/`; the device code is the `inspector`
package in it, run with that folder on PYTHONPATH.

- Install (once per requirements.lock content, not on every start): a virtual environment under
  `{work:path}` with the pinned requirements, each file checked against its SHA-256 in
  requirements.lock (`pip --require-hashes`; `make hashes` writes it from requirements.txt); a marker
  file makes later runs of the phase no-ops.
  The phase ends with `python -m inspector --check`, which also builds the letterbox and
  post-processing in C with the device's compiler into `{work:path}/native` (`INSPECTOR_NATIVE_DIR`);
  without a compiler the numpy code serves.
- Run: `python -m inspector` from that environment.
- Dependencies: the model component, SOFT (a new model version must not restart the inference
  component: it swaps the model itself), and the token exchange service (upload credentials).
- Access control: PublishToIoTCore on exactly the results and heartbeat topics (`{thing}` becomes
  the single-level wildcard `+`, the same topic on every device of the fleet). Reading and watching
  the model component's configuration needs no policy: the nucleus does not authorize
  GetConfiguration / SubscribeToConfigurationUpdate.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .inspector.config import DEFAULTS, KNOWN_KEYS, OPTIONAL_KEYS, ComponentConfig, topic_filter

INFERENCE_ARTIFACT_DIR = Path(__file__).resolve().parent
DEVICE_PACKAGE = "inspector"
REQUIREMENTS_FILE = "requirements.lock"  # requirements.txt with the SHA-256 of every file (make hashes)
RECIPE_FORMAT_VERSION = "2020-01-25"
PLATFORMS = ("amd64", "aarch64")  # Linux; onnxruntime, numpy, Pillow and awscrt publish wheels for both
TOKEN_EXCHANGE_SERVICE = "aws.greengrass.TokenExchangeService"  # noqa: S105 - a component name
NUCLEUS = "aws.greengrass.Nucleus"
NUCLEUS_REQUIREMENT = ">=2.6.0 <3.0.0"  # MQTT wildcards in IPC authorization policies
MINIMUM_PYTHON = (3, 11)  # numpy 2.4 needs Python 3.11+
INSTALL_TIMEOUT_S = 1800  # a first install downloads ~100 MB of wheels
_ARTIFACT_EXCLUDES = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def default_configuration(**values: Any) -> dict[str, Any]:
    """The component's DefaultConfiguration: the defaults, overridden by `values` (camelCase keys).

    Raises ValueError for an unknown key or an invalid value (the message names the key).
    `confidenceThreshold` / `iouThreshold` are left out unless given (then model.json's apply).
    """
    unknown = sorted(set(values) - KNOWN_KEYS)
    if unknown:
        raise ValueError(f"unknown configuration keys: {', '.join(unknown)} (known: {', '.join(sorted(KNOWN_KEYS))})")
    configuration: dict[str, Any] = {key: _plain(value) for key, value in DEFAULTS.items()}
    for key, value in values.items():
        if key in OPTIONAL_KEYS and value is None:
            continue
        configuration[key] = _plain(value)
    ComponentConfig.from_mapping(configuration, thing="example-thing", work_dir=Path("/work"))  # validates
    return configuration


def configuration_from_settings(edge_settings: Any, *, upload_bucket: str, **values: Any) -> dict[str, Any]:
    """The configuration from the edge_deployment settings section (shared.config.EdgeDeploymentSettings)."""
    return default_configuration(
        resultsTopic=edge_settings.results_topic,
        heartbeatTopic=edge_settings.heartbeat_topic,
        frameIntervalSeconds=edge_settings.frame_interval_seconds,
        uncertaintyBand=list(edge_settings.uncertainty_band),
        confidentSampleRate=edge_settings.confident_sample_rate,
        driftSampleRate=edge_settings.drift_sample_rate,
        maxUploadsPerHour=edge_settings.max_uploads_per_hour,
        offlineQueueMaxMB=edge_settings.offline_queue_mb,
        outboxMaxMB=edge_settings.outbox_mb,
        modelComponentName=edge_settings.model_component_name,
        precision=edge_settings.model_precision,
        int8MaxMap50Loss=edge_settings.int8_max_map50_loss,
        executionProviders=list(edge_settings.execution_providers),
        uploadBucket=upload_bucket,
        **values,
    )


def requirements_digest() -> str:
    """Short digest of requirements.lock: names the virtual environment, so it is built once per content."""
    return hashlib.sha256((INFERENCE_ARTIFACT_DIR / REQUIREMENTS_FILE).read_bytes()).hexdigest()[:12]


def artifact_folder(artifact_uri: str) -> str:
    """The folder Greengrass unpacks the ZIP into: its file name without .zip."""
    parts = urlsplit(artifact_uri)
    name = parts.path.rsplit("/", 1)[-1]
    if parts.scheme != "s3" or not parts.netloc or not name.lower().endswith(".zip") or len(name) <= 4:
        raise ValueError(f"artifact_uri must be s3://<bucket>/<key>.zip, got {artifact_uri!r}")
    return name[:-4]


def install_script(*, venv: str, requirements: str) -> str:
    """POSIX shell: build the environment unless the marker of a finished install is there."""
    major, minor = MINIMUM_PYTHON
    return "\n".join(
        [
            "set -eu",
            f"if [ -f '{venv}/.installed' ]; then echo 'requirements already installed in {venv}'; exit 0; fi",
            f"python3 -c 'import sys; sys.exit(0 if sys.version_info >= ({major}, {minor}) else "
            f'"Python {major}.{minor} or newer is required as python3")\'',
            f"rm -rf '{venv}'",
            f"python3 -m venv '{venv}'",
            f"'{venv}/bin/python' -m pip install --no-input --disable-pip-version-check --only-binary=:all: "
            f"--require-hashes --requirement '{requirements}'",
            f"'{venv}/bin/python' -m {DEVICE_PACKAGE} --check",
            f"touch '{venv}/.installed'",
        ]
    )


def inference_recipe(
    *,
    component_name: str,
    component_version: str,
    artifact_uri: str,
    model_component_name: str,
    configuration: Mapping[str, Any],
) -> dict[str, Any]:
    """The complete recipe (RecipeFormatVersion 2020-01-25) of the inference component."""
    values = dict(configuration)
    if values.setdefault("modelComponentName", model_component_name) != model_component_name:
        raise ValueError(
            f"configuration modelComponentName {values['modelComponentName']!r} differs from "
            f"model_component_name {model_component_name!r}"
        )
    default = default_configuration(**values)
    folder = f"{{artifacts:decompressedPath}}/{artifact_folder(artifact_uri)}"
    venv = f"{{work:path}}/venv-{requirements_digest()}"
    lifecycle = {
        "Setenv": {
            "PYTHONPATH": folder,
            "PYTHONUNBUFFERED": "1",
            "INSPECTOR_DECOMPRESSED_PATH": "{artifacts:decompressedPath}",
            "INSPECTOR_WORK_DIR": "{work:path}",
            "INSPECTOR_NATIVE_DIR": "{work:path}/native",  # the compiled letterbox (inspector/native.py)
        },
        "Install": {
            "Script": install_script(venv=venv, requirements=f"{folder}/{REQUIREMENTS_FILE}"),
            "Timeout": INSTALL_TIMEOUT_S,
            "RequiresPrivilege": False,
        },
        "Run": {"Script": f"exec '{venv}/bin/python' -m {DEVICE_PACKAGE}", "RequiresPrivilege": False},
    }
    topics = sorted({topic_filter(default["resultsTopic"]), topic_filter(default["heartbeatTopic"])})
    return {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": component_name,
        "ComponentVersion": component_version,
        "ComponentType": "aws.greengrass.generic",
        "ComponentDescription": (
            "Scratch detection on engraved tags: a YOLOv8 ONNX model served with onnxruntime; results and "
            "heartbeats over MQTT, uncertain frames uploaded for labeling."
        ),
        "ComponentPublisher": "edge deployment workflow",
        "ComponentConfiguration": {
            "DefaultConfiguration": {
                **default,
                "accessControl": {
                    "aws.greengrass.ipc.mqttproxy": {
                        f"{component_name}:mqttproxy:1": {
                            "policyDescription": "Publish inference results and heartbeats to AWS IoT Core.",
                            "operations": ["aws.greengrass#PublishToIoTCore"],
                            "resources": topics,
                        }
                    }
                },
            }
        },
        "ComponentDependencies": {
            model_component_name: {"VersionRequirement": ">=1.0.0", "DependencyType": "SOFT"},
            TOKEN_EXCHANGE_SERVICE: {"VersionRequirement": ">=2.0.0 <3.0.0", "DependencyType": "HARD"},
            NUCLEUS: {"VersionRequirement": NUCLEUS_REQUIREMENT, "DependencyType": "SOFT"},
        },
        "Manifests": [
            {
                "Name": f"Linux {architecture}",
                "Platform": {"os": "linux", "architecture": architecture},
                "Lifecycle": lifecycle,
                "Artifacts": [
                    {"Uri": artifact_uri, "Unarchive": "ZIP", "Permission": {"Read": "OWNER", "Execute": "NONE"}}
                ],
            }
            for architecture in PLATFORMS
        ],
    }


def artifact_files() -> list[Path]:
    """The files that make up the artifact (this folder, without caches), relative to it, sorted."""
    return sorted(
        path.relative_to(INFERENCE_ARTIFACT_DIR)
        for path in INFERENCE_ARTIFACT_DIR.rglob("*")
        if path.is_file()
        and not any(part in _ARTIFACT_EXCLUDES for part in path.relative_to(INFERENCE_ARTIFACT_DIR).parts)
        and path.suffix != ".pyc"
    )


def build_artifact_zip(destination: str | Path) -> Path:
    """Write the component artifact: this folder's files at the root of a ZIP (fixed timestamps)."""
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for relative in artifact_files():
            info = zipfile.ZipInfo(relative.as_posix(), date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, (INFERENCE_ARTIFACT_DIR / relative).read_bytes())
    return target


def _plain(value: Any) -> Any:
    """JSON-friendly copies (tuples become lists) so the recipe serializes as Greengrass expects."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    return value
