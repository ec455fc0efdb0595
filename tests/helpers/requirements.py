"""Reading requirements files and following what the installed distributions require."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

# Markers of requirements that never apply here: optional extras, other platforms, Pythons before 3.11.
_NOT_HERE = ("extra ==", "Darwin", "win32", 'python_version < "3.11"')


def requirement_name(requirement: str) -> str:
    """The normalized distribution name of a requirement line (`Foo_Bar==1.0; ...` -> `foo-bar`)."""
    return re.split(r"[\s=<>!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def pinned_names(requirements: Path) -> set[str]:
    """The distribution names a requirements file lists (comments and blank lines left out)."""
    lines = (raw.split("#", 1)[0].strip() for raw in requirements.read_text(encoding="utf-8").splitlines())
    return {requirement_name(line) for line in lines if line}


def requirements_closure(roots: Iterable[str], *, provided: Iterable[str] = ()) -> set[str]:
    """`roots` and everything they require, as installed here; `provided` ones (and what they need) excluded."""
    skipped = set(provided)
    closure: set[str] = set()
    pending = sorted(roots)
    while pending:
        name = pending.pop()
        if name in closure or name in skipped:
            continue
        closure.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        pending.extend(
            requirement_name(r) for r in requires if not any(marker in r.partition(";")[2] for marker in _NOT_HERE)
        )
    return closure
