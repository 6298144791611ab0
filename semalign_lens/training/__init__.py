"""The alignment trainer, split by concern: config, dataset, targets, schedule, diagnostics, loop.

The public entry points are re-exported by `semalign_lens.trainer`.
"""

from ..pairing import LayerPair as Pair  # the one layer-pair type, under its old trainer name
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
from .loop import AlignResult, NonFiniteLossError, Trainer, align, align_main

__all__ = ["AlignConfig", "AlignResult", "DataConfig", "NonFiniteLossError", "ObjectiveConfig", "Pair",
           "PairingConfig", "ScheduleConfig", "TargetsConfig", "TrainConfig", "Trainer", "TransferConfig", "align",
           "align_main", "load_align_config"]
