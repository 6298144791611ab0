"""Time `pairing_report` on SmolLM2-135M and a student with SmolLM2's vocabulary (target: <= 5 min on 2 cores).

    python benchmarks/bench_pairing_report.py [--student stdlib-student] [--threads 2] [--out /tmp/pairing.html]

On a shared, oversubscribed machine wall-clock time measures the neighbours; run with `--threads 1` and read
the CPU seconds: one thread's CPU time bounds the wall time on two idle cores from above.

With `--student stdlib-student` missing (not yet shipped), a random-weight stand-in with the shipped student's
architecture (6 blocks, d_model 256, SmolLM2 tokenizer) is used: the cost of the report does not depend on
the student's weights. Prints the per-stage timings as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def stand_in_student(teacher):
    from semalign_lens.models.load import load_model
    from semalign_lens.models.tiny import TinyArch, tiny_hf_model

    hf = tiny_hf_model(TinyArch(n_layers=6, d_model=256, n_heads=4, n_kv_heads=2, d_mlp=768), teacher.cfg.d_vocab, 0)
    return load_model(hf, tokenizer=teacher.tokenizer, name="stand-in student (random, 6x256)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default="stdlib-student")
    parser.add_argument("--task", default="facts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="/tmp/pairing_report_smollm2.html")
    parser.add_argument("--n-prompts", type=int, default=24)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from semalign_lens.core.precision import machine_line

    print(machine_line())
    from semalign_lens.core.errors import SemalignError
    from semalign_lens.models.load import load_model
    from semalign_lens.reports.pairing import pairing_report

    start = time.perf_counter()
    teacher = load_model("smollm2-135m")
    try:
        student = load_model(args.student)
    except SemalignError as err:
        print(f"[{args.student} unavailable: {err}; using a random stand-in]")
        student = stand_in_student(teacher)
    loaded = time.perf_counter() - start
    out = pairing_report(teacher, student, args.task, args.out, n_prompts=args.n_prompts, progress=False)
    print(json.dumps({"threads": args.threads, "load_wall": round(loaded, 1), "wall": out.timings,
                      "cpu": out.cpu_timings, "end_to_end_wall": round(time.perf_counter() - start, 1),
                      "end_to_end_cpu": round(time.process_time(), 1),
                      "html_MB": round(os.path.getsize(out.path) / 2**20, 2)}, indent=1))


if __name__ == "__main__":
    main()
