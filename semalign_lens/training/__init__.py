"""The training floor: the alignment trainer split by concern (config, dataset, targets, schedule, setup,
loop, diagnostics as records, checkpoints), its objectives and methods, and student pretraining.

The trainer's public entry points are re-exported here; its pages are drawn above it (`reports.run`).
"""

from .config import (
                     AlignConfig,
                     DataConfig,
                     ObjectiveConfig,
                     PairingConfig,
                     ScheduleConfig,
                     TargetsConfig,
                     TrainConfig,
                     TransferConfig,
                     load_align_config,
)
from .loop import AlignResult, NonFiniteLossError, Trainer, align

__all__ = ["AlignConfig", "AlignResult", "DataConfig", "NonFiniteLossError", "ObjectiveConfig",
           "PairingConfig", "ScheduleConfig", "TargetsConfig", "TrainConfig", "Trainer", "TransferConfig", "align",
           "load_align_config"]
