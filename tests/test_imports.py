"""The package's import graph, read from the source (module-level and function-level imports alike): no
circle, and every dependency points down the floors, which are folders:

    core < data < models < lens < training < evaluation < reports < the app (cli, demo, system, the face)

A module imports its own floor and the floors below it, nothing above; there is no allowlist. Also: the
objectives import nothing of the package but `core`, the readout and the one cross-entropy (`models.likelihood`),
and no module imports an underscore name from outside its own folder.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import semalign_lens

ROOT = Path(semalign_lens.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("semalign_lens", *path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported package module, names taken from it) for every import statement in module `name`."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            if base in MODULES:
                out.append((base, [n for n in names if f"{base}.{n}" not in MODULES]))
            out += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in MODULES]
    return [(target, names) for target, names in out if target != name]


GRAPH = {name: {target for target, _ in _imports(name)} for name in MODULES}


def _within(name: str, area: str) -> bool:
    return name == f"semalign_lens.{area}" or name.startswith(f"semalign_lens.{area}.")


def test_the_package_has_no_import_circle():
    """Tarjan's strongly connected components of the graph: every one must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == []


FLOORS = ("core", "data", "models", "lens", "training", "evaluation", "reports")  # bottom up; the app above


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else len(FLOORS)


def test_every_module_lives_on_a_floor():
    """Only the app's entry points sit at the top level; everything else is in a floor's folder."""
    top = sorted(m for m in MODULES if _floor(m) == len(FLOORS))
    assert top == ["semalign_lens", "semalign_lens.__main__", "semalign_lens.cli", "semalign_lens.demo",
                   "semalign_lens.system"]


@pytest.mark.parametrize("floor", [*FLOORS, "app"])
def test_imports_point_down(floor):
    here = FLOORS.index(floor) if floor in FLOORS else len(FLOORS)
    up = sorted(f"{m} -> {t}" for m in GRAPH if _floor(m) == here for t in GRAPH[m] if _floor(t) > here)
    assert up == []


def test_objectives_import_only_the_core_the_readout_and_the_cross_entropy():
    """The loss maths stays plain tensor functions: what they read beyond tensors is the model's logit lens and
    the package's one next-token cross-entropy."""
    bad = sorted(f"{m} -> {t}" for m in GRAPH if _within(m, "training.objectives") for t in GRAPH[m]
                 if not (_within(t, "training.objectives") or _within(t, "core")
                         or t in ("semalign_lens.models.readout", "semalign_lens.models.likelihood")))
    assert bad == []


def test_no_underscore_name_crosses_a_folder():
    def home(module: str) -> str:
        return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]

    bad = sorted(f"{m} imports {n} from {t}" for m in MODULES for t, names in _imports(m) for n in names
                 if n.startswith("_") and not n.startswith("__") and home(m) != home(t))
    assert bad == []


def test_the_checks_see_function_level_imports():
    """The graph includes imports inside functions (most cross-package edges of the trainer are lazy)."""
    assert "semalign_lens.models.load" in GRAPH["semalign_lens.training.loop"]  # imported inside Trainer.__init__


def test_the_cli_imports_no_torch():
    """`semalign zoo list` and `semalign info` start in milliseconds: the CLI and the package face are lazy."""
    code = "import sys, semalign_lens, semalign_lens.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_face_resolves_every_public_name_to_its_definition():
    """`sl.X` is the object its module defines (the lazy face adds no wrappers), and an imported submodule of
    the same name never shadows a public function (`semalign_lens.reports.pairing` is both)."""
    import importlib

    import semalign_lens as sl
    import semalign_lens.reports.pairing  # noqa: F401  (binds the submodule on the package, as any import does)

    for name, module in sl._API.items():
        assert getattr(sl, name) is getattr(importlib.import_module(f"semalign_lens.{module}"), name), name
    assert callable(sl.pairing_report) and sl.evaluation.cross_entropy is not None
    assert sorted(dir(sl)) == sl.__all__
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = sl.nothing_here


def test_the_version_is_the_distributions():
    """`sl.__version__` is the installed metadata's, which the build took from pyproject.toml."""
    import tomllib

    import semalign_lens as sl

    project = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]
    assert sl.__version__ == project["version"] and "__version__" in dir(sl)


def test_the_notebooks_use_only_the_face():
    source = (ROOT.parent / "notebooks" / "build_notebooks.py").read_text()
    assert "import semalign_lens as sl" in source
    assert [line for line in source.splitlines() if "from semalign_lens" in line] == []
