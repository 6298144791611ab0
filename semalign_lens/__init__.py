"""semalign_lens: look at a teacher and a student, pair their layers, move knowledge through semantic bases.

    import semalign_lens as sl

    pair = sl.ModelPair.load("smollm2-135m", "stdlib-student")      # or sl.tiny_pair(seed=0), offline
    batch = sl.tokenize(pair.tokenizer, ["def add(a, b):\\n    return a + b\\n"])
    teacher = sl.capture(pair.teacher, batch, layers=range(pair.teacher.cfg.n_layers))
    cka = sl.cka_matrix(sl.accumulated_resid(pair.teacher, batch, drop_first=True),
                        sl.accumulated_resid(pair.student, batch, drop_first=True))
    pairing = sl.make_pairing("proportional", pair.teacher.cfg.n_layers, pair.student.cfg.n_layers)
    result = sl.align(sl.AlignConfig(), pair, pairing=pairing)
    sl.draw_run(result)                                               # its figures and report.html
    sl.evaluation.cross_entropy(result.student, ["def mul(a, b):\\n    return a * b\\n"], tokenizer=pair.tokenizer)

The face is lazy (PEP 562): a name's module is imported on first use, so `import semalign_lens` and the CLI's
`semalign zoo list` load no torch. The grouped names follow the notebooks: models and data, looking inside,
layer attribution and pairing, training and comparing. Subpackages and modules for the long tail are
attributes too (`sl.evaluation`, `sl.objectives`, `sl.methods`, `sl.attribution`, ...), and so are the seven floors
(`sl.core`, `sl.data`, `sl.models`, `sl.lens`, `sl.training`, `sl.evaluation`, `sl.reports`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_API = {  # public name -> the module that defines it
    # models and data
    "load_model": "models.load", "save_model": "models.load", "ModelPair": "models.pair", "describe": "models.inspect", "tiny_pair": "models.tiny",
    "tokenize": "data.tokens", "TokenBatch": "data.tokens",
    # looking inside
    "capture": "lens.capture", "Capture": "lens.capture", "accumulated_resid": "lens.capture",
    "residual_norms": "lens.overview", "residual_norm_figure": "lens.overview", "humaneval_prompts": "lens.overview",
    "SemanticBasis": "lens.semantics", "TransferMap": "lens.semantics", "decompose": "lens.semantics", "logit_lens": "models.readout",
    "fidelity": "lens.semantics", "transfer_fidelity": "lens.semantics", "condition_report": "lens.semantics",
    "cka_matrix": "lens.similarity", "cka_permutation_null": "lens.similarity", "cka_heatmap": "reports.plots",
    "cka_wide": "lens.similarity", "residual_labels": "lens.similarity",
    "measure_matrix": "lens.measures", "measure_null": "lens.measures", "compare_measures": "lens.measures",
    "reading": "lens.measures", "measure_heatmaps": "reports.plots", "stitching_map": "evaluation.stitching",
    "sublayer_writes": "lens.capture", "head_similarity": "lens.heads", "head_similarity_heatmaps": "reports.plots",
    # two tokenizers
    "align_vocabularies": "data.vocab", "aligned_positions": "data.vocab",
    "held_out_coverage": "data.vocab", "intersection_bases": "lens.semantics", "aligned_stacks": "lens.aligned",
    # layer attribution and pairing
    "load_task": "data.tasks", "fact_task": "data.tasks", "tokenize_pairs": "data.tasks",
    "rank_layers": "lens.attribution", "rank_agreement": "lens.attribution", "top_layers": "lens.attribution",
    "make_pairing": "lens.pairing", "LayerPairing": "lens.pairing", "LayerPair": "lens.pairing",
    "inspect_pairing": "lens.inspection", "pairing_report": "reports.pairing", "Report": "reports.page",
    # training and comparing
    "AlignConfig": "training", "load_align_config": "training", "align": "training", "Trainer": "training",
    "draw_run": "reports.run", "loss_figure": "reports.run", "cka_figure": "reports.run", "run_figures": "reports.run",
    "run_method": "training.methods", "RunProfile": "evaluation.protocol", "build_task": "evaluation.protocol", "shared_config": "evaluation.protocol",
    "SemalignError": "core.errors",
}
_MODULES = {  # module on the face -> where it lives: the seven floors, and the rooms notebooks reach for
    **{floor: floor for floor in ("core", "data", "models", "lens", "training", "evaluation", "reports")},
    "attribution": "lens.attribution", "pairing": "lens.pairing", "semantics": "lens.semantics",
    "similarity": "lens.similarity", "measures": "lens.measures", "tasks": "data.tasks", "zoo": "models.zoo", "objectives": "training.objectives",
    "methods": "training.methods", "plots": "reports.plots", "protocol": "evaluation.protocol",
}
__all__ = sorted([*_API, *_MODULES, "__version__"])


def __getattr__(name: str):
    if name == "__version__":  # the installed distribution's, so it cannot drift from pyproject.toml
        from importlib.metadata import version

        return version("semalign-lens")
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'semalign_lens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # the same names, statically, for editors and type checkers
    from . import core, data, evaluation, lens, models, reports, training
    from .core.errors import SemalignError
    from .data import tasks
    from .data.tasks import fact_task, load_task, tokenize_pairs
    from .data.tokens import TokenBatch, tokenize
    from .data.vocab import align_vocabularies, aligned_positions, held_out_coverage
    from .evaluation import protocol
    from .evaluation.protocol import RunProfile, build_task, shared_config
    from .evaluation.stitching import stitching_map
    from .lens import attribution, measures, pairing, semantics, similarity
    from .lens.aligned import aligned_stacks
    from .lens.attribution import rank_agreement, rank_layers, top_layers
    from .lens.capture import Capture, accumulated_resid, capture, sublayer_writes
    from .lens.heads import head_similarity
    from .lens.inspection import inspect_pairing
    from .lens.measures import compare_measures, measure_matrix, measure_null, reading
    from .lens.overview import humaneval_prompts, residual_norm_figure, residual_norms
    from .lens.pairing import LayerPair, LayerPairing, make_pairing
    from .lens.semantics import (
        SemanticBasis,
        TransferMap,
        condition_report,
        decompose,
        fidelity,
        intersection_bases,
        transfer_fidelity,
    )
    from .lens.similarity import cka_matrix, cka_permutation_null, cka_wide, residual_labels
    from .models import zoo
    from .models.inspect import describe
    from .models.load import load_model, save_model
    from .models.pair import ModelPair
    from .models.readout import logit_lens
    from .models.tiny import tiny_pair
    from .reports import plots
    from .reports.page import Report
    from .reports.pairing import pairing_report
    from .reports.plots import cka_heatmap, head_similarity_heatmaps, measure_heatmaps
    from .reports.run import cka_figure, draw_run, loss_figure, run_figures
    from .training import AlignConfig, Trainer, align, load_align_config, methods, objectives
    from .training.methods import run_method
