"""What a Greengrass v2 recipe (format 2020-01-25) may contain: a checker for the recipes we publish.

The nucleus reads lifecycle keys case-insensitively (AWS's own examples write both `run` and `Run`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

LIFECYCLE_PHASES = {"setenv", "bootstrap", "install", "startup", "run", "shutdown", "recover"}
PHASE_KEYS = {"script", "requiresprivilege", "timeout", "setenv", "skipif"}
PLATFORM_OS = {"linux", "windows", "darwin", "*"}
PLATFORM_ARCHITECTURES = {"aarch64", "amd64", "arm", "x86", "*"}
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
TOP_LEVEL = {
    "RecipeFormatVersion",
    "ComponentName",
    "ComponentVersion",
    "ComponentDescription",
    "ComponentPublisher",
    "ComponentConfiguration",
    "ComponentDependencies",
    "ComponentType",
    "ComponentSource",
    "Manifests",
    "Lifecycle",
}


def recipe_problems(recipe: Mapping[str, Any]) -> list[str]:  # noqa: PLR0912 - one check per rule
    problems = [f"unknown top-level key {key}" for key in recipe if key not in TOP_LEVEL]
    if recipe.get("RecipeFormatVersion") != "2020-01-25":
        problems.append("RecipeFormatVersion must be 2020-01-25")
    if not SEMVER.match(str(recipe.get("ComponentVersion", ""))):
        problems.append(f"ComponentVersion {recipe.get('ComponentVersion')!r} is not major.minor.patch")
    for version in str(recipe.get("ComponentVersion", "")).split("."):
        if version.isdigit() and int(version) >= 2**31:
            problems.append("version numbers must be below 2^31")
    for name, dependency in (recipe.get("ComponentDependencies") or {}).items():
        if dependency.get("DependencyType", "HARD") not in ("HARD", "SOFT"):
            problems.append(f"dependency {name}: DependencyType must be HARD or SOFT")
    configuration = recipe.get("ComponentConfiguration")
    if configuration is not None and set(configuration) - {"DefaultConfiguration"}:
        problems.append("ComponentConfiguration may only hold DefaultConfiguration")
    manifests = recipe.get("Manifests")
    if not manifests:
        problems.append("no Manifests")
    for index, manifest in enumerate(manifests or []):
        where = f"Manifests[{index}]"
        platform = manifest.get("Platform") or {}
        if platform.get("os") not in PLATFORM_OS:
            problems.append(f"{where}: Platform.os {platform.get('os')!r} unknown")
        if "architecture" in platform and platform["architecture"] not in PLATFORM_ARCHITECTURES:
            problems.append(f"{where}: Platform.architecture {platform['architecture']!r} unknown")
        for phase, step in (manifest.get("Lifecycle") or {}).items():
            if phase.lower() not in LIFECYCLE_PHASES:
                problems.append(f"{where}: unknown lifecycle phase {phase!r}")
            if phase.lower() == "setenv":
                if not isinstance(step, Mapping) or not all(isinstance(v, str) for v in step.values()):
                    problems.append(f"{where}: lifecycle {phase} must map variable names to strings")
            elif isinstance(step, Mapping):
                keys = {key.lower() for key in step}
                unknown = keys - PHASE_KEYS
                if unknown:
                    problems.append(f"{where}: lifecycle {phase} has unknown keys {sorted(unknown)}")
                if "script" not in keys:
                    problems.append(f"{where}: lifecycle {phase} has no Script")
            elif not isinstance(step, str):
                problems.append(f"{where}: lifecycle {phase} must be a script or a mapping")
        for artifact in manifest.get("Artifacts") or []:
            if not str(artifact.get("Uri", "")).startswith("s3://"):
                problems.append(f"{where}: artifact URI {artifact.get('Uri')!r} is not in S3")
            if artifact.get("Unarchive", "NONE") not in ("NONE", "ZIP"):
                problems.append(f"{where}: Unarchive must be NONE or ZIP")
            for permission in (artifact.get("Permission") or {}).values():
                if permission not in ("NONE", "OWNER", "ALL"):
                    problems.append(f"{where}: artifact permission {permission!r} unknown")
    return problems
