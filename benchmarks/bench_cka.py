"""CKA timing and precision at the embedded pair's shapes: SmolLM2 (31 points: resid_pre of block 0 + 30 resid_post,
d=576) x the default student (7 points, d=256), 8192 tokens.

    python benchmarks/bench_cka.py                    # random data of the real shapes, 2 threads
    python benchmarks/bench_cka.py --real             # also real SmolLM2 x student activations
    python benchmarks/bench_cka.py --no-naive         # skip the (slow) n x n Gram baseline

Reports wall time and process CPU time (all threads): on a shared machine the wall time includes waiting for
the CPU, and CPU time / threads is what the same run takes on otherwise idle cores. Errors are against our
float64 feature-space grid and, for a few pairs, an independent float64 n x n Gram computation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# Threads that wait for work sleep instead of spinning, so process CPU time counts work only (on a shared
# machine spinning threads bill CPU time while they wait for a descheduled sibling). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from semalign_lens.core.precision import machine_line
from semalign_lens.lens.similarity import cka_matrix, cka_permutation_null, minibatch_cka_matrix  # noqa: E402


def timed(fn, repeats: int):
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    return out, statistics.median(walls), statistics.median(cpus)


def synthetic(n_tokens: int, seed: int = 0):
    """Residual-stream-like stacks: each teacher layer adds to the previous; student layers read teacher layers
    through random maps plus noise, so the grid has structure (not all ~0)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.empty(31, n_tokens, 576)
    xs[0] = torch.randn(n_tokens, 576, generator=g)
    for layer in range(1, 31):
        xs[layer] = xs[layer - 1] + 0.4 * torch.randn(n_tokens, 576, generator=g)
    ys = torch.empty(7, n_tokens, 256)
    for m in range(7):
        ys[m] = xs[5 * m] @ torch.randn(576, 256, generator=g) / 24 + torch.randn(n_tokens, 256, generator=g)
    return xs, ys


def naive_gram_cka(xs, ys, dtype=torch.float32):
    """The n x n approach: centred Grams K = XXᵀ, L = YYᵀ (n x n each), CKA = <K, L> / (|K| |L|)."""
    def gram(x):
        x = x.to(dtype)
        x = x - x.mean(0)
        return x @ x.T

    ls = [gram(y) for y in ys]
    l_norms = [torch.linalg.norm(g_) for g_ in ls]
    out = torch.empty(len(xs), len(ys), dtype=torch.float64)
    for i, x in enumerate(xs):
        k = gram(x)
        k_norm = torch.linalg.norm(k)
        for j, l_ in enumerate(ls):
            out[i, j] = float((k * l_).sum() / (k_norm * l_norms[j]))
    return out


def spot_reference(xs, ys, pairs):
    """Independent float64 n x n check of a few pairs (centring in float64 before the Gram)."""
    return {p: naive_gram_cka([xs[p[0]].double()], [ys[p[1]].double()], torch.float64)[0, 0].item() for p in pairs}


def flops(xs, ys) -> float:
    n = xs[0].shape[0] if xs[0].ndim == 2 else xs[0].numel() // xs[0].shape[-1]
    dx, dy = sum(x.shape[-1] for x in xs), sum(y.shape[-1] for y in ys)
    return 2.0 * n * (dx * dy + sum(x.shape[-1] ** 2 for x in xs) + sum(y.shape[-1] ** 2 for y in ys))


def run_suite(name, xs, ys, args, mask=None, drop_first=False, naive=False):
    kw = dict(mask=mask, drop_first=drop_first)
    rows = {}
    ref64, wall, cpu = timed(lambda: cka_matrix(xs, ys, precision="float64", **kw), 1)
    rows["linear, float64"] = dict(wall=wall, cpu=cpu, err=0.0)
    mixed, wall, cpu = timed(lambda: cka_matrix(xs, ys, **kw), args.repeats)
    rows["linear, mixed (default)"] = dict(wall=wall, cpu=cpu, err=(mixed - ref64).abs().max().item(),
                                           gflops=flops(xs, ys) / (cpu / args.threads) / 1e9)
    deb64 = cka_matrix(xs, ys, debiased=True, precision="float64", **kw)
    deb, wall, cpu = timed(lambda: cka_matrix(xs, ys, debiased=True, **kw), 1)
    rows["debiased (HSIC1), mixed"] = dict(wall=wall, cpu=cpu, err=(deb - deb64).abs().max().item())
    mb, wall, cpu = timed(lambda: minibatch_cka_matrix(xs, ys, batch_size=256, **kw), args.repeats)
    rows["minibatch debiased, b=256"] = dict(wall=wall, cpu=cpu, err=(mb - deb64).abs().max().item(),
                                             note="vs full debiased: estimator variance, not rounding")
    null, wall, cpu = timed(lambda: cka_permutation_null(xs, ys, n_permutations=4, **kw), 1)
    rows["permutation null, k=4"] = dict(wall=wall, cpu=cpu, note=f"null mean max {null.mean.max().item():.4f}")
    if naive:
        if mask is not None or drop_first:
            from semalign_lens.lens.similarity import token_matrix
            xs = [token_matrix(x, mask, drop_first) for x in xs]
            ys = [token_matrix(y, mask, drop_first) for y in ys]
        nv, wall, cpu = timed(lambda: naive_gram_cka(list(xs), list(ys)), 1)
        rows["naive n x n Gram, float32"] = dict(wall=wall, cpu=cpu, err=(nv - ref64).abs().max().item())
        pairs = [(0, 0), (15, 3), (len(xs) - 1, len(ys) - 1)]
        spot = spot_reference(xs, ys, pairs)
        rows["n x n float64 reference (3 pairs)"] = dict(
            err=max(abs(spot[p] - mixed[p].item()) for p in pairs),
            note=f"mixed vs ref; float64 vs ref {max(abs(spot[p] - ref64[p].item()) for p in pairs):.1e}")
    print(f"\n### {name}")
    print("| estimator | wall s | CPU s | CPU s / threads | max abs err | note |")
    print("|---|---|---|---|---|---|")
    for key, r in rows.items():
        wall = f"{r['wall']:.2f}" if "wall" in r else ""
        cpu = f"{r['cpu']:.2f}" if "cpu" in r else ""
        per = f"{r['cpu'] / args.threads:.2f}" if "cpu" in r else ""
        note = r.get("note", "") + (f"{r['gflops']:.0f} GFLOP/s at CPU s / threads" if "gflops" in r else "")
        print(f"| {key} | {wall} | {cpu} | {per} | {r.get('err', float('nan')):.1e} | {note} |")
    return rows, mixed


def real_states(n_tokens: int):
    """SmolLM2 (31 points) and the student (7 points) on the same stdlib text, via the narrow capture."""
    import sysconfig
    from pathlib import Path

    from semalign_lens.data.tokens import tokenize
    from semalign_lens.lens.capture import capture
    from semalign_lens.models.load import load_model

    teacher = load_model("smollm2-135m")
    student = student_model()
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:200]
    texts = [f.read_text(errors="ignore")[:6000] for f in files]
    seq = 512
    batch = tokenize(teacher.tokenizer, texts, max_len=seq)
    keep = batch.mask.sum(1) == seq  # full sequences only: n_tokens exactly
    batch = batch.select(keep.nonzero().flatten()[: n_tokens // seq])
    t0 = time.perf_counter()
    cap_t = capture(teacher, batch, range(30), ("resid_pre", "resid_post"), batch_size=4, progress=False)
    cap_s = capture(student, batch, range(student.cfg.n_layers), ("resid_pre", "resid_post"), batch_size=8,
                    progress=False)
    capture_s = time.perf_counter() - t0
    xs = [cap_t.get("resid_pre", 0)] + [cap_t.get("resid_post", b) for b in range(30)]
    ys = [cap_s.get("resid_pre", 0)] + [cap_s.get("resid_post", b) for b in range(student.cfg.n_layers)]
    return xs, ys, batch.mask, capture_s, student.provenance.source


def student_model():
    """The shipped student if present, else the latest checkpoint of an in-progress pretraining run."""
    from pathlib import Path

    from semalign_lens.models.load import load_model
    from semalign_lens.models.zoo import STUDENT_DIR

    if (STUDENT_DIR / "model.safetensors").exists():
        return load_model("stdlib-student")
    from semalign_lens.training.pretrain import export_student

    run = Path("runs/stdlib-student")
    step = json.loads((run / "latest.json").read_text())["step"]
    out = export_student(run, Path("/tmp/bench_cka_student"), dtype=torch.float32)
    return load_model(str(out), name=f"stdlib-student (pretraining checkpoint, step {step})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", action="store_true", help="also real SmolLM2 x student activations")
    parser.add_argument("--no-naive", dest="naive", action="store_false", help="skip the n x n baseline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"threads {args.threads}, tokens {args.tokens}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load average before {os.getloadavg()}")
    xs, ys = synthetic(args.tokens)
    print(f"grid 31 x 7, {flops(xs, ys) / 1e9:.0f} GFLOP per linear grid")
    results = {"random": run_suite("random data, real shapes", xs, ys, args, naive=args.naive)[0]}
    del xs, ys
    if args.real:
        xs, ys, mask, capture_s, student = real_states(args.tokens)
        print(f"\ncaptured {int(mask.sum())} tokens from SmolLM2 and {student} in {capture_s:.1f} s")
        results["real"] = run_suite("real SmolLM2 x student, all tokens", xs, ys, args, mask=mask)[0]
        results["real_drop_first"], grid = run_suite("real, first token dropped", xs, ys, args, mask=mask,
                                                     drop_first=True)
        best = grid.argmax(0).tolist()
        print(f"\nbest teacher point per student point (0 = embed, b+1 = block b): {best}")
        print(f"CKA of those: {[round(grid[t, s].item(), 3) for s, t in enumerate(best)]}")
    print(f"\nload average after {os.getloadavg()}")
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
