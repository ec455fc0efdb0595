"""Code bundles laid out like the repository, so a Lambda handler string names the module it runs.

Every app's runtime code imports itself by its repository path (`labeling.runtime.handlers`,
`edge_deployment.runtime.handlers`, `training.steps.gate`) and the contract module
`shared.contracts`. A bundle holds exactly those packages at those paths, plus an `__init__.py` for
each parent package that is not bundled itself, so the handler string of a function is the dotted path
of a real file: `edge_deployment.runtime.handlers.prepare_model` is `prepare_model` in
`edge_deployment/runtime/handlers.py`.

A bundle is staged once per content in a temporary folder named by a hash of that content: synth is
repeatable and the asset hash changes only when the code does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = "shared/contracts.py"
_PACKAGE_DOC = b'"""Parent package of the bundled code (the repository\'s own is not bundled)."""\n'


def _is_code(path: Path) -> bool:
    return path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"


def bundle_files(packages: Sequence[str], *, extra_files: Mapping[str, bytes] | None = None) -> dict[str, bytes]:
    """Relative path in the bundle -> content: `packages` (repository folders, or single modules such as
    "shared/runtime/cfn_response.py") and `shared/contracts.py`.

    Parent packages that are not bundled get an empty-ish `__init__.py`, so `a.b.c` imports as in the
    repository; `extra_files` are added as given (e.g. a module the bundle needs under another path).
    """
    files: dict[str, bytes] = {CONTRACTS: (REPO_ROOT / CONTRACTS).read_bytes()}
    for package in packages:
        source = REPO_ROOT / package
        if source.suffix == ".py" and source.is_file():  # one module of a package, without its siblings
            files[package] = source.read_bytes()
            continue
        if not (source / "__init__.py").is_file():
            raise ValueError(f"code_bundle: {package!r} is not a package or module of the repository")
        for path in sorted(source.rglob("*")):
            if _is_code(path):
                files[path.relative_to(REPO_ROOT).as_posix()] = path.read_bytes()
    for name in list(files):
        parts = name.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            files.setdefault("/".join([*parts[:depth], "__init__.py"]), _PACKAGE_DOC)
    files.update(extra_files or {})
    return files


def stage(files: Mapping[str, bytes], name: str, *, site_packages: Path | None = None) -> Path:
    """A folder with `files` (over a copy of `site_packages`), named by a hash of its content; staged once."""
    digest = hashlib.sha256()
    for path, content in sorted(files.items()):
        digest.update(path.encode() + b"\0" + hashlib.sha256(content).digest())
    if site_packages is not None:
        digest.update(site_packages.name.encode())  # the folder's name is itself a hash of what it holds
    target = Path(tempfile.gettempdir()) / f"{name}-{digest.hexdigest()[:20]}"
    if target.is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f"{name}-staging-"))
    if site_packages is not None:
        shutil.copytree(site_packages, staging, dirs_exist_ok=True)
    for path, content in files.items():
        destination = staging / path
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(content)
    try:
        os.replace(staging, target)
    except OSError:  # another synth staged the same content first
        shutil.rmtree(staging, ignore_errors=True)
    return target


def code_bundle(
    name: str,
    packages: Sequence[str],
    *,
    extra_files: Mapping[str, bytes] | None = None,
    site_packages: Path | None = None,
) -> Path:
    """Stage `packages` (repository folders such as "labeling/runtime") with the contracts; returns the folder."""
    return stage(bundle_files(packages, extra_files=extra_files), name, site_packages=site_packages)


def handler_file(handler: str, root: Path = REPO_ROOT) -> Path:
    """The file a handler string names: "a.b.c.function" -> root/a/b/c.py."""
    module, _, function = handler.rpartition(".")
    if not module or not function:
        raise ValueError(f"handler {handler!r} must be <module path>.<function>")
    return root / (module.replace(".", "/") + ".py")
