"""Experiment trackers (TensorBoard, Weights & Biases, trackio, ...) through accelerate's tracker interface (ours).

Off by default: `AlignConfig.trackers` names them, and the trainer's `Accelerator(log_with=...)` carries them.
What a tracker receives:
- the resolved config at the start, flattened to dotted keys (`schedule.lr`; lists and nulls as JSON text);
- every record the trainer writes to `metrics.jsonl`, as it writes it: each number of the record at the
  record's step, named `{kind}/{field}` (`train/loss`, `heldout/ce`, `cka/diagonal_mean`), a diagnosis
  `diag/L{student layer}/{field}`, a stage boundary `stage/{start|end}/{field}` (`tracker_values`);
- the run's figures as images (loss curves, projections, CKA maps), sent from above the trainer, where they are
  drawn (`reports.tracking`): a finished run's trackers therefore stay open on its `AlignResult` until
  `AlignResult.end_trackers()`.
Only the main process logs (accelerate keeps trackers there). TensorBoard writes to
`run_dir/trackers/{tracker_project}/` (the config in a subfolder per session: `add_hparams` does so), W&B to
`run_dir/trackers/wandb/`. A resumed run writes on with `purge_step` past the checkpoint, so TensorBoard hides
what a killed run logged after it; W&B starts a new run on resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import SemalignError

# what to install for each tracker accelerate knows (`pip install ...`)
INSTALL = {"tensorboard": "semalign-lens[trackers]", "wandb": "semalign-lens[trackers]", "trackio": "trackio",
           "comet_ml": "comet_ml", "aim": "aim", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive",
           "swanlab": "swanlab"}

# record fields that place a record (its step, its layer) rather than measure something
PLACING = ("step", "student_layer")

TRACKER_DIR = "trackers"


def check_trackers(names: list[str]) -> None:
    """One line for a tracker accelerate does not know or whose package is missing (accelerate itself would
    drop it silently)."""
    from accelerate.tracking import get_available_trackers

    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SemalignError(f"trackers must be a list of tracker names, e.g. ['tensorboard'], got {names!r}")
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in INSTALL:
            raise SemalignError(f"trackers: unknown tracker {name!r}; choose from {sorted(INSTALL)}")
        if name not in available:
            raise SemalignError(f"tracker {name!r} is not installed; pip install '{INSTALL[name]}'")


def tracker_values(record: dict) -> dict[str, float | int]:
    """The numbers of one metric record under their tracker names (see the module docstring)."""
    kind = record.get("kind", "record")
    prefix = {"diag": f"diag/L{record.get('student_layer')}", "stage": f"stage/{record.get('when')}"}.get(kind, kind)
    return {f"{prefix}/{key}": value for key, value in record.items()
            if key not in PLACING and isinstance(value, (int, float)) and not isinstance(value, bool)}


def flat_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested config as dotted keys with the scalar values every tracker stores (others as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            out[prefix + key] = value
        else:
            out[prefix + key] = json.dumps(value)
    return out


class Trackers:
    """A run's trackers: those of `accelerator` (built with `log_with`); on other processes than the main one
    every call does nothing (accelerate's own rule)."""

    def __init__(self, accelerator):
        self.acc = accelerator

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.acc.trackers]

    def start(self, config: dict, run_dir: Path, project: str, step: int) -> None:
        """Open every tracker's run and store the config; `step` > 0 continues a resumed run."""
        folder = Path(run_dir) / TRACKER_DIR
        if self.acc.is_main_process:
            folder.mkdir(parents=True, exist_ok=True)
        # TensorBoard hides the events a killed run logged past its checkpoint's step (those at it are records
        # metrics.jsonl keeps; a stage start logged at it after the checkpoint shows twice, as the resume logs it
        # again)
        kwargs = {"tensorboard": {"purge_step": step + 1} if step else {},
                  "wandb": {"dir": str(folder), "name": Path(run_dir).name},
                  "trackio": {"name": Path(run_dir).name}}
        self.acc.init_trackers(project, config=flat_config(config), init_kwargs=kwargs)

    def log(self, record: dict) -> None:
        """One metric record, at its step."""
        values = tracker_values(record)
        if values:
            self.acc.log(values, step=record.get("step"))

    def log_images(self, images: dict, step: int) -> list[str]:
        """`images` (name -> uint8 array [height, width, 3]) at `step` to the trackers that take images
        (TensorBoard, W&B); returns their names."""
        took = []
        for tracker in self.acc.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")
                tracker.writer.flush()
            elif tracker.name == "wandb":
                tracker.log_images({k: [v] for k, v in images.items()}, step=step)
            else:
                continue
            took.append(tracker.name)
        return took

    def finish(self) -> None:
        """Close every tracker (not `Accelerator.end_training`: that also ends the process group)."""
        for tracker in self.acc.trackers:
            tracker.finish()
        self.acc.trackers.clear()
