"""Execute every tutorial notebook top to bottom in fast mode (tiny random models), the way CI does.

Each notebook runs in a fresh Jupyter kernel (nbclient) with `SEMALIGN_FAST=1` and `HF_HUB_OFFLINE=1` in the
kernel's environment, from the `notebooks/` directory, and must finish without an error; a failure names the
notebook, the cell and the error (nbclient's `CellExecutionError` carries the cell source and traceback).
Outputs are checked by execution only (plotly output is not compared), as nbmake does. The committed files
must be stripped of outputs, carry cell ids and equal what `notebooks/build_notebooks.py` generates.

    python -m pytest tests/app/test_notebooks.py -q        # all seven, about 3-5 minutes on 2 cores (AMD EPYC, native bf16 yes; the suite runs fp32)
"""

from __future__ import annotations

import importlib.util
import json
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


def test_notebooks_are_generated_stripped_and_have_cell_ids():
    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOKS_DIR / "build_notebooks.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for path in NOTEBOOKS:
        raw = json.loads(path.read_text())
        nb = nbformat.reads(path.read_text(), as_version=4)
        nbformat.validate(nb)
        ids = [cell.get("id") for cell in raw["cells"]]
        assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: missing or duplicate cell ids"
        for cell in raw["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: outputs not stripped"
        assert path.read_text() == build.render(build.build(path.stem, build.NOTEBOOKS[path.stem])), (
            f"{path.name} differs from notebooks/build_notebooks.py; run python notebooks/build_notebooks.py")


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
