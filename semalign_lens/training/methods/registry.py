"""The method registry: `Method` (a row of the transfer table), `register_method`, `get_method`,
`method_config` (the shared config with only the method's fields swapped) and `run_method`.

Kept apart from the method modules so that each of them can register itself without import cycles. A run
is the plain `Trainer` with the method's plugin (`Trainer(..., plugins=[...])`), so every row shares one
training loop.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...core.registry import Registry
from ..loop import Trainer

# The one output KL every row with `kl` uses. τ = 1, measured (analysis/TRANSFER.md, "Why τ = 1"): at τ = 2 the
# KL made the shipped student's held-out stdlib CE worse with dense teacher logits too (4.41 → 4.52 nats in 6
# train-all steps, 4.37 at τ = 1), and a top-k cache is exact only at τ = 1 (its tempered tail is modelled).
KL_OUTPUT = {"kl": {"direction": "forward", "temperature": 1.0}}


@dataclass(frozen=True)
class Method:
    """One row of the transfer table.

    `changes` says what differs from the published method and why (toy scale, different widths, the
    fairness rule); `plugin` builds a per-run object for the trainer's `plugins=` hook (`setup`,
    `open_stage`, `close_stage`, `extras`; see `training.loop.Trainer`).
    """

    name: str
    terms: dict[str, float]
    summary: str
    changes: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    transfer_kind: str | None = None
    plugin: Callable[[], Any] | None = None
    uses_teacher: bool = True
    family: str = "baseline"  # control | baseline | semalign

    @property
    def cross_vocab(self) -> bool:
        """Whether a term reads the teacher's logits in its own vocabulary: the row then needs a
        cross-tokenizer pair (`AlignConfig.vocab = "intersection"`)."""
        from ..objectives import get_objective

        return any(get_objective(t).cross_vocab for t in self.terms)


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add `method` as a row of the transfer table (a taken name is an error unless `replace`)."""
    return METHODS.register(method.name, method, replace=replace)


def get_method(name: str | Method) -> Method:
    """The registered method `name`; an unknown name is an error listing the valid ones."""
    if isinstance(name, Method):
        return name
    return METHODS.lookup(name)


def method_config(base, method: str | Method):
    """A copy of `base` (an `AlignConfig`) with only the method's loss terms, options and map kind swapped.

    Everything else — data, pairing, schedule, trainable parameters, seed — stays identical, which is what
    makes the rows of the transfer table comparable.
    """
    m = get_method(method)
    cfg = copy.deepcopy(base)
    cfg.objective.terms = dict(m.terms)
    cfg.objective.options = copy.deepcopy(m.options)
    if m.transfer_kind is not None:
        cfg.transfer.kind = m.transfer_kind
    cfg.validate()
    return cfg


def method_trainer(method: str | Method, base, pair=None, *, data, run_dir, pairing=None, transfer=None,
                   diag_data=None, lean: bool = False, plugins: Sequence = ()):
    """The trainer of `run_method`, built but not run: for callers that train in pieces
    (`trainer.run(stop_after_steps=n)`) and evaluate `trainer.student` in between.

    `lean` sets `figures = false` on the method's copy of the config (no CKA heatmaps or figure files: plotly
    costs 2-3 s per run); the metrics JSONL is written either way. `plugins` are the caller's own trainer
    plugins (`Trainer`), after the method's."""
    m = get_method(method)
    cfg = method_config(base, m)
    if lean:
        cfg.figures = False
    if transfer is not None and getattr(transfer, "kind", None) != cfg.transfer.kind:
        transfer = None
    return Trainer(cfg, pair, data=data, diag_data=diag_data, pairing=pairing, transfer=transfer, run_dir=run_dir,
                   plugins=([m.plugin()] if m.plugin is not None else []) + list(plugins))


def run_method(method: str | Method, base, pair=None, *, data, run_dir, pairing=None, transfer=None,
               diag_data=None, lean: bool = False, plugins: Sequence = ()):
    """Train the student of `pair` (a validated `ModelPair`; None: the config's) with `method` under the shared
    `base` config; returns the trainer's `AlignResult`, whose `trainable_params` ({stage: count}), `data_hash`
    and `steps` are what the fairness rule fixes.

    `transfer`: a prebuilt `TransferMap` (reused across methods to save time); ignored by methods whose map
    kind differs from it. `lean`: skip CKA heatmaps and figure files (the benchmark's setting).
    """
    return method_trainer(method, base, pair, data=data, run_dir=run_dir, pairing=pairing, transfer=transfer,
                          diag_data=diag_data, lean=lean, plugins=plugins).run()
