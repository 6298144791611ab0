"""The package's import graph, read from the source (module-level and function-level imports alike): no
circle, and every dependency points down. A reviewer's check of the layering rules:

- `objectives/` imports nothing of the package but `errors`;
- `training/` never imports `baselines/` or `evaluation/`; `evaluation/` never imports `training/` or
  `baselines/`; the model plumbing and transfer data below them (`hf`, `activations`, `transfer_data`)
  import none of the three;
- no module imports an underscore name from outside its own subpackage.
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


@pytest.mark.parametrize("area,forbidden", [
    ("training", ("baselines", "evaluation")),
    ("evaluation", ("training", "baselines")),
    ("hf", ("training", "evaluation", "baselines")),
    ("activations", ("training", "evaluation", "baselines")),
    ("transfer_data", ("training", "evaluation", "baselines")),
])
def test_dependencies_point_down(area, forbidden):
    bad = sorted(f"{m} -> {t}" for m in GRAPH if _within(m, area) for t in GRAPH[m]
                 if any(_within(t, f) for f in forbidden))
    assert bad == []


def test_objectives_import_only_errors():
    bad = sorted(f"{m} -> {t}" for m in GRAPH if _within(m, "objectives") for t in GRAPH[m]
                 if not (_within(t, "objectives") or t == "semalign_lens.errors"))
    assert bad == []


def test_no_underscore_name_crosses_a_subpackage():
    def home(module: str) -> str:  # a subpackage, or the module itself at the top level
        parts = module.split(".")
        return ".".join(parts[:2])

    bad = sorted(f"{m} imports {n} from {t}" for m in MODULES for t, names in _imports(m) for n in names
                 if n.startswith("_") and not n.startswith("__") and home(m) != home(t))
    assert bad == []


def test_the_checks_see_function_level_imports():
    """The graph includes imports inside functions (most cross-package edges of the trainer are lazy)."""
    assert "semalign_lens.models" in GRAPH["semalign_lens.training.loop"]  # imported inside Trainer.__init__


def test_the_cli_imports_no_torch():
    """`semalign zoo list` and `semalign info` start in milliseconds: the CLI and the package face are lazy."""
    code = "import sys, semalign_lens, semalign_lens.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_face_resolves_every_public_name_to_its_definition():
    """`sl.X` is the object its module defines (the lazy face adds no wrappers), and an imported submodule of
    the same name never shadows a public function (`semalign_lens.pairing_report` is both)."""
    import importlib

    import semalign_lens as sl
    import semalign_lens.pairing_report  # noqa: F401  (binds the submodule on the package, as any import does)

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
