"""How the code is laid out: no import cycle between the project's modules, and bundles that match handlers."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.code_bundle import bundle_files, code_bundle, handler_file
from tests.helpers.import_graph import cycles, import_graph

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT_PACKAGES = ("shared", "labeling", "edge_deployment", "training", "tests", "benchmarks")


def test_the_project_has_no_import_cycle():
    graph = import_graph(REPO_ROOT, [p for p in PROJECT_PACKAGES if (REPO_ROOT / p).is_dir()])
    assert len(graph) > 100  # the walk found the project's modules
    assert "edge_deployment.runtime_bundle" in graph["edge_deployment.inference_component"]
    assert cycles(graph) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"p/a.py": "import p.b\n", "p/b.py": "x = 1\n"}, []),
        ({"p/a.py": "import p.b\n", "p/b.py": "from p import a\n"}, [["p.a", "p.b"]]),
        # only for type checking, or deferred into a function: still a cycle
        (
            {"p/a.py": "from p.b import f\n", "p/b.py": "if TYPE_CHECKING:\n    from p.a import C\n"},
            [["p.a", "p.b"]],
        ),
        (
            {"p/a.py": "from .b import f\n", "p/b.py": "def g():\n    from . import c\n", "p/c.py": "import p.a\n"},
            [["p.a", "p.b", "p.c"]],
        ),
        ({"p/a.py": "import os, json\n"}, []),
    ],
)
def test_the_cycle_check_finds_every_kind_of_import(tmp_path, files, expected):
    _write(tmp_path, {"p/__init__.py": "", **files})
    assert cycles(import_graph(tmp_path, ["p"])) == expected


def test_a_bundle_lays_out_the_packages_as_in_the_repository():
    files = bundle_files(["shared/runtime"])
    assert set(files) == {
        "shared/__init__.py",
        "shared/contracts.py",
        "shared/runtime/__init__.py",
        "shared/runtime/cfn_response.py",
        "shared/runtime/model_registry.py",
        "shared/runtime/path_filter.py",
        "shared/runtime/service_log_groups.py",
    }
    assert files["shared/contracts.py"] == (REPO_ROOT / "shared" / "contracts.py").read_bytes()
    folder = code_bundle("test-shared-runtime", ["shared/runtime"])
    assert handler_file("shared.runtime.path_filter.handler", folder).is_file()
    assert folder == code_bundle("test-shared-runtime", ["shared/runtime"])  # same content, same folder


def test_a_bundle_may_hold_one_module_of_a_package():
    files = bundle_files(["labeling/runtime", "shared/runtime/cfn_response.py"])
    assert files["shared/runtime/cfn_response.py"] == (REPO_ROOT / "shared/runtime/cfn_response.py").read_bytes()
    assert "shared/runtime/path_filter.py" not in files and "shared/runtime/__init__.py" in files


def test_a_bundle_refuses_a_folder_that_is_not_a_package():
    with pytest.raises(ValueError, match="'labeling/docs' is not a package or module"):
        bundle_files(["labeling/docs"])


@pytest.mark.parametrize(
    ("handler", "expected"),
    [("a.b.c.f", "a/b/c.py"), ("gate.handler", "gate.py")],
)
def test_a_handler_names_its_file(handler, expected):
    assert handler_file(handler, Path("/r")) == Path("/r") / expected


@pytest.mark.parametrize("handler", ["handler", ".f", "a."])
def test_a_handler_without_a_module_is_refused(handler):
    with pytest.raises(ValueError, match=r"must be <module path>\.<function>"):
        handler_file(handler)
