"""semalign_lens: look at a teacher and a student, pair their layers, move knowledge through semantic bases.

    import semalign_lens as sl

    pair = sl.ModelPair.load("smollm2-135m", "stdlib-student")      # or sl.tiny_pair(seed=0), offline
    batch = sl.tokenize(pair.tokenizer, ["def add(a, b):\\n    return a + b\\n"])
    teacher = sl.capture(pair.teacher, batch, layers=range(pair.teacher.cfg.n_layers))
    cka = sl.cka_matrix(sl.accumulated_resid(pair.teacher, batch, drop_first=True),
                        sl.accumulated_resid(pair.student, batch, drop_first=True))
    pairing = sl.make_pairing("proportional", pair.teacher.cfg.n_layers, pair.student.cfg.n_layers)
    result = sl.align(sl.AlignConfig(), teacher=pair.teacher, student=pair.student, pairing=pairing)
    sl.evaluation.cross_entropy(result.student, ["def mul(a, b):\\n    return a * b\\n"], tokenizer=pair.tokenizer)

The face is lazy (PEP 562): a name's module is imported on first use, so `import semalign_lens` and the CLI's
`semalign zoo list` load no torch. The grouped names follow the notebooks: models and data, looking inside,
layer attribution and pairing, training and comparing. Subpackages and modules for the long tail are
attributes too (`sl.evaluation`, `sl.objectives`, `sl.baselines`, `sl.attribution`, ...).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

_API = {  # public name -> the module that defines it
    # models and data
    "load_model": "models", "save_model": "models", "ModelPair": "models", "describe": "models", "tiny_pair": "zoo.tiny",
    "tokenize": "data", "TokenBatch": "data",
    # looking inside
    "capture": "activations", "Capture": "activations", "accumulated_resid": "activations",
    "residual_norms": "overview", "residual_norm_figure": "overview", "humaneval_prompts": "overview",
    "SemanticBasis": "semantics", "TransferMap": "semantics", "decompose": "semantics", "logit_lens": "semantics",
    "fidelity": "semantics", "transfer_fidelity": "semantics", "condition_report": "semantics",
    "cka_matrix": "similarity", "cka_permutation_null": "similarity", "cka_heatmap": "similarity",
    "cka_wide": "similarity", "residual_labels": "similarity",
    # two tokenizers
    "align_vocabularies": "vocab_alignment", "aligned_positions": "vocab_alignment",
    "held_out_coverage": "vocab_alignment", "intersection_bases": "semantics", "aligned_stacks": "cross_tokenizer",
    # layer attribution and pairing
    "load_task": "tasks", "fact_task": "tasks", "tokenize_pairs": "tasks",
    "rank_layers": "attribution", "rank_agreement": "attribution", "top_layers": "attribution",
    "make_pairing": "pairing", "LayerPairing": "pairing", "LayerPair": "pairing",
    "pairing_report": "pairing_report", "Report": "report",
    # training and comparing
    "AlignConfig": "training", "load_align_config": "training", "align": "training", "Trainer": "training",
    "run_method": "baselines", "RunProfile": "benchmark", "build_task": "benchmark", "shared_config": "benchmark",
    "SemalignError": "errors",
}
_MODULES = ("attribution", "baselines", "benchmark", "evaluation", "objectives", "pairing", "plotting", "semantics",
            "similarity", "tasks", "training", "zoo")
__all__ = sorted([*_API, *_MODULES, "__version__"])


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's, so it cannot drift from pyproject.toml
        from importlib.metadata import version

        return version("semalign-lens")
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'semalign_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


class _Face(types.ModuleType):
    """The package module, except that an imported submodule never shadows the public function of its name.

    Python binds every imported submodule as an attribute of its package, so once anything has imported the
    module `semalign_lens.pairing_report`, `sl.pairing_report` would be that module, not the function.
    """

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Face


if TYPE_CHECKING:  # the same names, statically, for editors and type checkers
    from . import (
        attribution,
        baselines,
        benchmark,
        evaluation,
        objectives,
        pairing,
        plotting,
        semantics,
        similarity,
        tasks,
        training,
        zoo,
    )
    from .activations import Capture, accumulated_resid, capture
    from .attribution import rank_agreement, rank_layers, top_layers
    from .baselines import run_method
    from .benchmark import RunProfile, build_task, shared_config
    from .cross_tokenizer import aligned_stacks
    from .data import TokenBatch, tokenize
    from .errors import SemalignError
    from .models import ModelPair, describe, load_model, save_model
    from .overview import humaneval_prompts, residual_norm_figure, residual_norms
    from .pairing import LayerPair, LayerPairing, make_pairing
    from .pairing_report import pairing_report
    from .report import Report
    from .semantics import (
        SemanticBasis,
        TransferMap,
        condition_report,
        decompose,
        fidelity,
        intersection_bases,
        logit_lens,
        transfer_fidelity,
    )
    from .similarity import cka_heatmap, cka_matrix, cka_permutation_null, cka_wide, residual_labels
    from .tasks import fact_task, load_task, tokenize_pairs
    from .training import AlignConfig, Trainer, align, load_align_config
    from .vocab_alignment import align_vocabularies, aligned_positions, held_out_coverage
    from .zoo.tiny import tiny_pair
