"""Regenerate every figure and table of the paper analogue into `analysis/out/`.

    python analysis/make_figures.py                  # all figures on the embedded pair (what `make figures` runs)
    python analysis/make_figures.py --fast           # the same pipeline on tiny random models (CI smoke test)
    python analysis/make_figures.py --only fig45 ablations

Targets, each a separate script run in its own process (a fresh interpreter, so memory is returned):

| target | script | writes |
|---|---|---|
| fig2 | `fig2_resolution.py` (resolution of semantics per layer, Fig. 2) | out/fig2/ |
| fig45 | `fig45_cka.py` (CKA heatmaps without / with alignment, Figs. 4-5) | out/fig45/ |
| transfer | `transfer_table.py` (Tables 1-2 analogue: methods x tasks, gap closed) | out/transfer/ (demo profile, the committed table's), else out/transfer-PROFILE/ |
| ablations | `ablations.py` (attribution method, pairing, layer objective, map kind) | out/ablations/ |

`--fast` passes each script its fast mode: `--fast` for fig45 and ablations, `--profile tiny` (one seed, three
methods, the code task) for transfer_table, and for fig2 — which has no fast flag — a tiny random teacher
saved to `out/_tiny/teacher` (its document-start embedding row made non-zero, because the input basis cannot
use a zero row) passed as `--model`. Wall times go to `out/timings.json`; the run stops at the first failure
and names it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from semalign_lens.core.errors import run_reporting_errors

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS = ("fig2", "fig45", "transfer", "ablations")


def tiny_teacher_dir(folder: Path) -> Path:
    """Save the tiny random teacher (and its tokenizer) as a local HF directory that `load_model` reads."""
    import torch

    from semalign_lens.models.tiny import tiny_hf_pair

    if (folder / "config.json").exists():
        return folder
    teacher, _, tok = tiny_hf_pair(seed=0)
    with torch.no_grad():  # id 0 is the padding row of the embedding: give it a direction
        emb = teacher.get_input_embeddings().weight
        emb[0] = emb[1:].mean(0) + 0.1 * torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
    folder.mkdir(parents=True, exist_ok=True)
    teacher.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def commands(target: str, fast: bool, out: Path, args) -> list[str]:
    py = [sys.executable]
    if target == "fig2":
        if fast:
            model = tiny_teacher_dir(out / "_tiny" / "teacher")
            return py + [str(HERE / "fig2_resolution.py"), "--model", str(model), "--n-prompts", "2", "--max-len", "24",
                         "--readout-tokens", "32", "--readout-every", "3", "--out", str(out / "fig2")]
        return py + [str(HERE / "fig2_resolution.py"), "--student", args.student, "--out", str(out / "fig2")]
    if target == "fig45":
        return py + [str(HERE / "fig45_cka.py"), *(["--fast"] if fast else ["--student", args.student]),
                     "--out", str(out / "fig45")]
    if target == "ablations":
        return py + [str(HERE / "ablations.py"), *(["--fast"] if fast else ["--student", args.student]),
                     "--out", str(out / "ablations")]
    if target == "transfer":
        profile = "tiny" if fast else args.transfer_profile
        folder = out / ("transfer" if profile == "table" else f"transfer-{profile}")  # profiles never mix their runs
        common = ["--out", str(folder), "--summary", str(folder / "TRANSFER.md")]
        if fast:
            return py + [str(HERE / "transfer_table.py"), "--profile", "tiny", "--methods", "sft", "kd", "semalign",
                         "--seeds", "0", "--tasks", "code", "--budgets", "2", "--schedules", "frontier", *common]
        return py + [str(HERE / "transfer_table.py"), "--profile", args.transfer_profile, "--student", args.student,
                     "--budget-minutes", str(args.transfer_minutes), "--resume", *common]
    raise ValueError(target)


def _record(out: Path, entries: dict) -> None:
    path = out / "timings.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(entries)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="tiny random models (pipeline check, numbers meaningless)")
    p.add_argument("--only", nargs="*", choices=TARGETS, default=list(TARGETS))
    p.add_argument("--student", default="stdlib-student", help="student source for the full-mode scripts")
    p.add_argument("--transfer-profile", default="table", help="transfer_table.py profile in full mode")
    p.add_argument("--transfer-minutes", type=float, default=150.0,
                   help="transfer_table.py time budget (it resumes: run again to continue)")
    p.add_argument("--out", default=str(HERE / "out"))
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    for target in args.only:
        cmd = commands(target, args.fast, out, args)
        print(f"[make_figures] {target}: {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}",
              flush=True)
        t0 = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT, env=env)
        wall = round(time.perf_counter() - t0, 1)
        _record(out, {f"{target}{'_fast' if args.fast else ''}": {"wall_s": wall, "exit": code,
                                                                  "command": " ".join(cmd[1:])}})
        if code != 0:
            print(f"[make_figures] {target} FAILED (exit {code}) after {wall} s", file=sys.stderr)
            return code
        print(f"[make_figures] {target} done in {wall} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_reporting_errors(main, prog=Path(__file__).name))
