"""Time the full teacher x student stitching map on the embedded pair: SmolLM2-135M-Instruct (31 points:
embeddings + 30 block outputs) into stdlib-student (7 points), and the `stitch` pairing it gives.

    python benchmarks/bench_stitching.py [--fit-tokens 4096] [--heldout-tokens 1024] [--threads 2]

Data: the student's held-out validation files (`evaluation.eval_set("stdlib_val")`, evenly spaced blocks of
`--block` tokens); the first blocks fit the maps, the rest are scored (different files). Prints the machine
line, wall and process CPU time per stage, the penalty grid's summary, and the pairings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU time counts work, not threads spinning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fit-tokens", type=int, default=4096)
    parser.add_argument("--heldout-tokens", type=int, default=1024)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from semalign_lens.core.precision import machine_line
    from semalign_lens.evaluation.eval_sets import eval_set
    from semalign_lens.evaluation.stitching import stitching_map
    from semalign_lens.lens.pairing import make_pairing
    from semalign_lens.models.load import load_model

    print(machine_line(args.precision))
    print(f"load average before {os.getloadavg()}")
    wall, cpu = time.perf_counter(), time.process_time()
    teacher, student = load_model("smollm2-135m"), load_model("stdlib-student")
    n_fit = args.fit_tokens // args.block
    data = eval_set("stdlib_val", teacher.tokenizer, max_tokens=args.fit_tokens + args.heldout_tokens,
                    max_len=args.block).batch
    fit, heldout = data.select(range(n_fit)), data.select(range(n_fit, len(data)))
    loaded = time.perf_counter() - wall, time.process_time() - cpu

    wall, cpu = time.perf_counter(), time.process_time()
    result = stitching_map(teacher, student, fit, heldout, precision=args.precision, progress=True)
    took = time.perf_counter() - wall, time.process_time() - cpu

    penalty = result.wide()
    print(penalty.round(3).to_string())
    best = penalty.drop(index="embed").idxmin().to_dict()
    pairings = {name: " ".join(f"{p.student_layer}←{p.target_label()}" for p in make_pairing(name, 30, 6, **extra))
                for name, extra in (("stitch", {"stitching": result}), ("proportional", {"interpolate": False}))}
    print(json.dumps({
        "threads": args.threads, "fit_tokens": result.n_fit_tokens, "scored_tokens": result.n_heldout_tokens,
        "cells": penalty.size, "load_wall_s": round(loaded[0], 1), "stitching_wall_s": round(took[0], 1),
        "stitching_cpu_s": round(took[1], 1), "cpu_s_per_thread": round(took[1] / args.threads, 1),
        "own_ce": round(result.own_ce, 4), "mean_ablation": [round(v, 3) for v in result.mean_ablation.tolist()],
        "best_teacher_point_per_student_point": best,
        "lowest_block_penalty": round(float(result.penalty[1:, 1:].min()), 4),
        "pairings (student block ← teacher block)": pairings, "load_average_after": os.getloadavg(),
    }, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
