"""The objective registry: what the trainer hands a loss term (`LayerInputs`, `OutputInputs`), the named
`Objective`s, and SemAlign's own six terms registered by name.

A registry is a leaf: it imports only the loss maths below it. The reference (baseline) terms register
themselves in `objectives.reference`, which the package face imports, so every built-in term is there from
the first import of `semalign_lens.training.objectives`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int

from ...core.errors import SemalignError
from ...core.registry import Registry
from .losses import Lens, ce_loss, cosine_loss, cosine_onehot_loss, fisher_loss, kl_loss, relation_loss
from .sparse_logits import SparseLogits

INTERFACES = ("state", "contribution")
# What a term may declare it needs beyond its tensors (`Objective.needs`; ours): the trainer then keeps the plain
# teacher in memory (`teacher_model`: an intervention runs it), keeps its logit lens (`teacher_lens`; with a top-k
# target cache the cache holds that lens's top-k at each pair target instead, `LayerInputs.teacher_readout`),
# refuses a config without an output KL beside the term (`output_kl`), or refuses a cross-tokenizer pair
# (`one_vocabulary`: the term swaps or compares positions one for one).
NEEDS = ("teacher_model", "teacher_lens", "output_kl", "one_vocabulary")
# Options every layer term accepts beside its own, read by the trainer, not by the term (`training.terms`):
# `balance` scales the term by α = L_out / L_term, detached, every step (Minitron, arXiv 2407.14679).
LAYER_OPTIONS = {"balance": False}


@dataclass
class StepContext:
    """What a training step tells the terms that need more than their tensors (ours): where the step is in its
    stage (annealing), the run's pairs and the student's depth (depth weights, a term at one chosen pair), the
    batch and the plain models (interventions), the teacher's logit lens and a cross-tokenizer pair's shared ids
    (readouts). The trainer sets it on every `LayerInputs` of a step; terms called without one (tests, analysis)
    fall back to their plain form."""

    step: int  # the global step, 0-based
    progress: float  # fraction of the stage done before this step, in [0, 1)
    pairs: tuple[Any, ...]  # the run's `LayerPair`s, sorted by student layer
    n_student_layers: int
    tokens: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]
    student: Any = None  # the plain student being trained
    teacher: Any = None  # the plain teacher (kept for terms that need `teacher_model`)
    teacher_lens: Lens | None = None
    teacher_states: Any = None  # the step's raw teacher states, a `models.residuals.ResidualStates`
    shared: tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]] | None = None  # (student ids, teacher ids)
    rows: tuple[int | None, int | None] = (None, None)  # real vocabulary rows (student, teacher); None: all
    autocast: Callable[[], Any] = nullcontext
    seed: int = 0
    swapped_logits: Callable[..., torch.Tensor] | None = None  # `lens.interchange.interchange_logits`
    # the step's student logits, given only where the student's lens on its last block's output is those logits
    # (`models.readout.lens_is_output`): a lens term at the last layer reads them instead of a second readout
    student_logits: Float[torch.Tensor, "batch pos vocab"] | None = None

    def pair(self, student_layer: int):
        """The run's pair of `student_layer`."""
        return next(p for p in self.pairs if p.student_layer == student_layer)


@dataclass
class LayerInputs:
    """Everything a layer objective may use for one paired student layer (one global batch shard).

    `state`/`contribution` carry gradients; the targets are constants mapped into the student's space by the
    TransferMap; `teacher_state` is the raw interpolated teacher activation (for baselines that learn their
    own map, e.g. FitNets). `lens` is the student's logit lens (final norm + LM head).
    """

    student_layer: int
    state: Float[torch.Tensor, "batch pos d_s"]
    contribution: Float[torch.Tensor, "batch pos d_s"]
    target: Float[torch.Tensor, "batch pos d_s"]
    target_contribution: Float[torch.Tensor, "batch pos d_s"]
    mask: Bool[torch.Tensor, "batch pos"]
    lens: Lens
    teacher_state: Float[torch.Tensor, "batch pos d_t"] | None = None
    teacher_contribution: Float[torch.Tensor, "batch pos d_t"] | None = None
    # the teacher's logit lens on `teacher_state`, as top-k + tail from a top-k target cache (terms that need
    # `teacher_lens`); None: read `teacher_state` through `context.teacher_lens`
    teacher_readout: SparseLogits | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # from trainer plugins (e.g. a learned projector)
    context: StepContext | None = None  # set by the trainer on a training step

    def pick(self, interface: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(student, target) at `interface` ('state' or 'contribution')."""
        if interface == "state":
            return self.state, self.target
        if interface == "contribution":
            return self.contribution, self.target_contribution
        raise SemalignError(f"interface must be one of {INTERFACES}, got {interface!r}")


@dataclass
class OutputInputs:
    """Everything an output objective may use: the student's final logits, tokens, mask, teacher logits
    (dense, or `SparseLogits` from a top-k target cache)."""

    logits: Float[torch.Tensor, "batch pos vocab"]
    tokens: Int[torch.Tensor, "batch pos"]
    mask: Bool[torch.Tensor, "batch pos"]
    teacher_logits: Float[torch.Tensor, "batch pos vocab"] | SparseLogits | None = None
    # a cross-tokenizer pair: (student ids, teacher ids) of the shared strings in one order; the logits of
    # both models are then taken at aligned positions only (`vocab_alignment`)
    shared: tuple[Int[torch.Tensor, " n"], Int[torch.Tensor, " n"]] | None = None
    # where the teacher logits are defined (a cross-tokenizer pair's aligned positions); None: everywhere
    teacher_mask: Bool[torch.Tensor, "batch pos"] | None = None

    @property
    def teacher_positions(self) -> Bool[torch.Tensor, "batch pos"]:
        """The real positions at which a term comparing with the teacher's logits may read them."""
        return self.mask if self.teacher_mask is None else self.mask & self.teacher_mask


@dataclass(frozen=True)
class Objective:
    """A named loss term. `fn(inputs, **options)` returns a scalar; `defaults` lists the valid options."""

    name: str
    kind: Literal["layer", "output"]
    fn: Callable[..., torch.Tensor]
    defaults: dict[str, Any] = field(default_factory=dict)
    needs_teacher_logits: bool = False
    # reads the teacher's logits in the teacher's own vocabulary (shared_kl, uld): the only output terms that
    # fit a cross-tokenizer pair, and the ones that need one (their shared ids)
    cross_vocab: bool = False
    source: str = ""  # what is from the paper and what is inferred, one line
    # what in the term is a statistic of the whole batch, in words; None for a mean over tokens or sequences.
    # Such a term is no sum over micro-batches: with `train.micro_batch_size` each micro-batch takes the statistic
    # over its own sequences, so the step's gradient differs from the whole batch's (the trainer warns)
    batch_statistic: str | None = None
    needs: frozenset[str] = frozenset()  # from `NEEDS`

    def vocab_problem(self, cross: bool) -> str | None:
        """Why this term cannot run on a pair of this kind (`cross`: two vocabularies paired through their shared
        strings), else None: a term comparing logits token for token needs one vocabulary, a `cross_vocab` term
        needs two."""
        if cross and self.needs_teacher_logits and not self.cross_vocab:
            return (f"objective {self.name!r} compares teacher and student logits token for token, but this run "
                    "pairs two vocabularies through their shared strings (vocab = 'intersection'); use 'shared_kl' "
                    "(KL on the shared tokens) or 'uld' instead")
        if cross and "one_vocabulary" in self.needs:
            return (f"objective {self.name!r} swaps or compares positions one for one, which two tokenizations "
                    "of a text do not share; train it on a pair with one vocabulary (vocab = 'shared')")
        if self.cross_vocab and not cross:
            return (f"objective {self.name!r} is for a cross-tokenizer pair (vocab = 'intersection'); with one shared "
                    "vocabulary use 'kl'")
        return None

    def options(self, given: dict[str, Any] | None) -> dict[str, Any]:
        """`defaults` updated with `given`: the options `fn` takes. Unknown option names are an error naming the
        valid ones; a layer term's `LAYER_OPTIONS` are valid too, and left to the trainer (not passed to `fn`)."""
        given = dict(given or {})
        shared = LAYER_OPTIONS if self.kind == "layer" else {}
        unknown = sorted(set(given) - set(self.defaults) - set(shared))
        if unknown:
            raise SemalignError(f"unknown option(s) {unknown} for objective {self.name!r}; valid options: "
                                f"{sorted({*self.defaults, *shared}) or 'none'}")
        return {**self.defaults, **{k: v for k, v in given.items() if k not in shared}}


OBJECTIVES: Registry[Objective] = Registry("objective")


def register_objective(objective: Objective, *, replace: bool = False) -> Objective:
    """Add `objective` to the registry (user terms; the built-in ones register at first import)."""
    if objective.kind not in ("layer", "output"):
        raise SemalignError(f"objective kind must be 'layer' or 'output', got {objective.kind!r}")
    if not set(objective.needs) <= set(NEEDS):
        raise SemalignError(f"objective {objective.name!r} needs {sorted(set(objective.needs) - set(NEEDS))}, which "
                            f"the trainer does not provide; valid needs: {', '.join(NEEDS)}")
    return OBJECTIVES.register(objective.name, objective, replace=replace)


def get_objective(name: str) -> Objective:
    """The registered objective `name`; an unknown name is an error listing the registered ones."""
    return OBJECTIVES.lookup(name)


def _check_interface(value: str) -> str:
    if value not in INTERFACES:
        raise SemalignError(f"interface must be one of {INTERFACES}, got {value!r}")
    return value


def _cosine(x: LayerInputs, interface: str) -> torch.Tensor:
    return cosine_loss(*x.pick(_check_interface(interface)), x.mask)


def _relation(x: LayerInputs, interface: str, normalize_tokens: bool) -> torch.Tensor:
    return relation_loss(*x.pick(_check_interface(interface)), x.mask, normalize_tokens=bool(normalize_tokens))


def _fisher(x: LayerInputs, chunk: int) -> torch.Tensor:
    if not (isinstance(chunk, int) and chunk > 0):
        raise SemalignError(f"fisher chunk must be a positive integer, got {chunk!r}")
    return fisher_loss(x.state, x.target, x.mask, x.lens, chunk=chunk)


def _kl(x: OutputInputs, direction: str, temperature: float, scale_by_t2: bool) -> torch.Tensor:
    if x.teacher_logits is None:
        raise SemalignError("the 'kl' objective needs teacher logits; use targets.mode = 'online' or cache "
                            "the logits (targets.cache_logits = 'topk' or 'dense')")
    return kl_loss(x.logits, x.teacher_logits, x.teacher_positions, direction=direction, temperature=temperature,
                   scale_by_t2=scale_by_t2)


for _obj in (
    Objective("cosine", "layer", _cosine, {"interface": "contribution"},
              source="paper v1 (1 − cos); interface and positions inferred"),
    Objective("relation", "layer", _relation, {"interface": "contribution", "normalize_tokens": False},
              source="paper v2 abstract (centred token-token geometry of the residual contribution); form "
                     "1 − linear CKA per sequence inferred"),
    Objective("fisher", "layer", _fisher, {"chunk": 512},
              source="ACL abstract (Fisher-weighted quadratic on aligned logits); ½δᵀFδ with the student "
                     "logit lens inferred"),
    Objective("kl", "output", _kl, {"direction": "forward", "temperature": 1.0, "scale_by_t2": True},
              needs_teacher_logits=True,
              source="paper v2/ACL (output KL distillation); direction and temperature inferred"),
    Objective("cosine_onehot", "output",
              lambda x, label_smoothing: cosine_onehot_loss(x.logits, x.tokens, x.mask, label_smoothing),
              {"label_smoothing": 0.0}, source="paper v1 (1 − cos(logits, one-hot))"),
    Objective("ce", "output", lambda x: ce_loss(x.logits, x.tokens, x.mask),
              source="not SemAlign: supervised next-token cross-entropy (SFT control)"),
):
    register_objective(_obj)
