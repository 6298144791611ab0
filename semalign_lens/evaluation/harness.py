"""Benchmark scores from lm-evaluation-harness: any of its tasks, for one model or a teacher and a student
side by side, with the harness's own metric names and standard errors.

The harness is EleutherAI's lm-evaluation-harness (`lm-eval` on PyPI, an optional extra of this package:
`pip install 'semalign-lens[eval]'`); the wrapping is ours. Each model runs as the harness's `HFLM` holding an
already loaded HF model: the plain copy that shares a bridge's weights (`models.likelihood.plain_model`), so every
source `load_model` takes (zoo name, directory, GGUF, Hub name, a bridge in Python) and a trained student
(`<run>/student`, or the `semalign align` run directory itself) is scored by the harness's own code.

`document_start="package"` (the default) starts every request with the package's document start
(`harness_lm.DocumentStartLM`), so the harness's loglikelihoods are the package's answer scores
(`knowledge.answer_scores` on `data.prompt_answer_batch`) on the same items, and the numbers of a teacher and
its student are comparable with every other number this package reports; `"harness"` keeps the harness's own
convention, the numbers `lm_eval --model hf --model_args pretrained=DIR` prints (for a Llama tokenizer, which
adds its BOS and whose BOS is its document start, the two agree). What still differs from the package's
scorers: the harness splits context from continuation by tokenising the context alone (after moving its
trailing spaces to the continuation) where `prompt_answer_batch` splits one tokenisation by character offsets
(the same tokens whenever the boundary falls between tokens); the harness runs the weights in their dtype
(no autocast) and takes its softmax over every head row (the package over the tokenizer's rows: the same
unless the head is padded, `models.vocab_rows`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.checks import check_output_file, is_hf_model, require_choices, require_int
from ..core.errors import SemalignError
from ..data import tokens as data
from ..models.likelihood import plain_model
from .scoring import model_tokenizer

EXTRA = "eval"
INSTALL = "pip install 'semalign-lens[eval]' (or pip install 'lm-eval>=0.4')"
DOCUMENT_STARTS = ("package", "harness")
FORMAT = "semalign_lens.HarnessResults"


def require_lm_eval():
    """The `lm_eval` module, or one line naming the extra to install."""
    try:
        import lm_eval
    except ImportError:
        raise SemalignError(f"benchmark evaluation needs lm-evaluation-harness, which is not installed; install "
                            f"the {EXTRA!r} extra: {INSTALL}") from None
    return lm_eval


def eval_source(source: Any) -> Any:
    """`source` as `load_model` takes it, a `semalign align` run directory read as its trained student."""
    from ..models.load import run_dir_kind

    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir() and run_dir_kind(path) == "align" and (path / "student" / "config.json").is_file():
            return path / "student"
    return source


def harness_model(model, *, tokenizer=None, document_start: str = "package", batch_size: int | str = 8,
                  max_length: int | None = None):
    """`model` (a bridge, or an HF model with `tokenizer=`) as lm-eval's `HFLM` over its plain HF copy."""
    require_lm_eval()
    require_choices("document_start", [document_start], DOCUMENT_STARTS)
    if batch_size != "auto":
        require_int("batch_size", batch_size)
    tok = model_tokenizer(model, tokenizer)
    hf = plain_model(model)
    if not is_hf_model(hf):
        from ..models.load import model_name

        raise SemalignError(f"{model_name(model)} has no plain Hugging Face form, which lm-eval's HF model needs (a "
                            "TransformerLens-native or compatibility-mode bridge, or a family whose plain copy "
                            "transformers cannot rebuild); evaluate a raw-mode bridge of a transformers family")
    start = data.document_start(tok) if document_start == "package" else None
    if document_start == "harness":
        tok = saved_tokenizer(tok)
    from lm_eval.models.huggingface import HFLM

    from .harness_lm import DocumentStartLM

    with _quiet("lm_eval.models.huggingface"):  # its warning that `pretrained` is a model, not a name: by design
        if start is None:  # the harness's own convention (asked for, or a tokenizer with no document start)
            return HFLM(pretrained=hf, tokenizer=tok, batch_size=batch_size, max_length=max_length)
        return DocumentStartLM(pretrained=hf, tokenizer=tok, batch_size=batch_size, max_length=max_length,
                               document_start=start)


def saved_tokenizer(tokenizer):
    """`tokenizer` as its files define it, reloaded from its directory: TransformerLens loads a bridge's tokenizer
    with `add_bos_token=True` (`get_tokenizer_with_bos`), which the harness's own convention must not see (it
    lets the tokenizer decide whether a BOS comes first). One held only in memory is returned as it is."""
    path = getattr(tokenizer, "name_or_path", None)
    if not path or not Path(path).is_dir():
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@contextmanager
def _quiet(logger: str):
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def task_manager(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                 builtin_tasks: bool = True):
    """lm-eval's `TaskManager` over its built-in tasks and the YAML tasks under `include_path`.

    `builtin_tasks=False` indexes only `include_path`: the harness reads its ~15k built-in task configs when it
    starts (about 20 s on a 2-core CPU), which a run of local tasks does not need."""
    require_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [] if include_path is None else [include_path] if isinstance(include_path, (str, os.PathLike)) \
        else list(include_path)
    missing = [str(p) for p in paths if not Path(p).expanduser().is_dir()]
    if missing:
        raise SemalignError(f"task include path {missing[0]} is not a directory; point --include-path at the folder "
                            "that holds your lm-eval task YAML files")
    if not builtin_tasks and not paths:
        raise SemalignError("only local tasks were asked for, but no include path was given; pass --include-path DIR "
                            "(the folder of your task YAML files), or drop --local-tasks-only")
    return TaskManager(include_path=[str(Path(p).expanduser()) for p in paths] or None,
                       include_defaults=builtin_tasks)


def check_tasks(manager, tasks: Sequence[str]) -> list[str]:
    """`tasks` (comma-separated entries allowed) as a list, each one the harness knows."""
    names = [t.strip() for entry in tasks for t in str(entry).split(",") if t.strip()]
    if not names:
        raise SemalignError("no task given; name lm-eval tasks, e.g. --tasks mmlu gsm8k (`lm-eval ls tasks` lists them)")
    unknown = [t for t in names if not manager.match_tasks([t])]
    if unknown:
        where = ("" if manager.include_path is None else f" or under {', '.join(map(str, manager.include_path))}")
        raise SemalignError(f"lm-eval knows no task {unknown[0]!r} among its tasks{where}; `lm-eval ls tasks` lists "
                            "the built-in ones, and a YAML task of your own needs --include-path DIR")
    return names


@dataclass
class HarnessResults:
    """What `simple_evaluate` returned for each model (by name, in the order given), and how it was run."""

    runs: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.runs)

    def table(self):
        """One row per (task, filter, n-shot, metric) as the harness names them; per model its value and
        standard error (`<name> ±`; NaN where the harness gives none)."""
        import pandas as pd

        rows: dict[tuple, dict[str, Any]] = {}
        for name, run in self.runs.items():
            for task, metrics in run["results"].items():
                shots = run.get("n-shot", {}).get(task, "")
                for key, value in metrics.items():
                    metric, _, filt = key.partition(",")
                    if not filt or metric.endswith("_stderr"):
                        continue
                    stderr = metrics.get(f"{metric}_stderr,{filt}")
                    row = rows.setdefault((task, filt, shots, metric), {})
                    row[name] = value
                    row[f"{name} ±"] = stderr if isinstance(stderr, (int, float)) else float("nan")
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index = pd.MultiIndex.from_tuples(list(rows), names=["task", "filter", "n-shot", "metric"])
        return frame[[c for name in self.runs for c in (name, f"{name} ±")]]

    def to_text(self) -> str:
        """The table as printed: per model one column, each value to 4 decimals with its standard error."""
        table = self.table()
        shown = table.index.to_frame(index=False)
        for name in self.runs:
            shown[name] = [f"{_number(v)} {_number(e, '± ')}".strip()
                           for v, e in zip(table[name], table[f"{name} ±"], strict=True)]
        return shown.to_string(index=False)

    def to_dict(self) -> dict[str, Any]:
        keep = ("results", "groups", "group_subtasks", "n-shot", "higher_is_better", "n-samples", "versions",
                "configs", "config", "lm_eval_version", "samples")
        return {"format": FORMAT, "settings": self.settings,
                "models": {name: {"source": str(self.sources.get(name, name)),
                                  **{k: run[k] for k in keep if k in run}} for name, run in self.runs.items()},
                "table": [{**dict(zip(("task", "filter", "n-shot", "metric"), key, strict=True)), **row}
                          for key, row in self.table().to_dict(orient="index").items()]}

    def save(self, path: str | os.PathLike) -> Path:
        """Write `to_dict` as JSON (what the harness could not serialise, e.g. a task's Python function, as text)."""
        from ..training.checkpoint import write_json_atomic

        path = check_output_file(path, "results file", (".json",))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, self.to_dict())
        return path


def _number(value, prefix: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "" if value is None else f"{prefix}{value}"
    return "" if value != value else f"{prefix}{value:.4f}"


def harness_eval(models, tasks: Sequence[str], *, include_path=None, builtin_tasks: bool = True,
                 limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int | str = 8,
                 document_start: str = "package", log_samples: bool = False, confirm_run_unsafe_code: bool = False,
                 gen_kwargs: str | dict | None = None, device=None, dtype=None) -> HarnessResults:
    """Run lm-eval `tasks` on one model or several, each as `harness_model`, one after the other.

    models: a model or a source `load_model` takes (a zoo name, a directory, a trained run), a sequence of them,
        or a mapping name -> model/source (the table's column names; otherwise `models.model_name` or the
        source). Sources are checked before anything loads, then loaded one at a time (`device`, `dtype`) and
        let go after their run, so a teacher and its student never need memory together.
    tasks: lm-eval task or group names (comma-separated entries allowed); `include_path`: folder(s) of YAML
        tasks of your own; `builtin_tasks=False`: only those (`task_manager`).
    limit: items per task (a fraction when < 1), for a quick look; `log_samples` keeps each item's requests
        and responses (`runs[name]["samples"]`); `confirm_run_unsafe_code`: tasks that execute generated code
        (humaneval, mbpp; the harness also wants HF_ALLOW_CODE_EVAL=1).
    """
    lm_eval = require_lm_eval()
    from ..models.load import inspect_source, load_model, model_name

    if not isinstance(models, Mapping):
        given = list(models) if isinstance(models, Sequence) and not isinstance(models, str) else [models]
        models = {}
        for m in given:
            name = str(m) if isinstance(m, (str, os.PathLike)) else model_name(m)
            models[name if name not in models else f"{name} ({len(models) + 1})"] = m
    if not models:
        raise SemalignError("no model to evaluate; pass a model or a source (zoo name, directory, trained run)")
    sources = {name: eval_source(m) for name, m in models.items()}
    for source in sources.values():
        inspect_source(source)  # every source checked before the first one loads
    manager = task_manager(include_path, builtin_tasks)
    names = check_tasks(manager, tasks)
    if limit is not None and not (isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0):
        raise SemalignError(f"limit must be a positive number of items per task (or a fraction < 1), got {limit!r}")
    settings = {"tasks": names, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
                "document_start": document_start, "include_path": None if include_path is None else str(include_path),
                "lm_eval_version": getattr(lm_eval, "__version__", "unknown")}
    runs = {}
    for name, source in sources.items():
        model = load_model(source, device=device, dtype=dtype) if isinstance(source, (str, os.PathLike)) else source
        lm = harness_model(model, document_start=document_start, batch_size=batch_size)
        try:
            runs[name] = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                                 num_fewshot=num_fewshot, log_samples=log_samples,
                                                 confirm_run_unsafe_code=confirm_run_unsafe_code,
                                                 gen_kwargs=gen_kwargs)
        except ConnectionError as err:  # datasets / huggingface_hub: the Hub is offline or unreachable
            raise SemalignError(f"lm-eval could not fetch the data of {', '.join(names)} ({str(err).splitlines()[0]}); "
                                "the harness's built-in tasks download their data from the Hugging Face Hub: run "
                                "where it is reachable (HF_HUB_OFFLINE and HF_DATASETS_OFFLINE unset), or evaluate "
                                "tasks over local files (--include-path DIR)") from None
        del model, lm
    return HarnessResults(runs, settings, {name: s if isinstance(s, (str, os.PathLike)) else model_name(s)
                                           for name, s in sources.items()})
