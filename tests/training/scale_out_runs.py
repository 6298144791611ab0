"""The runs of the scale-out test (`test_loop.test_two_accelerate_processes_match_one`): launched once under
`accelerate launch` with two processes, and repeated in the test's own process as the one-process reference.

`python scale_out_runs.py JOBS OUT` runs every job of the JSON file JOBS into OUT/<name>/ and writes, per process,
OUT/process<i>.json: the model sources each job loaded in that process and the process group's timeout. A job is
{"name", "config": an AlignConfig dict, "method": a registered method or null (plain `align`), "cli": run through
`semalign align`, what `accelerate launch -m semalign_lens align` runs}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_jobs(jobs_path: Path, out: Path) -> None:
    import torch
    from accelerate.state import PartialState

    from semalign_lens.cli import main
    from semalign_lens.models import load as models
    from semalign_lens.training import align, load_align_config
    from semalign_lens.training.methods import run_method

    loads: list[str] = []
    load = models.load_model

    def load_noting_the_source(source, *args, **kwargs):
        loads.append(str(source))
        return load(source, *args, **kwargs)

    models.load_model = load_noting_the_source
    from semalign_lens.training import loop  # the trainer loads the config's sources with its own import

    loop.load_model = load_noting_the_source
    record = {"loads": {}}
    for job in json.loads(Path(jobs_path).read_text()):
        loads.clear()
        run_dir = out / job["name"]
        if job.get("cli"):
            config = out / f"{job['name']}.json"
            config.write_text(json.dumps(job["config"]))
            assert main(["align", "--config", str(config), "--set", f"run_dir={run_dir}"]) == 0, job["name"]
        elif job.get("method"):
            cfg = load_align_config(None, job["config"])
            run_method(job["method"], cfg, data=None, run_dir=run_dir, lean=True)
        else:
            align(load_align_config(None, {**job["config"], "run_dir": str(run_dir)}))
        record["loads"][job["name"]] = sorted(loads)
    state = PartialState()
    if torch.distributed.is_initialized():  # gloo's own record of the timeout it was given
        group = torch.distributed.distributed_c10d._get_default_group()
        record["timeout_s"] = group._get_backend(torch.device("cpu")).options._timeout.total_seconds()
    (out / f"process{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    run_jobs(Path(sys.argv[1]), Path(sys.argv[2]))
