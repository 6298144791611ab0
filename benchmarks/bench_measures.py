"""The cost of every similarity measure on the 31 x 7 grid (SmolLM2's 31 residual points, d=576, x the default
student's 7, d=256), alone and with its 10-shuffle null, plus the head-pattern view; `lens.measures`.

    python benchmarks/bench_measures.py                 # bench_cka's synthetic stacks, 8192 tokens, 1 thread
    python benchmarks/bench_measures.py --tokens 1350   # the pairing report's size (facts, cka_tokens 4096)

Prints the machine line, then one JSON line per measure: wall and process CPU seconds of the grid and of the
grid with its null. Run it with one thread on a shared machine and read the CPU seconds: wall time there
measures the neighbours. The fixed-n measures (mutual kNN, CKNNA, RSA) read 1024 of the tokens whatever
`--tokens` is.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU time counts work, not threads spinning

import torch  # noqa: E402
from bench_cka import synthetic  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from semalign_lens.core.precision import machine_line  # noqa: E402
from semalign_lens.lens.measures import MEASURES, measure_matrix, measure_null  # noqa: E402


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return round(time.perf_counter() - wall, 2), round(time.process_time() - cpu, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--permutations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--measures", nargs="+", default=list(MEASURES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    print(f"threads {args.threads}, tokens {args.tokens}, load average {os.getloadavg()}", flush=True)
    xs, ys = synthetic(args.tokens)
    for name in args.measures:
        grid = timed(lambda name=name: measure_matrix(name, xs, ys))
        null = timed(lambda name=name: measure_null(name, xs, ys, n_permutations=args.permutations))
        print(json.dumps({"measure": name, "grid_wall_s": grid[0], "grid_cpu_s": grid[1],
                          f"grid_and_{args.permutations}_shuffle_null_wall_s": null[0],
                          f"grid_and_{args.permutations}_shuffle_null_cpu_s": null[1]}), flush=True)
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
