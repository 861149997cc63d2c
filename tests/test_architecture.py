"""The package's shape, read from its source: layers that only import downward, no import cycles,
and `dvc.yaml` deps that name exactly the modules and inputs each stage uses.

Imports are read with `ast`, those inside functions included, so a lazy import
counts as much as a top-level one: a stage whose code reaches a module lazily
still computes with it.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "facesim"
LAYERS = ("core", "mlops", "training", "pipeline", "app")  # each may import only the ones before it (and itself)
# Modules outside the layer packages: the public facade of the app layer.
TOP_LEVEL = {"facesim.api": "app"}


def module_file(module: str) -> Path | None:
    """The source file of a facesim module, or None when it is not one."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports_of(path: Path) -> frozenset[str]:
    """The facesim modules a file imports, anywhere in it; `from facesim.x import y` counts y when y is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "facesim" and module_file(name) is not None)
    return frozenset(found)


def closure(path: Path) -> set[str]:
    """Every facesim module that running `path` can import, transitively."""
    seen: set[str] = set()
    todo = list(imports_of(path))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imports_of(module_file(module)))
    return seen


def package_modules() -> list[str]:
    return sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if module in TOP_LEVEL:
        return TOP_LEVEL[module]
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


# ---- layers ------------------------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer():
    loose = [m for m in package_modules() if layer_of(m) is None and not m.endswith("__init__")
             and m not in ("facesim", *(f"facesim.{layer}" for layer in LAYERS))]
    assert loose == [], f"modules outside the layers {LAYERS}: {loose}"


def test_package_init_files_hold_no_code():
    """Importing any module runs every `__init__.py` above it: they stay docstrings (and the version), so that
    no stage depends on them and the deps below can leave them out."""
    for path in PACKAGE.rglob("__init__.py"):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        code = [node for node in body
                if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))  # docstring
                and not (isinstance(node, ast.ImportFrom) and node.module == "__future__")
                and not (isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)]
                         == ["__version__"])]
        assert code == [], f"{path.relative_to(ROOT)}: code in a package __init__ (line {code[0].lineno})"


def test_layers_only_import_downward():
    upward = []
    for module in package_modules():
        own = layer_of(module)
        if own is None:
            continue
        for imported in imports_of(module_file(module)):
            theirs = layer_of(imported)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(own):
                upward.append(f"{module} ({own}) imports {imported} ({theirs})")
    assert upward == [], "imports that point up a layer:\n" + "\n".join(upward)


def test_stage_scripts_stay_thin():
    """A stage script reads its command line and params, calls one function of the package and prints a line
    (`facesim.pipeline.runtime.stage_args` holds what they share): at most 40 lines, the logic lives in src/."""
    long = {path.name: n for path in sorted((ROOT / "stages").glob("*.py"))
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > 40}
    assert long == {}, f"stage scripts over 40 lines: {long}"


def test_every_module_does_one_job_in_at_most_300_lines():
    long = {module: n for module in package_modules()
            if (n := len(module_file(module).read_text(encoding="utf-8").splitlines())) > 300}
    assert long == {}, f"modules over 300 lines (split them by job): {long}"


def test_the_mlflow_wrapper_imports_no_other_facesim_module():
    """tracking (the store, a stage's run) and runs (what a stage logs to) know nothing of facesim."""
    assert imports_of(module_file("facesim.mlops.runs")) == frozenset()
    assert imports_of(module_file("facesim.mlops.tracking")) == {"facesim.mlops.runs"}


def test_no_import_cycles():
    graph = {m: {i for i in imports_of(module_file(m)) if not module_file(i).name == "__init__.py"}
             for m in package_modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                return path[path.index(imported):] + [imported] if imported in path else [module, imported]
            if imported not in state:
                found = visit(imported, path + [imported])
                if found:
                    return found
        state[module] = 2
        return None

    for module in graph:
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_reader_finds_imports_inside_functions(tmp_path):
    """The checks above can fail: a lazy import is found like a top-level one."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from facesim.app.api import verify\n    import facesim.core.images\n")
    assert imports_of(source) == {"facesim.app.api", "facesim.core.images"}
    assert "facesim.core.inference" in closure(source)


# ---- dvc.yaml deps -------------------------------------------------------------------------------------


def pipeline_stages() -> list[tuple[str, dict]]:
    """(name, definition) of every stage of both pipelines, templates unexpanded (foreach/matrix: `do`)."""
    found = []
    for file in ("dvc.yaml", "cv/dvc.yaml"):
        stages = yaml.safe_load((ROOT / file).read_text(encoding="utf-8"))["stages"]
        for name, stage in stages.items():
            found.append((f"{file}:{name}", stage.get("do", stage)))
    return found


def listed(entries: list) -> list[str]:
    """Paths of a deps/outs/metrics/plots list (entries are a path or {path: options})."""
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]


def code_deps(script: str) -> set[str]:
    """The files a stage script runs: itself and every facesim module it can import (package __init__s,
    which hold no code, left out)."""
    files = {module_file(m) for m in closure(ROOT / script)}
    return {script} | {f.relative_to(ROOT).as_posix() for f in files if f.name != "__init__.py"}


STAGES = pipeline_stages()


@pytest.mark.parametrize("name, stage", STAGES, ids=[name for name, _ in STAGES])
def test_stage_deps_list_exactly_the_code_it_runs(name, stage):
    script = re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
    deps = {d for d in listed(stage["deps"]) if d.startswith(("src/", "stages/"))}
    expected = code_deps(script)
    assert deps == expected, (f"{name}: missing {sorted(expected - deps)}, never imported {sorted(deps - expected)}")


@pytest.mark.parametrize("name, stage", STAGES, ids=[name for name, _ in STAGES])
def test_stage_data_deps_are_the_inputs_its_command_names(name, stage):
    """dvc.yaml owns every path: the stage reads what its command line names, so each data dep lies at or
    under a path of the command, and each path of the command that is not an output is a dep or holds some."""
    cmd_paths = {token for token in stage["cmd"].split()[2:] if "/" in token and not token.startswith("-")}
    outputs = {p for key in ("outs", "metrics", "plots") for p in listed(stage.get(key))}
    inputs = cmd_paths - outputs
    data = {d for d in listed(stage["deps"]) if not d.startswith(("src/", "stages/"))}

    def under(path: str, folder: str) -> bool:
        return path == folder or path.startswith(folder.rstrip("/") + "/")

    unused = sorted(d for d in data if not any(under(d, p) for p in inputs))
    unlisted = sorted(p for p in inputs if not any(under(d, p) for d in data))
    assert unused == [], f"{name}: deps its command never names: {unused}"
    assert unlisted == [], f"{name}: inputs of its command not among its deps: {unlisted}"


def test_code_deps_follow_the_imports():
    """The deps check can fail: a script importing the evaluate stage's module needs the registry too."""
    deps = code_deps("stages/evaluate.py")
    assert "src/facesim/mlops/registry.py" in deps and "src/facesim/pipeline/evaluate.py" in deps
    assert "src/facesim/app/api.py" not in deps
