"""The tests' own layout, read from their source with `ast`: shared plain helpers live in helpers.py, fixtures
and pytest hooks in conftest.py; no module imports from conftest, and none takes another test module's
private (`_name`) helpers.

pyproject puts tests/ on the import path and pytest puts each test's folder there, so every module under
tests/ is imported by its basename (`from helpers import ...`, `from ddp_worker import ...`): the
basenames must be unique.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def source_files() -> list[Path]:
    """Every Python file under tests/, caches left out."""
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def local_modules() -> set[str]:
    """The names the modules under tests/ are imported by (their basenames), conftest included."""
    return {path.stem for path in source_files()}


def layout_problems(source: str, local: set[str], filename: str = "<test>") -> list[str]:
    """What breaks the layout in one file's source: importing conftest, or importing (or reading off an imported
    local module) a name starting with `_` from another module under tests/. Imports inside functions count."""
    problems = []
    tree = ast.parse(source, filename=filename)
    aliases: dict[str, str] = {}  # `import x as y`: y -> x, for the local modules only
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "conftest":
                    problems.append(f"line {node.lineno}: import {alias.name}")
                elif top in local and "." not in alias.name:
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = node.module.split(".")[-1] if node.level else node.module
            if module.split(".")[0] == "conftest":
                problems.append(f"line {node.lineno}: from {node.module} import ...")
            elif module in local:
                problems.extend(f"line {node.lineno}: from {module} import {alias.name}"
                                for alias in node.names if alias.name.startswith("_"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return problems


@pytest.mark.parametrize("source, expected", [
    ("from conftest import REPO", ["line 1: from conftest import ..."]),
    ("def f():\n    from conftest import REPO", ["line 2: from conftest import ..."]),
    ("import conftest", ["line 1: import conftest"]),
    ("from test_pipeline import _run, STAGES", ["line 1: from test_pipeline import _run"]),
    ("import test_pipeline as p\np._tiny_params('x')", ["line 2: test_pipeline._tiny_params"]),
    ("from helpers import REPO, write_faces_dir\nimport helpers\nhelpers.REPO", []),
    ("from facesim.training.fit import _private", []),  # the package's own names are not the tests' business
    ("import test_pipeline\ntest_pipeline.__file__", []),
])
def test_the_layout_check_finds_what_it_should(source: str, expected: list[str]):
    assert layout_problems(source, {"conftest", "helpers", "test_pipeline"}) == expected


def test_no_test_module_imports_conftest_or_another_modules_private_names():
    local = local_modules()
    problems = {path.relative_to(TESTS).as_posix(): found for path in source_files()
                if (found := layout_problems(path.read_text(encoding="utf-8"), local, str(path)))}
    assert problems == {}, ("shared helpers belong in tests/helpers.py (public names), fixtures in conftest.py: "
                            f"{problems}")


def test_conftest_holds_only_fixtures_and_hooks():
    """Plain functions, classes and constants for the tests go to helpers.py, where test modules import them."""
    tree = ast.parse((TESTS / "conftest.py").read_text(encoding="utf-8"))

    def is_fixture(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(target, ast.Attribute) and target.attr == "fixture"

    others = [node.name for node in tree.body
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
              and not node.name.startswith("pytest_")
              and not (isinstance(node, ast.FunctionDef) and any(map(is_fixture, node.decorator_list)))]
    assert others == []


def test_module_basenames_under_tests_are_unique():
    counts = Counter(path.name for path in source_files() if path.name != "conftest.py")
    assert [name for name, count in counts.items() if count > 1] == []
    assert (TESTS / "helpers.py").is_file()
