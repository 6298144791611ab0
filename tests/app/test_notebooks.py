"""Execute every tutorial notebook top to bottom in fast mode (tiny random models), the way CI does.

Each notebook runs in a fresh Jupyter kernel (nbclient) with `SEMALIGN_FAST=1` and `HF_HUB_OFFLINE=1` in the
kernel's environment, from the `notebooks/` directory, and must finish without an error; a failure names the
notebook, the cell and the error (nbclient's `CellExecutionError` carries the cell source and traceback).
Outputs are checked by execution only (plotly output is not compared), as nbmake does. The committed files
are the notebooks executed on the embedded pair (`make notebooks-executed`, `notebooks/execute_notebooks.py`):
their cells must equal what `notebooks/build_notebooks.py` generates (not stale), every code cell must have run
without an error, and every figure must be a PNG image (what GitHub shows), each file under 2 MB.

    python -m pytest tests/app/test_notebooks.py -q        # all seven, about 3-5 minutes on 2 cores (AMD EPYC, native bf16 yes; the suite runs fp32)
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 300


def _ids(paths):
    return [p.stem for p in paths]


def test_the_seven_notebooks_exist():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"], NOTEBOOKS


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, NOTEBOOKS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebooks_are_current_executed_and_show_their_figures():
    build, execute = _script("build_notebooks"), _script("execute_notebooks")
    images = {}
    for path in NOTEBOOKS:
        text = path.read_text()
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
        fresh = build.build(path.stem, build.NOTEBOOKS[path.stem])
        assert [(c.id, c.cell_type, c.source) for c in nb.cells] == [(c.id, c.cell_type, c.source)
                                                                      for c in fresh.cells], (
            f"{path.name} is stale: its cells differ from notebooks/build_notebooks.py; run make notebooks-executed")
        assert nb.metadata.get("semalign", {}).get("mode") == "full", f"{path.name}: not executed on the embedded pair"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), f"{path.name}: not run in order"
        assert not [c.id for c in code for o in c.outputs if o.output_type == "error"], path.name
        assert execute.problems(nb, text) == [], path.name
        images[path.stem] = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
    assert all(images.values()), images  # every notebook draws at least one figure


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_executes_in_fast_mode(path, monkeypatch):
    # The kernel is a child process: it inherits this environment.
    monkeypatch.setenv("SEMALIGN_FAST", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        index = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and any(
            o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        where = f"cell {index} (id {nb.cells[index].id})" if index is not None else "a cell"
        pytest.fail(f"{path.name}: {where} failed in fast mode:\n{err}", pytrace=False)
    except nbclient.exceptions.CellTimeoutError as err:
        pytest.fail(f"{path.name}: a cell ran longer than {CELL_TIMEOUT_S} s in fast mode:\n{err}", pytrace=False)
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s (cpu count {os.cpu_count()})")
