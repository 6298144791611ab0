"""`MethodTrainer`: the alignment `Trainer` plus stage hooks for methods that need more than loss terms.

Why a subclass: three baselines need something the objective registry cannot express with stateless loss
functions — FitNets' learned projector (extra trainable parameters), Seeking's LoRA initialisation from
teacher blocks, LaTen's hypernetwork that writes into student weights. Everything else (data order, steps,
stages, the frontier layer's LoRA adapters, targets, logging) is the unmodified trainer, so these rows stay
comparable with SemAlign's.

This is a *thin adapter* over three private methods of `training.loop.Trainer` (`_open_stage`,
`_close_stage`, `_layer_inputs`). Proposed public hook (requested from the trainer's owner): a `plugins=`
argument whose objects get `setup(trainer, teacher)`, `open_stage(trainer, stage, params) -> params`,
`close_stage(trainer, stage)` and contribute `extras` to `LayerInputs`, with plugin parameters checkpointed.
Until then, a run with a plugin that owns parameters (FitNets' projector, LaTen's hypernetwork before its
stage closes) does not resume exactly from a mid-stage checkpoint; the benchmark never resumes.

`lean=True` (the benchmark) skips the CKA heatmaps and figure files; the metrics JSONL is still written.
Requested: an `AlignConfig` switch for this, so the figures need not even be built.

Plugin protocol (duck-typed; every method optional):
- `setup(trainer, teacher)` once, after the trainer is built; `teacher` is the caller's model (a bridge or
  HF model), available even when the trainer itself runs from cached targets;
- `open_stage(trainer, stage, params) -> list[Parameter]` after the trainer opened the stage (LoRA attached);
  returns the parameters to optimise (the trainer's, extended or replaced);
- `close_stage(trainer, stage)` before the trainer merges LoRA and freezes the student;
- `extras`: a dict attached to every `LayerInputs` as `.extras` (read by the plugin's objectives).
"""

from __future__ import annotations

from ..training.loop import Trainer
from ..training.schedule import make_optimizer


class MethodTrainer(Trainer):
    """`Trainer` that runs a method's plugin at stage boundaries (see the module docstring)."""

    def __init__(self, config, *, method, teacher, student, lean: bool = False, **kwargs):
        super().__init__(config, teacher=teacher, student=student, **kwargs)
        self.method = method
        self.lean = lean  # benchmark mode: no CKA heatmaps, no figure files (plotly costs ~2-3 s per run)
        self.stage_params: dict[int, int] = {}  # trainable parameter count per stage (for the fairness record)
        self.plugin = method.plugin() if method.plugin is not None else None
        if self.plugin is not None and hasattr(self.plugin, "setup"):
            self.plugin.setup(self, teacher)

    def _open_stage(self, stage) -> None:
        super()._open_stage(stage)
        if self.plugin is not None and hasattr(self.plugin, "open_stage"):
            params = self.plugin.open_stage(self, stage, list(self._params))
            if [id(p) for p in params] != [id(p) for p in self._params]:
                self._params = params
                self._opt = make_optimizer(params, self.cfg.schedule, stage.lr)
        self.stage_params[stage.index] = sum(p.numel() for p in self._params)

    def _close_stage(self) -> None:
        if self.plugin is not None and hasattr(self.plugin, "close_stage"):
            self.plugin.close_stage(self, self.stages[self._open] if self._open is not None else None)
        super()._close_stage()

    def _diagnose(self, step, stage, when, cka):
        super()._diagnose(step, stage, when, cka and not self.lean)

    def _write_fig(self, fig, name: str) -> None:
        if not self.lean:
            super()._write_fig(fig, name)

    def _layer_inputs(self, pair, s_states, t_states, mask):
        x = super()._layer_inputs(pair, s_states, t_states, mask)
        x.extras = getattr(self.plugin, "extras", {}) if self.plugin is not None else {}
        return x
