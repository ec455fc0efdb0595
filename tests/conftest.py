"""Settings every test shares: never reach AWS or the internet, and the common fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Fake credentials and a region for boto3/moto: a test can never touch a real account.
for _name, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_REGION": "eu-west-1",
}.items():
    os.environ[_name] = _value
os.environ.pop("AWS_PROFILE", None)
os.environ["YOLO_OFFLINE"] = "1"  # Ultralytics: no downloads, no update checks
os.environ.setdefault("JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION", "1")
os.environ.pop("CDK_DEFAULT_ACCOUNT", None)
os.environ.pop("CDK_DEFAULT_REGION", None)
# The device's compiled code (inspector/native.py) is built once per test session in a folder of its own,
# not in the user's cache.
if "INSPECTOR_NATIVE_DIR" not in os.environ:
    os.environ["INSPECTOR_NATIVE_DIR"] = tempfile.mkdtemp(prefix="inspector-native-")
    atexit.register(shutil.rmtree, os.environ["INSPECTOR_NATIVE_DIR"], ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parent.parent
# jsii runs on the Node.js that `make` installs when the system's is older than 22.
if (REPO_ROOT / "node_modules" / ".bin").is_dir():
    os.environ["PATH"] = f"{REPO_ROOT / 'node_modules' / '.bin'}{os.pathsep}{os.environ.get('PATH', '')}"

# Every AWS request a test makes (Stubber, moto or the e2e harness) is checked for what the service
# would reject although botocore lets it pass: maximum lengths, patterns, enums.
from tests.helpers.strict_params import install as _check_requests_strictly  # noqa: E402

_check_requests_strictly()

# The cross-app ML fixture (a tiny model trained by the project's own training code).
pytest_plugins = ["tests.model_fixtures"] if (Path(__file__).parent / "model_fixtures.py").exists() else []


@pytest.fixture(scope="session")
def settings():
    from shared.config import load_settings

    return load_settings(REPO_ROOT / "config.yaml")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto server on loopback: the S3 that Label Studio reads images from (same backends as mock_aws)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def studio(s3_endpoint: str):
    """A real Label Studio server (labeling/local/server.py), started once, stopped at the end."""
    from labeling.local.server import LabelStudioServer

    server = LabelStudioServer(s3_endpoint=s3_endpoint, region="eu-west-1").start()
    yield server
    server.stop()
