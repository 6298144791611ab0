"""Named evaluation sets for the teacher-vs-student table (`EVAL_SETS`), each capped at `max_tokens` by
evenly spaced blocks, so the numbers are deterministic and cheap on two cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool
from tqdm.auto import tqdm

from ..core.errors import SemalignError
from ..data import corpus
from ..data.text_bytes import bits_per_byte, scored_bytes
from ..data.tokens import TokenBatch, as_batch, evenly_spaced, require_document_start, tokenize
from ..models.likelihood import token_nll
from .humaneval import humaneval_subset
from .scoring import model_tokenizer

EVAL_SETS: dict[str, str] = {
    "stdlib_val": "held-out standard-library files (validation split of the student's corpus)",
    "stdlib_test": "held-out slice of the standard library's test files (never in any training or transfer data)",
    "humaneval": "HumanEval prompt + canonical solution (all tokens)",
    "pydoc": "pydoc prose (pydoc_data.topics; in the student's training data)",
}


@dataclass
class EvalSet:
    """A named, tokenised evaluation set; `score_mask` (when set) selects the scored target tokens."""

    name: str
    description: str
    batch: TokenBatch
    score_mask: Bool[torch.Tensor, "seq pos"] | None = None
    texts: list[str] = field(default_factory=list)  # source documents, for overlap checks
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        mask = self.batch.mask if self.score_mask is None else self.score_mask & self.batch.mask
        return int(mask[:, 1:].sum())


def _blocks_set(name: str, texts: list[str], tokenizer, max_tokens: int, max_len: int, meta: dict) -> EvalSet:
    stream = corpus.text_stream(texts, tokenizer, require_document_start(tokenizer, f"the documents of {name}"))
    blocks = corpus.blocks(stream, max_len)
    keep = evenly_spaced(len(blocks), max(1, max_tokens // max_len))
    batch = as_batch(blocks[keep], tokenizer)
    meta = dict(meta, blocks=len(keep), of_blocks=len(blocks), block_len=max_len)
    return EvalSet(name, EVAL_SETS[name], batch, texts=texts, meta=meta)


def pydoc_texts() -> list[str]:
    """The pydoc topic texts (prose), sorted by topic name."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def eval_set(name: str, tokenizer, max_tokens: int = 16384, max_len: int = 512) -> EvalSet:
    """Build the named evaluation set (see `EVAL_SETS`), capped at about `max_tokens` tokens, deterministic."""
    tokenizer = getattr(tokenizer, "tokenizer", None) or tokenizer
    if name not in EVAL_SETS:
        raise SemalignError(f"unknown evaluation set {name!r}; valid: {', '.join(EVAL_SETS)}")
    root = corpus.stdlib_root()
    if name == "stdlib_val":
        files = corpus.stdlib_files(root)
        _, val = corpus.split_files(files, root)
        return _blocks_set(name, [corpus.read_text(p) for p in val], tokenizer, max_tokens, max_len,
                           {"files": [p.relative_to(root).as_posix() for p in val]})
    if name == "stdlib_test":
        _, evaluation = corpus.stdlib_test_split(root)
        return _blocks_set(name, [corpus.read_text(p) for p in evaluation], tokenizer, max_tokens, max_len,
                           {"files": len(evaluation), "fraction": corpus.STDLIB_TEST_EVAL_FRACTION})
    if name == "pydoc":
        return _blocks_set(name, pydoc_texts(), tokenizer, max_tokens, max_len, {"topics": len(pydoc_texts())})
    problems = humaneval_subset(max_tokens, tokenizer)
    texts = [p["prompt"] + p["canonical_solution"] for p in problems]
    batch = tokenize(tokenizer, texts, max_len=None)
    return EvalSet(name, EVAL_SETS[name], batch, texts=texts,
                   meta={"problems": len(problems), "task_ids": [p["task_id"] for p in problems]})


def eval_sets(tokenizer, names: Sequence[str] = tuple(EVAL_SETS), max_tokens: int = 16384,
              max_len: int = 512) -> dict[str, EvalSet]:
    return {n: eval_set(n, tokenizer, max_tokens=max_tokens, max_len=max_len) for n in names}


def compare_cross_entropy(teacher, student, names: Sequence[str] = tuple(EVAL_SETS), *, tokenizer=None,
                          max_tokens: int = 16384, max_len: int = 512, batch_size: int = 4, precision: str = "auto",
                          progress: bool = True):
    """Side-by-side teacher vs student cross-entropy (nats/token) on the named sets, as a DataFrame.

    Columns: set, description, tokens, bytes, teacher_ce, student_ce, gap (student - teacher), in nats/token,
    and teacher_bpb, student_bpb in bits per byte (`text_bytes`: comparable across tokenizers). Deterministic for a
    given tokenizer and Python (file splits are hash-based; blocks are evenly spaced). Cost is dominated by
    the teacher: SmolLM2-135M runs at about 60-70 tokens per CPU-second in fp32 on this project's 2-core
    machine, so 4 sets x 16k tokens is about 8 minutes of two idle cores; lower `max_tokens` for a quick look.
    """
    import pandas as pd

    tok = model_tokenizer(teacher, tokenizer)
    rows = []
    for name in tqdm(list(names), desc="eval sets", disable=not progress):
        es = eval_set(name, tok, max_tokens=max_tokens, max_len=max_len)
        n_bytes = scored_bytes(tok, es.batch, es.score_mask)
        nll = {role: token_nll(m, es.batch, es.score_mask, batch_size=batch_size, precision=precision,
                               progress=progress)[0]
               for role, m in (("teacher", teacher), ("student", student))}
        ce = {role: v / es.n_tokens for role, v in nll.items()}
        rows.append({"set": name, "description": es.description, "tokens": es.n_tokens, "bytes": n_bytes,
                     "teacher_ce": ce["teacher"], "student_ce": ce["student"], "gap": ce["student"] - ce["teacher"],
                     "teacher_bpb": bits_per_byte(nll["teacher"], n_bytes),
                     "student_bpb": bits_per_byte(nll["student"], n_bytes)})
    return pd.DataFrame(rows)
