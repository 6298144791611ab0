"""The processes of one `accelerate launch` run: their process group, which of them load the teacher, and how
the others wait for work the main process does alone (ours).

- **Timeout.** The process group waits `PROCESS_GROUP_TIMEOUT` (2 h) in a collective, not NCCL's default
  10 min: some work runs on the main process alone while the others wait in a collective, and at 13B scale it
  takes minutes to half an hour (loading and checking the teacher, its diagnostic states, the semantic bases'
  pinv on one thread, the target cache build; a 41 x 33 CKA grid on one CPU thread at each stage boundary:
  `gpu-readiness-review.md` 3c and 4). A process that fails still ends the others at once (torchrun stops the
  whole group when one worker exits with an error); only a real hang is reported later.
- **The teacher where it is used** (`teacher_everywhere`): every process loads it when each step runs it
  (online targets) or a plugin reads it (Seeking, LaTen). Otherwise the main process alone loads it: it checks
  the pair, diagnoses the teacher, builds the pairing's CKA, the semantic bases, the map and the target cache,
  and sends the others what they need (`setup.MainSetup`, `from_main`). Either way the map is built once.
- **Waiting is explicit**: a process that waits for the main process does so in one named place (`from_main`
  in setup, or the barrier after the main process's diagnostics), and in setup the second process notes what
  they wait for (with `progress`).
- **Sharded training is refused** (`refuse_sharding`): the trainer replicates the student and averages its
  gradients itself (`loop.py`'s docstring: the trainable set changes at every stage, and the student's forward
  may stop early), so an FSDP, DeepSpeed or Megatron-LM config would shard nothing, silently.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import torch

from ..core.errors import SemalignError
from ..core.progress import note
from .config import AlignConfig

PROCESS_GROUP_TIMEOUT = timedelta(hours=2)

# accelerate's launcher sets these from the user's config (`accelerate config`, `--use_fsdp`, ...) in every
# process; on a machine without GPUs it then starts plain CPU processes, ignoring them
SHARDING_FLAGS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                  "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def refuse_sharding(accelerator=None) -> None:
    """One line when accelerate is set up for sharded training (its environment, or `accelerator`'s type)."""
    from accelerate.utils import DistributedType

    names = [name for flag, name in SHARDING_FLAGS.items() if os.environ.get(flag, "false").lower() in ("true", "1")]
    kind = {DistributedType.FSDP: "FSDP", DistributedType.DEEPSPEED: "DeepSpeed",
            DistributedType.MEGATRON_LM: "Megatron-LM"}.get(getattr(accelerator, "distributed_type", None))
    names += [kind] if kind is not None and kind not in names else []
    if names:
        raise SemalignError(f"accelerate is configured for {' and '.join(names)}, which the trainer does not use (it "
                            "replicates the student and averages gradients itself, so nothing would be sharded); "
                            "launch plain data parallelism instead (`accelerate launch --multi_gpu`, no FSDP or "
                            "DeepSpeed config), and see `semalign plan` for what makes a large pair fit")


def run_accelerator(trackers: Sequence[str] = (), logging_dir: str | os.PathLike | None = None):
    """The trainer's `Accelerator`: its process group waits `PROCESS_GROUP_TIMEOUT`. cpu=True on machines without
    an accelerator: only then does Accelerate recognise a multi-process CPU launch (torchrun / `accelerate launch
    --multi_gpu`) and use the gloo backend. `trackers` (`AlignConfig.trackers`) log under `logging_dir`."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration

    refuse_sharding()  # before Accelerator(): under DeepSpeed it fails to import deepspeed first
    logging = ({"log_with": list(trackers), "project_config": ProjectConfiguration(logging_dir=str(logging_dir))}
               if trackers else {})
    return Accelerator(cpu=not torch.accelerator.is_available(),
                       kwargs_handlers=[InitProcessGroupKwargs(timeout=PROCESS_GROUP_TIMEOUT)], **logging)


def teacher_everywhere(cfg: AlignConfig, reads_teacher: bool, plugins: Sequence[Any], runs_teacher: bool = False
                       ) -> bool:
    """Whether every process loads the teacher: when steps read teacher targets online, a term runs the teacher
    itself every step whatever the targets (`runs_teacher`: an interchange intervention, a teacher logit lens), or
    a plugin has a `setup(trainer, teacher)` hook (it reads the teacher in each process). Else the main process
    alone does."""
    return ((reads_teacher and cfg.targets.mode == "online") or runs_teacher
            or any(hasattr(p, "setup") for p in plugins))


def from_main(accelerator, value: Any, waiting_for: str, say: bool = True) -> Any:
    """`value` as the main process passes it, in every process; the others pass None and wait here, in one
    broadcast, up to the process group's timeout. With `say`, the second process notes once what they wait for."""
    from accelerate.utils import broadcast_object_list

    n = accelerator.num_processes
    if n == 1:
        return value
    if say and accelerator.process_index == 1:
        others = "process 1" if n == 2 else f"processes 1-{n - 1}"
        note(f"{others} wait for the main process: {waiting_for}")
    box = [value if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
