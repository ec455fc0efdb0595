"""A real Label Studio server on loopback, for the local try-out (`make label-studio-local`) and the tests.

* Label Studio runs from `.venv-label-studio` (`make label-studio` installs the pinned release there),
  with SQLite in a temporary folder, a user and a legacy API token made at start, and S3 pointed at
  a moto server on loopback (`S3_ENDPOINT`, which Label Studio trusts as the operator's setting).
* The first start migrates a new database (a minute or two on a busy machine); the migrated database
  is then kept beside the environment and copied for later starts, so they take seconds.
* `start()` waits for `/health` at most `timeout` seconds and fails with the server's log tail;
  `stop()` ends the server's whole process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # labeling/local/server.py
VENV = REPO_ROOT / ".venv-label-studio"
EXECUTABLE = VENV / "bin" / "label-studio"
TEMPLATE = VENV / "template-database"  # a migrated database with its user: later starts take seconds
USER = "labeler@example.com"
DEFAULT_TIMEOUT = 420.0


class LabelStudioNotInstalled(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LabelStudioServer:
    """One server process; `url` and `token` reach its API."""

    s3_endpoint: str
    region: str = "eu-west-1"
    port: int = field(default_factory=free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="label-studio-")))
    token: str = ""
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _environment(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")}
        return {
            **keep,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "DJANGO_DB": "sqlite",
            "LABEL_STUDIO_USERNAME": USER,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "S3_ENDPOINT": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> LabelStudioServer:
        if not EXECUTABLE.is_file():
            raise LabelStudioNotInstalled(
                f"{EXECUTABLE} not found: run `make label-studio` (or `make test`), which installs the pinned "
                "Label Studio into .venv-label-studio"
            )
        template_token = TEMPLATE / "token"
        if template_token.is_file():
            for item in TEMPLATE.iterdir():
                if item.name not in ("token", "password"):
                    shutil.copy2(item, self.data_dir / item.name)
            self.token = template_token.read_text().strip()
            self.password = (TEMPLATE / "password").read_text().strip()
        else:
            self.token = secrets.token_hex(20)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - the pinned executable of .venv-label-studio
            [str(EXECUTABLE), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=self.data_dir,
            env=self._environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}: {self.log_tail()}")
            if self._healthy() and self._token_works():
                if not template_token.is_file():
                    self._save_template()
                return self
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"Label Studio did not start within {timeout:.0f} s: {self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:  # noqa: S310 - loopback http
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _token_works(self) -> bool:
        request = urllib.request.Request(  # noqa: S310 - loopback http
            f"{self.url}/api/projects", headers={"Authorization": f"Token {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback http
                return "results" in json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _save_template(self) -> None:
        """Keep the freshly migrated database (with its user and token) for the next start."""
        database = self.data_dir / "label_studio.sqlite3"
        if not database.is_file():
            return
        staging = Path(tempfile.mkdtemp(prefix="label-studio-template-", dir=VENV))
        with contextlib.suppress(OSError):
            source = sqlite3.connect(str(database))
            target = sqlite3.connect(str(staging / database.name))
            with target:
                source.backup(target)
            source.close()
            target.close()
            (staging / "token").write_text(self.token)
            (staging / "password").write_text(self.password)
            os.replace(staging, TEMPLATE)
        shutil.rmtree(staging, ignore_errors=True)

    def log_tail(self, characters: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
