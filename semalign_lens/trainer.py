"""SemAlign alignment training: `align(config) -> AlignResult`, `Trainer`, and `align_main` for the CLI.

The implementation lives in `semalign_lens.training` (config, dataset, targets, schedule, diagnostics,
loop); this module is the stable import path. Objectives are in `semalign_lens.objectives`.

    from semalign_lens.trainer import AlignConfig, align
    result = align(AlignConfig(teacher="smollm2-135m", student="stdlib-student"))

Scale out with `accelerate launch [--num_processes N] -m semalign_lens.trainer --config run.toml`.
"""

from .training import (
    AlignConfig,
    AlignResult,
    DataConfig,
    NonFiniteLossError,
    ObjectiveConfig,
    Pair,
    PairingConfig,
    ScheduleConfig,
    TargetsConfig,
    TrainConfig,
    Trainer,
    TransferConfig,
    align,
    align_main,
    load_align_config,
)
from .training.loop import main

__all__ = ["AlignConfig", "AlignResult", "DataConfig", "NonFiniteLossError", "ObjectiveConfig", "Pair",
           "PairingConfig", "ScheduleConfig", "TargetsConfig", "TrainConfig", "Trainer", "TransferConfig", "align",
           "align_main", "load_align_config", "main"]

if __name__ == "__main__":
    import sys

    sys.exit(main())
