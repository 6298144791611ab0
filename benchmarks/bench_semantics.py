"""Benchmark the semantic basis on SmolLM2 (49152 x 576): build time and accuracy, decompose throughput.

    OMP_NUM_THREADS=2 python benchmarks/bench_semantics.py [--repeats 3]

Prints a markdown section for benchmarks/RESULTS.md. Times are medians of `--repeats` runs, wall clock and
CPU seconds of this process (the CPU figure is what an otherwise idle machine would need, summed over
threads). Nothing is cached during the build timings (cache=False).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU time then counts work, not threads spinning

import torch  # noqa: E402

from semalign_lens.core.hashing import tensor_hash
from semalign_lens.core.precision import machine_line  # noqa: E402
from semalign_lens.lens.semantics import CoefficientGram, SemanticBasis, TransferMap, decompose, roundtrip
from semalign_lens.models.load import load_model  # noqa: E402
from semalign_lens.models.readout import final_norm, unembedding


def timed(fn, repeats: int):
    """(result of the last call, median wall s, median CPU s)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, statistics.median(walls), statistics.median(cpus)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--states", type=int, default=1024)
    args = p.parse_args()
    print(machine_line())
    model = load_model("smollm2-135m")
    W_U, gain = unembedding(model), final_norm(model)["weight"]
    rows = []

    ref = SemanticBasis.from_unembedding(W_U.double(), norm_weight=gain.double(), dtype=torch.float64,
                                         method="householder")
    ref_raw = ref.S * ref.norms
    for dtype in (torch.float32, torch.float64):
        for method in ("cholqr2", "householder"):
            basis, wall, cpu = timed(lambda d=dtype, m=method: SemanticBasis.from_unembedding(
                W_U, norm_weight=gain, dtype=d, method=m), args.repeats)
            err = float(((basis.S * basis.norms).double() - ref_raw).norm() / ref_raw.norm())
            rows.append((f"build {str(dtype)[6:]} {method}", wall, cpu, f"rel. error vs float64 Householder {err:.1e}"))

    _, wall, cpu = timed(lambda: tensor_hash(W_U.T, gain), args.repeats)
    rows.append(("weight hash (sha256, 113 MB)", wall, cpu, ""))
    SemanticBasis.from_model(model)  # fill the cache
    _, wall, cpu = timed(lambda: SemanticBasis.from_model(model), args.repeats)
    rows.append(("from_model, cache hit (hash + load)", wall, cpu, ""))

    basis = SemanticBasis.from_model(model)

    def grams():
        basis._ops.clear()
        return basis.frame_operator, basis.roundtrip_operator("logits")

    _, wall, cpu = timed(grams, args.repeats)
    rows.append(("d x d operators (ŜŜᵀ and raw Gram, float64, once per basis)", wall, cpu, ""))

    h = torch.randn(args.states, 576) * 10
    for chunk in (None, 8192, 2048):
        _, wall, cpu = timed(lambda c=chunk: decompose(h, basis, "paper", chunk_size=c), args.repeats)
        mb = args.states * basis.n_tokens * 4 / 2**20
        rows.append((f"decompose {args.states} states, chunk {chunk}", wall, cpu,
                     f"{args.states / wall:.0f} states/s; output {mb:.0f} MB"))
    _, wall, cpu = timed(lambda: roundtrip(h, basis, "dual"), args.repeats)
    rows.append((f"roundtrip {args.states} states (d x d operator)", wall, cpu, f"{args.states / wall:.0f} states/s"))

    student = SemanticBasis.from_unembedding(torch.randn(256, basis.vocab_size), name="random-student-d256")
    for kind in ("paper", "logits"):
        _, wall, cpu = timed(lambda k=kind: TransferMap(basis, student, kind=k), args.repeats)
        rows.append((f"TransferMap {kind} 576 -> 256 (student operators cached)", wall, cpu, ""))
    _, wall, cpu = timed(lambda: CoefficientGram(student, basis, kind="paper"), args.repeats)
    rows.append(("CoefficientGram paper 256 / 576", wall, cpu, ""))

    print(f"threads: {torch.get_num_threads()}, repeats: {args.repeats}, torch {torch.__version__}\n")
    print("| step | wall s (median) | CPU s | notes |\n|---|---|---|---|")
    for name, wall, cpu, note in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {note} |")


if __name__ == "__main__":
    main()
