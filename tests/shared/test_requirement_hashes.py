"""The training jobs and the devices install with pip --require-hashes from lock files made from the pins.

`make hashes` writes `requirements.lock` beside each `requirements.txt` (uv, every file of every pinned
version by SHA-256). These tests fail when a pin changes without its hashes, and when an install
command stops checking them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.requirements import requirement_name

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCKED = ["training/steps/requirements", "edge_deployment/components/inference/requirements"]
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>[\w.+!-]+)")


def _pins(text: str) -> dict[str, str]:
    pins = {}
    for raw in text.splitlines():
        match = _PIN.match(raw.split("#", 1)[0].strip())
        if match:
            pins[requirement_name(match["name"])] = match["version"]
    return pins


def _hashes(lock: str) -> dict[str, list[str]]:
    """Requirement name -> its --hash values, from a lock file (one requirement over continued lines)."""
    found: dict[str, list[str]] = {}
    for entry in lock.replace("\\\n", " ").splitlines():
        match = _PIN.match(entry.strip())
        if match:
            found[requirement_name(match["name"])] = re.findall(r"--hash=sha256:([0-9a-f]+)", entry)
    return found


@pytest.mark.parametrize("base", LOCKED)
def test_every_pin_has_its_hashes_in_the_lock_file(base):
    pins = _pins((REPO_ROOT / f"{base}.txt").read_text(encoding="utf-8"))
    lock = (REPO_ROOT / f"{base}.lock").read_text(encoding="utf-8")
    assert _pins(lock) == pins, f"{base}.lock is not made from {base}.txt: run `make hashes`"
    hashes = _hashes(lock)
    assert set(hashes) == set(pins)
    for name, values in hashes.items():
        assert values and all(len(value) == 64 for value in values), f"{base}.lock: {name} has no SHA-256"
    assert "make hashes" in lock.splitlines()[1], "the lock file says how it is made"


def test_a_changed_pin_without_new_hashes_is_caught(tmp_path):
    """The check above on a lock file that is one pin behind its requirements file."""
    base = LOCKED[1]
    text = (REPO_ROOT / f"{base}.txt").read_text(encoding="utf-8")
    bumped = re.sub(r"^numpy==\S+", "numpy==9.9.9", text, count=1, flags=re.MULTILINE)
    assert bumped != text
    lock = (REPO_ROOT / f"{base}.lock").read_text(encoding="utf-8")
    assert _pins(lock) != _pins(bumped)


def test_the_jobs_install_from_the_lock_file_with_require_hashes():
    script = (REPO_ROOT / "training" / "steps" / "run.sh").read_text(encoding="utf-8")
    (install,) = [line for line in script.replace("\\\n", " ").splitlines() if "pip install" in line]
    assert "--require-hashes" in install
    assert install.rstrip().endswith('-r "$PWD/training/steps/requirements.lock"')


def test_the_device_installs_from_the_lock_file_with_require_hashes():
    from edge_deployment.components.inference.recipe import REQUIREMENTS_FILE, install_script

    assert REQUIREMENTS_FILE == "requirements.lock"
    script = install_script(venv="/v", requirements="/a/requirements.lock")
    (pip,) = [line for line in script.splitlines() if "-m pip install" in line]
    assert "--require-hashes" in pip and "--only-binary=:all:" in pip
    assert pip.endswith("--requirement '/a/requirements.lock'")


def test_make_hashes_regenerates_both_lock_files_in_one_command():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "HASHED := " + " ".join(LOCKED) in makefile
    recipe = makefile.split("\nhashes:", 1)[1].split("\n\n", 1)[0]
    assert "uv pip compile" in recipe and "--generate-hashes" in recipe and "--no-deps" in recipe
    assert "--universal" in recipe  # every platform's files: jobs on x86_64, devices on amd64 and aarch64
