"""`make synth` installs requirements.txt only: the CDK app must not need anything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers.cdk_assembly import CDK_CONTEXT, REPO_ROOT
from tests.helpers.requirements import pinned_names, requirements_closure


def _synth_with_requirements_only(tmp_path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CDK_CONTEXT_JSON=json.dumps(CDK_CONTEXT), CDK_OUTDIR=str(tmp_path / "cdk.out"))
    return subprocess.run(
        [sys.executable, "-m", "tests.helpers.synth_requirements_only"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_all_apps_synthesize_with_only_what_requirements_txt_installs(tmp_path):
    result = _synth_with_requirements_only(tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    manifest = json.loads((tmp_path / "cdk.out" / "manifest.json").read_text())
    assert any(name.endswith("-toolchain") for name in manifest["artifacts"])


def test_the_guard_refuses_a_package_outside_requirements_txt():
    """The check above can fail: pytest, installed for the tests only, is outside the closure."""
    closure = requirements_closure(pinned_names(REPO_ROOT / "requirements.txt"))
    assert {"aws-cdk-lib", "boto3", "botocore", "aws-lambda-powertools"} <= closure
    assert "pytest" not in closure and "torch" not in closure
    script = (
        "import sys; from tests.helpers.synth_requirements_only import RefuseOutsideRequirements; "
        "from tests.helpers.requirements import pinned_names, requirements_closure; "
        "from tests.helpers.cdk_assembly import REPO_ROOT; "
        "allowed = requirements_closure(pinned_names(REPO_ROOT / 'requirements.txt')); "
        "sys.meta_path.insert(0, RefuseOutsideRequirements(allowed)); "
        "import yaml; import pytest"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert "'pytest'" in result.stderr and "requirements.txt does not install" in result.stderr
