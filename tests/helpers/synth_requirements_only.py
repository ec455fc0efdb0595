"""Run `app.py` as `make synth` does, but able to import only what requirements.txt installs.

`make synth` sets up a virtual environment from requirements.txt alone (the test packages come
with `make test`), so every module the CDK app imports, at import time or while bundling assets,
must come from the standard library, the project or the dependency closure of requirements.txt.
Everything else installed in this environment is refused here with an ImportError naming it.

Usage: python -m tests.helpers.synth_requirements_only  (CDK_CONTEXT_JSON and CDK_OUTDIR set)
"""

from __future__ import annotations

import importlib.abc
import runpy
import sys
from importlib import metadata
from importlib.machinery import ModuleSpec
from types import ModuleType

from tests.helpers.cdk_assembly import REPO_ROOT
from tests.helpers.requirements import pinned_names, requirement_name, requirements_closure


class RefuseOutsideRequirements(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]) -> None:
        self._allowed = allowed
        self._owners = metadata.packages_distributions()

    def find_spec(self, fullname: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        owners = self._owners.get(fullname.split(".", 1)[0])
        if owners and not any(requirement_name(owner) in self._allowed for owner in owners):
            raise ImportError(
                f"the CDK app imports {fullname!r} (distribution {', '.join(owners)}), "
                "which requirements.txt does not install"
            )
        return None  # let the regular finders load it


def main() -> None:
    allowed = requirements_closure(pinned_names(REPO_ROOT / "requirements.txt"))
    sys.meta_path.insert(0, RefuseOutsideRequirements(allowed))
    sys.argv = [str(REPO_ROOT / "app.py")]
    runpy.run_path(str(REPO_ROOT / "app.py"), run_name="__main__")


if __name__ == "__main__":
    main()
