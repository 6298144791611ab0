"""Execute the tutorial notebooks on the embedded pair and write them with their outputs: what is committed.

    make notebooks-executed                                  # all seven, in place (what `make` runs)
    python notebooks/execute_notebooks.py 05_alignment_run   # one of them
    python notebooks/execute_notebooks.py --fast --out /tmp/nb   # the tiny pair, for a quick look (not for committing)

Each notebook is built afresh from `build_notebooks.py` (so its code is current), run top to bottom in its own
Jupyter kernel (nbclient), one at a time, with plotly's `png` renderer (`PLOTLY_RENDERER=png`: kaleido and
Chromium): figures are stored as static PNG images, which GitHub shows and which keep a notebook small, where
plotly's own output is JavaScript that GitHub does not run. Opened in Jupyter, the same code shows interactive
figures. The notebook's metadata records the mode, the wall time and the machine (`semalign`), and the tests
check that the committed files are these: code equal to `build_notebooks.py`'s, executed in full mode, figures
as images, each under `MAX_BYTES` (tests/app/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_notebooks as build  # noqa: E402  (the notebook sources, beside this file)

MAX_BYTES = 2_000_000
CELL_TIMEOUT_S = 3600
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def execute(name: str, fast: bool) -> nbformat.NotebookNode:
    """Notebook `name` built from `build_notebooks.py` and executed (full mode unless `fast`)."""
    from semalign_lens.core.precision import machine_line

    os.environ.update({"SEMALIGN_FAST": "1" if fast else "0", "PLOTLY_RENDERER": "png", "HF_HUB_OFFLINE": "1",
                       "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
                       "PYTHONWARNINGS": "ignore:IProgress not found"})  # tqdm.auto's note: no widgets in a file
    nb = build.build(name, build.NOTEBOOKS[name])
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(HERE)}})
    start = time.perf_counter()
    client.execute()
    nb.metadata["semalign"] = {"mode": "fast" if fast else "full", "seconds": round(time.perf_counter() - start, 1),
                               "machine": machine_line()}
    return nb


def problems(nb: nbformat.NotebookNode, text: str) -> list[str]:
    """What keeps an executed notebook from being committed: a plotly figure that is not an image (plotly's
    JSON or JavaScript), the size."""
    out = [f"cell {c.id}: a plotly figure kept as JavaScript, not a PNG (is kaleido installed, with Chromium?)"
           for c in nb.cells if c.cell_type == "code" for o in c.outputs
           if PLOTLY_MIME in o.get("data", {}) or "Plotly.newPlot" in str(o.get("data", {}).get("text/html", ""))]
    if len(text.encode()) > MAX_BYTES:
        out.append(f"{len(text.encode()) / 1e6:.1f} MB, over the {MAX_BYTES / 1e6:.0f} MB a notebook may take")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"notebooks to execute (default: all): {', '.join(build.NOTEBOOKS)}")
    parser.add_argument("--fast", action="store_true", help="the tiny random pair (outputs meaningless)")
    parser.add_argument("--out", help="write here instead of notebooks/ (required with --fast)")
    args = parser.parse_args(argv)
    if unknown := [n for n in args.names if n not in build.NOTEBOOKS]:
        parser.error(f"unknown notebook(s) {unknown}; choose from {list(build.NOTEBOOKS)}")
    if args.fast and not args.out:
        parser.error("--fast outputs are not for committing; pass --out DIR")
    out = Path(args.out) if args.out else HERE
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.names or list(build.NOTEBOOKS):
        try:
            nb = execute(name, args.fast)
        except nbclient.exceptions.CellExecutionError as err:
            print(f"{name}: FAILED\n{str(err)[-3000:]}", file=sys.stderr)
            failed.append(name)
            continue
        text = build.render(nb)
        if issues := problems(nb, text):
            print(f"{name}: not written: {'; '.join(issues)}", file=sys.stderr)
            failed.append(name)
            continue
        (out / f"{name}.ipynb").write_text(text)
        print(f"{name}: {nb.metadata['semalign']['seconds']} s, {len(text.encode()) / 1e6:.2f} MB "
              f"({nb.metadata['semalign']['machine']})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
