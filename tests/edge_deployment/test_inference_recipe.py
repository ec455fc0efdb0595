"""The inference component's recipe (recipe.py): what Greengrass will do with it on a device.

Checked with the recipe checker of these tests, and specifically: the install phase installs the
pinned requirements once (the script is run with stand-ins for python3 and pip), the run phase
starts the device package, the configuration keys are exactly those inspector/config.py reads,
the artifact URIs, and IPC access to exactly the results and heartbeat topics.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from edge_deployment.components.inference.inspector.config import (
    DEFAULTS,
    KNOWN_KEYS,
    ComponentConfig,
    topic_filter,
)
from edge_deployment.components.inference.recipe import (
    INFERENCE_ARTIFACT_DIR,
    artifact_folder,
    build_artifact_zip,
    configuration_from_settings,
    default_configuration,
    inference_recipe,
    requirements_digest,
)
from shared.config import ConfigError, parse_settings
from shared.names import EDGE_UPLOAD_PREFIX
from tests.edge_deployment.recipes import recipe_problems
from tests.shared.test_config import _set

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACT_URI = "s3://tag-inspect-edge-components-123456789012-eu-west-1/artifacts/inspector/1.0.5/inference.zip"
UPLOAD_BUCKET = "tag-inspect-data-123456789012-eu-west-1"
DEVICE_PACKAGES_NOT_ALLOWED = {"torch", "torchvision", "ultralytics", "opencv-python", "opencv-python-headless"}


@pytest.fixture(scope="module")
def recipe(settings) -> dict[str, Any]:
    edge = settings.edge_deployment
    return inference_recipe(
        component_name=edge.inference_component_name,
        component_version="1.0.5",
        artifact_uri=ARTIFACT_URI,
        model_component_name=edge.model_component_name,
        configuration=configuration_from_settings(edge, upload_bucket=UPLOAD_BUCKET),
    )


def lifecycles(recipe: dict[str, Any]) -> list[dict[str, Any]]:
    return [manifest["Lifecycle"] for manifest in recipe["Manifests"]]


def test_the_recipe_passes_the_recipe_checker(recipe: dict[str, Any]) -> None:
    assert recipe_problems(recipe) == []
    assert {m["Platform"]["architecture"] for m in recipe["Manifests"]} == {"amd64", "aarch64"}
    assert {m["Platform"]["os"] for m in recipe["Manifests"]} == {"linux"}
    # The same lifecycle on every platform: only the wheels differ, and pip picks those.
    first, *others = lifecycles(recipe)
    assert all(other == first for other in others)


# --------------------------------------------------------------------------------------------------
# Lifecycle
# --------------------------------------------------------------------------------------------------


def test_install_builds_an_environment_from_the_pinned_requirements_and_run_only_starts_it(
    recipe: dict[str, Any],
) -> None:
    for lifecycle in lifecycles(recipe):
        assert set(lifecycle) == {"Setenv", "Install", "Run"}
        install, run = lifecycle["Install"]["Script"], lifecycle["Run"]["Script"]
        venv = f"{{work:path}}/venv-{requirements_digest()}"
        folder = "{artifacts:decompressedPath}/inference"
        assert "-m pip install" in install
        assert f"--require-hashes --requirement '{folder}/requirements.lock'" in install
        assert "--only-binary=:all:" in install  # no compiler needed on the device
        assert f"'{venv}/bin/python' -m inspector --check" in install
        assert install.index("--check") < install.index(f"touch '{venv}/.installed'"), "marker only after the check"
        assert lifecycle["Install"]["Timeout"] >= 600
        assert run == f"exec '{venv}/bin/python' -m inspector"
        assert "pip" not in run
        assert lifecycle["Setenv"]["PYTHONPATH"] == folder
        assert lifecycle["Setenv"]["INSPECTOR_DECOMPRESSED_PATH"] == "{artifacts:decompressedPath}"
        assert lifecycle["Setenv"]["INSPECTOR_WORK_DIR"] == "{work:path}"
        assert lifecycle["Setenv"]["INSPECTOR_NATIVE_DIR"] == "{work:path}/native"
        assert not lifecycle["Install"]["RequiresPrivilege"] and not lifecycle["Run"]["RequiresPrivilege"]


def _requirements() -> dict[str, str]:
    pins = {}
    for raw in (INFERENCE_ARTIFACT_DIR / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.]*)", line)
            assert match, f"requirements.txt: {line!r} is not pinned as name==version"
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_device_requirements_are_pinned_lean_and_the_versions_the_tests_ran_with() -> None:
    from importlib import metadata

    pins = _requirements()
    assert {"onnxruntime", "numpy", "pillow", "awsiotsdk"} <= set(pins)
    assert not DEVICE_PACKAGES_NOT_ALLOWED & set(pins)
    for name, version in pins.items():
        assert metadata.version(name) == version, (
            f"{name}: tests ran with {metadata.version(name)}, device gets {version}"
        )


def test_what_the_pinned_packages_depend_on_is_pinned_too() -> None:
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(name) for name in _requirements()}
    for name in sorted(pins):
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue  # an extra, or another platform's
            assert canonicalize_name(requirement.name) in pins, f"{name} needs {requirement}, not pinned"


def _shim(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run_install(script: str, root: Path, *, pip_fails: bool = False) -> subprocess.CompletedProcess[str]:
    """The install script, with python3 and the environment's python recording what they are asked to do."""
    shims = root / "shims"
    shims.mkdir(exist_ok=True)
    log = root / "calls.log"
    venv_python = (
        f'echo "venv-python $*" >> {log}\n'
        + ('case "$*" in *"pip install"*) exit 1;; esac\n' if pip_fails else "")
        + "exit 0\n"
    )
    _shim(
        shims / "python3",
        f'echo "python3 $*" >> {log}\n'
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
        '  mkdir -p "$3/bin"\n'
        f"  cat > \"$3/bin/python\" <<'EOF'\n#!/bin/sh\n{venv_python}EOF\n"
        '  chmod +x "$3/bin/python"\n'
        "fi\n"
        "exit 0\n",
    )
    rendered = script.replace("{work:path}", str(root / "work")).replace(
        "{artifacts:decompressedPath}", str(root / "artifacts")
    )
    return subprocess.run(
        ["sh", "-c", rendered],
        capture_output=True,
        text=True,
        env={"PATH": f"{shims}:/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


def _calls(root: Path) -> list[str]:
    log = root / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_the_install_phase_installs_once_and_later_starts_skip_it(recipe: dict[str, Any], tmp_path: Path) -> None:
    script = lifecycles(recipe)[0]["Install"]["Script"]
    first = _run_install(script, tmp_path)
    assert first.returncode == 0, first.stderr
    calls = _calls(tmp_path)
    assert any(c.startswith("python3 -m venv ") for c in calls)
    (pip,) = [c for c in calls if "-m pip install" in c]
    assert pip.endswith(f"--require-hashes --requirement {tmp_path}/artifacts/inference/requirements.lock")
    assert calls[-1] == "venv-python -m inspector --check"

    again = _run_install(script, tmp_path)  # Greengrass runs Install again at the next start
    assert again.returncode == 0
    assert "requirements already installed" in again.stdout
    assert _calls(tmp_path) == calls, "nothing is installed a second time"


def test_a_failed_install_leaves_no_marker_and_is_tried_again(recipe: dict[str, Any], tmp_path: Path) -> None:
    script = lifecycles(recipe)[0]["Install"]["Script"]
    assert _run_install(script, tmp_path, pip_fails=True).returncode != 0
    assert not list((tmp_path / "work").glob("venv-*/.installed"))
    assert _run_install(script, tmp_path).returncode == 0
    assert len([c for c in _calls(tmp_path) if "-m pip install" in c]) == 2


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _keys_config_py_reads() -> set[str]:
    """The string keys ComponentConfig.from_mapping reads (reader.<type>("key") and values["key"])."""
    tree = ast.parse(Path(inspect.getsourcefile(ComponentConfig) or "").read_text())
    (function,) = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "from_mapping"]
    keys = set()
    for node in ast.walk(function):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "reader"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            keys.add(node.args[0].value)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            keys.add(node.slice.value)
    return keys


def test_the_configuration_keys_are_exactly_those_the_component_reads(recipe: dict[str, Any], settings) -> None:
    assert _keys_config_py_reads() == set(KNOWN_KEYS)
    default = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    given_optional = {
        key
        for key, value in (
            ("confidenceThreshold", settings.edge_deployment.confidence_threshold),
            ("iouThreshold", settings.edge_deployment.iou_threshold),
        )
        if value is not None
    }
    assert set(default) - {"accessControl"} == set(DEFAULTS) | given_optional
    assert set(default) - {"accessControl"} <= KNOWN_KEYS
    assert ComponentConfig.unknown_keys(default) == []


def test_the_default_configuration_carries_the_settings_and_is_valid_on_a_device(
    recipe: dict[str, Any], settings
) -> None:
    edge = settings.edge_deployment
    default = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    config = ComponentConfig.from_mapping(default, thing="line-1-cam-1", work_dir=Path("/greengrass/v2/work/x"))
    assert config.results_topic == edge.results_topic.replace("{thing}", "line-1-cam-1")
    assert config.heartbeat_topic == edge.heartbeat_topic.replace("{thing}", "line-1-cam-1")
    assert config.uncertainty_band == tuple(edge.uncertainty_band)
    assert config.confident_sample_rate == edge.confident_sample_rate
    assert config.offline_queue_max_bytes == edge.offline_queue_mb * 1024 * 1024
    assert config.outbox_max_bytes == edge.outbox_mb * 1024 * 1024
    assert config.model_component_name == edge.model_component_name
    assert config.upload_bucket == UPLOAD_BUCKET
    assert config.upload_prefix == EDGE_UPLOAD_PREFIX
    json.dumps(default, allow_nan=False)  # Greengrass takes JSON


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"frameRate": 5}, "unknown configuration keys: frameRate"),
        ({"uncertaintyBand": [0.7, 0.3]}, "uncertaintyBand"),
        ({"resultsTopic": "inspection/+/results"}, "resultsTopic"),
        ({"heartbeatIntervalSeconds": 0}, "heartbeatIntervalSeconds"),
    ],
)
def test_an_invalid_configuration_fails_at_synth_with_the_key_named(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        default_configuration(modelComponentName="com.example.Model", **values)


def test_the_model_component_name_cannot_disagree_with_the_dependency() -> None:
    with pytest.raises(ValueError, match="differs from model_component_name"):
        inference_recipe(
            component_name="com.example.Inspector",
            component_version="1.0.0",
            artifact_uri=ARTIFACT_URI,
            model_component_name="com.example.Model",
            configuration={"modelComponentName": "com.example.Other"},
        )


# --------------------------------------------------------------------------------------------------
# Artifacts and dependencies
# --------------------------------------------------------------------------------------------------


def test_the_only_artifact_is_the_component_zip_unpacked_where_pythonpath_points(recipe: dict[str, Any]) -> None:
    for manifest in recipe["Manifests"]:
        assert manifest["Artifacts"] == [
            {"Uri": ARTIFACT_URI, "Unarchive": "ZIP", "Permission": {"Read": "OWNER", "Execute": "NONE"}}
        ]
        assert manifest["Lifecycle"]["Setenv"]["PYTHONPATH"].endswith("/" + artifact_folder(ARTIFACT_URI))


@pytest.mark.parametrize(
    "uri", ["https://bucket/inference.zip", "s3://bucket/inference.tar.gz", "s3:///inference.zip", "s3://bucket/.zip"]
)
def test_artifact_uris_other_than_an_s3_zip_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match=r"artifact_uri must be s3://<bucket>/<key>\.zip"):
        artifact_folder(uri)


def test_model_updates_do_not_restart_the_component_and_uploads_get_credentials(
    recipe: dict[str, Any], settings
) -> None:
    dependencies = recipe["ComponentDependencies"]
    assert dependencies[settings.edge_deployment.model_component_name]["DependencyType"] == "SOFT"
    assert dependencies["aws.greengrass.TokenExchangeService"]["DependencyType"] == "HARD"
    assert dependencies["aws.greengrass.Nucleus"]["VersionRequirement"].startswith(">=2.6.0")  # wildcard policies


def _mqtt_matches(topic_filter_: str, topic: str) -> bool:
    pattern = "^" + re.escape(topic_filter_).replace("\\+", "[^/]+") + "$"
    return re.match(pattern, topic) is not None


def test_access_control_allows_publishing_to_exactly_the_results_and_heartbeat_topics(
    recipe: dict[str, Any], settings
) -> None:
    access = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert list(access) == ["aws.greengrass.ipc.mqttproxy"]
    (policy,) = access["aws.greengrass.ipc.mqttproxy"].values()
    assert policy["operations"] == ["aws.greengrass#PublishToIoTCore"]
    edge = settings.edge_deployment
    assert sorted(policy["resources"]) == sorted({topic_filter(edge.results_topic), topic_filter(edge.heartbeat_topic)})
    assert all("#" not in resource for resource in policy["resources"])
    config = ComponentConfig.from_mapping(
        recipe["ComponentConfiguration"]["DefaultConfiguration"], thing="line-1-cam-1", work_dir=Path("/w")
    )
    for topic in (config.results_topic, config.heartbeat_topic):
        assert [r for r in policy["resources"] if _mqtt_matches(r, topic)], f"{topic} is not allowed"
    assert not any(_mqtt_matches(r, "inspection/line-1-cam-1/commands") for r in policy["resources"])


def test_custom_topics_change_the_policy_with_them() -> None:
    recipe = inference_recipe(
        component_name="com.example.Inspector",
        component_version="1.0.0",
        artifact_uri=ARTIFACT_URI,
        model_component_name="com.example.Model",
        configuration={"resultsTopic": "factory/{thing}/scratches", "heartbeatTopic": "factory/health"},
    )
    (policy,) = recipe["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"][
        "aws.greengrass.ipc.mqttproxy"
    ].values()
    assert policy["resources"] == ["factory/+/scratches", "factory/health"]


def test_the_artifact_zip_holds_the_device_package_and_passes_the_install_check(tmp_path: Path) -> None:
    archive = build_artifact_zip(tmp_path / "inference.zip")
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
        opened.extractall(tmp_path / "inference")
    assert {
        "requirements.txt",
        "requirements.lock",
        "inspector/__main__.py",
        "inspector/detector.py",
        "inspector/service.py",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert build_artifact_zip(tmp_path / "again.zip").read_bytes() == archive.read_bytes(), "reproducible"
    completed = subprocess.run(
        [sys.executable, "-m", "inspector", "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "inference"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("inspector ")
    assert "onnxruntime" in completed.stdout


@pytest.mark.parametrize("module", ["recipe.py", "inspector/config.py"])
def test_what_synth_imports_needs_nothing_but_the_standard_library(module: str) -> None:
    """recipe.py (and the configuration it validates with) run at synth time, without device packages."""
    tree = ast.parse((INFERENCE_ARTIFACT_DIR / module).read_text())
    absolute, relative = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.add(node.module or "")
            else:
                absolute.add((node.module or "").split(".")[0])
    assert absolute <= set(sys.stdlib_module_names) | {"__future__"}
    assert relative <= {"inspector.config"}


def test_the_outbox_size_comes_from_config_yaml(settings) -> None:
    import yaml

    from edge_deployment.inference_component import inference_configuration

    edge = settings.edge_deployment.model_copy(update={"outbox_mb": 64})
    assert configuration_from_settings(edge, upload_bucket=UPLOAD_BUCKET)["outboxMaxMB"] == 64
    stack_side = inference_configuration(settings.model_copy(update={"edge_deployment": edge}), upload_bucket="b")
    assert stack_side["outboxMaxMB"] == 64
    with pytest.raises(ConfigError, match=r"edge_deployment\.outbox_mb"):
        parse_settings(_set(yaml.safe_load((REPO_ROOT / "config.yaml").read_text()), "edge_deployment.outbox_mb", 0))
