"""Tokenised clean/corrupted pairs with teacher-forced answers: what every layer ranker consumes.

Layout of one pair (the `semalign_lens.data.tokens.tokenize` conventions: document-start prefix, right padding):

    clean:      <|endoftext|> clean prompt tokens      answer tokens[:-1]   pad...
    corrupted:  <|endoftext|> corrupted prompt tokens  answer tokens[:-1]   pad...

Both runs are fed the **clean** answer (teacher forcing), so a metric on either run is log p(clean answer |
prompt), and a patched run is compared position by position with both. This needs the two prompts to have
the same number of tokens; `align` decides what happens when they do not:

- `"refuse"` (default): a `SemalignError` naming the pair and both lengths;
- `"left_pad"`: the shorter prompt is preceded by extra document-start tokens (mask False), so that both
  prompts end, and the answers sit, at the same positions. The model does attend to those extra tokens (an
  empty document, as seen in pretraining), so this changes its input slightly; it is opt-in and counted in
  `PairBatch.n_padded`;
- `"drop"`: such pairs are left out and listed in `PairBatch.dropped`.

Answer tokens: lm-eval-harness style, the joint tokenisation of prompt + answer split at the prompt's token
count when the prompt's tokens are a prefix of it, else the answer tokenised on its own (token boundaries
never straddle prompt and answer). An answer with no tokens is an error naming the pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Int

from ...core.checks import require_tokenizer
from ...core.errors import SemalignError
from ..tokens import TokenBatch, document_start, with_document_start
from .schema import PromptPair, Task

ALIGN = ("refuse", "left_pad", "drop")


@dataclass
class PairBatch:
    """Clean and corrupted token batches of equal shape, plus where and what the answer tokens are.

    `answer_pos[b, j]` is the position whose logits predict `answer_tokens[b, j]` (valid where
    `answer_mask`). `diverge_*` give the first answer position where the clean and corrupted answers
    differ and the two competing tokens there (`diverge_valid` False when there is no corrupted answer or
    the answers agree), the basis of the logit difference.
    """

    clean: TokenBatch
    corrupted: TokenBatch
    answer_tokens: Int[torch.Tensor, "batch ans"]
    answer_pos: Int[torch.Tensor, "batch ans"]
    answer_mask: Bool[torch.Tensor, "batch ans"]
    diverge_pos: Int[torch.Tensor, " batch"]
    diverge_clean: Int[torch.Tensor, " batch"]
    diverge_corrupted: Int[torch.Tensor, " batch"]
    diverge_valid: Bool[torch.Tensor, " batch"]
    pairs: list[PromptPair]
    task: str = ""
    align: str = "refuse"
    n_padded: int = 0
    dropped: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    def select(self, index: Sequence[int] | torch.Tensor) -> PairBatch:
        """The pairs at `index`, trimmed to their longest sequence."""
        index = torch.as_tensor(index, dtype=torch.long)
        real = self.clean.mask[index] | self.corrupted.mask[index]
        width = int(real.any(0).nonzero().max()) + 1  # not mask.sum: left_pad puts padding first
        ans = int(self.answer_mask[index].sum(1).max())
        return PairBatch(
            TokenBatch(self.clean.tokens[index, :width], self.clean.mask[index, :width]),
            TokenBatch(self.corrupted.tokens[index, :width], self.corrupted.mask[index, :width]),
            self.answer_tokens[index, :ans], self.answer_pos[index, :ans], self.answer_mask[index, :ans],
            self.diverge_pos[index], self.diverge_clean[index], self.diverge_corrupted[index],
            self.diverge_valid[index], [self.pairs[i] for i in index.tolist()], self.task, self.align,
            self.n_padded, list(self.dropped))

    def split(self, batch_size: int, min_size: int = 1) -> list[PairBatch]:
        """Consecutive sub-batches; a last one smaller than `min_size` is merged into the one before."""
        starts = list(range(0, len(self), batch_size))
        if len(starts) > 1 and len(self) - starts[-1] < min_size:
            starts.pop()
        bounds = starts[1:] + [len(self)]
        return [self.select(range(a, b)) for a, b in zip(starts, bounds, strict=True)]

    def run(self, which: str) -> TokenBatch:
        if which not in ("clean", "corrupted"):
            raise SemalignError(f"run must be 'clean' or 'corrupted', got {which!r}")
        return self.clean if which == "clean" else self.corrupted


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    context = _ids(tokenizer, prompt)
    whole = _ids(tokenizer, prompt + answer)
    if whole[: len(context)] == context:
        return whole[len(context):]
    return _ids(tokenizer, answer)


def _describe(i: int, pair: PromptPair) -> str:
    name = f" {pair.id!r}" if pair.id else ""
    return f"pair #{i}{name} (clean prompt {pair.clean[-60:]!r})"


def tokenize_pairs(tokenizer, task: Task | Sequence[PromptPair], *, align: str = "refuse",
                   max_answer_tokens: int | None = None, prepend_doc_start: bool = True) -> PairBatch:
    """Tokenise a task's pairs into a `PairBatch` (see the module docstring for layout and `align`)."""
    if align not in ALIGN:
        raise SemalignError(f"align must be one of {ALIGN}, got {align!r}")
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # accept a model too
    require_tokenizer(tokenizer)
    name = task.name if isinstance(task, Task) else ""
    pairs = list(task)
    if not pairs:
        raise SemalignError("no prompt pairs to tokenise; give the task at least one pair")
    start = with_document_start([], document_start(tokenizer) if prepend_doc_start else None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (start[0] if start else 0)
    lead_token = start[0] if start else pad
    rows, kept, dropped, n_padded = [], [], [], 0
    for i, pair in enumerate(pairs):
        answer = _answer_ids(tokenizer, pair.clean, pair.answer)[:max_answer_tokens]
        if not answer:
            raise SemalignError(f"{_describe(i, pair)} has an answer {pair.answer!r} with no tokens; every pair "
                                "needs a non-empty continuation to score")
        clean = start + _ids(tokenizer, pair.clean)
        corrupted = start + _ids(tokenizer, pair.corrupted)
        if len(clean) != len(corrupted):
            if align == "refuse":
                raise SemalignError(
                    f"{_describe(i, pair)}: clean prompt has {len(clean)} tokens but corrupted prompt "
                    f"{pair.corrupted[-60:]!r} has {len(corrupted)}; patching compares them position by position. "
                    "Pick a corruption with the same token count (fact_task/humaneval_task do this when given "
                    "tokenizer=), or pass align='left_pad' or align='drop'")
            if align == "drop":
                dropped.append((i, f"prompt lengths {len(clean)} vs {len(corrupted)}"))
                continue
            n_padded += 1
        width = max(len(clean), len(corrupted))
        lead_clean, lead_corr = width - len(clean), width - len(corrupted)
        corr_answer = (_answer_ids(tokenizer, pair.corrupted, pair.corrupted_answer)
                       if pair.corrupted_answer is not None else None)
        rows.append((lead_clean, clean, lead_corr, corrupted, answer, corr_answer))
        kept.append(pair)
    if not rows:
        raise SemalignError(f"every pair was dropped for unequal prompt lengths ({len(dropped)} pairs); "
                            "use align='left_pad' or corruptions with the same token count")
    return _assemble(rows, kept, pad, lead_token, name, align, n_padded, dropped)


def _assemble(rows, kept, pad, lead_token, name, align, n_padded, dropped) -> PairBatch:
    n = len(rows)
    width = max(lead + len(p) + len(a) - 1 for lead, p, _, _, a, _ in rows)
    n_ans = max(len(a) for *_, a, _ in rows)
    tokens = {k: torch.full((n, width), pad, dtype=torch.long) for k in ("clean", "corrupted")}
    masks = {k: torch.zeros((n, width), dtype=torch.bool) for k in ("clean", "corrupted")}
    ans_tok = torch.zeros((n, n_ans), dtype=torch.long)
    ans_pos = torch.zeros((n, n_ans), dtype=torch.long)
    ans_mask = torch.zeros((n, n_ans), dtype=torch.bool)
    div = {k: torch.zeros(n, dtype=torch.long) for k in ("pos", "clean", "corrupted")}
    div_valid = torch.zeros(n, dtype=torch.bool)
    for b, (lead_clean, clean, lead_corr, corrupted, answer, corr_answer) in enumerate(rows):
        for key, lead, prompt in (("clean", lead_clean, clean), ("corrupted", lead_corr, corrupted)):
            seq = prompt + answer[:-1]
            tokens[key][b, :lead] = lead_token
            tokens[key][b, lead: lead + len(seq)] = torch.tensor(seq)
            masks[key][b, lead: lead + len(seq)] = True
        end = lead_clean + len(clean)  # first answer token sits at `end`, predicted from `end - 1`
        ans_tok[b, : len(answer)] = torch.tensor(answer)
        ans_pos[b, : len(answer)] = torch.arange(end - 1, end - 1 + len(answer))
        ans_mask[b, : len(answer)] = True
        if corr_answer:
            j = next((j for j, (x, y) in enumerate(zip(answer, corr_answer, strict=False)) if x != y), None)
            if j is not None:
                div["pos"][b], div["clean"][b], div["corrupted"][b] = end - 1 + j, answer[j], corr_answer[j]
                div_valid[b] = True
    return PairBatch(TokenBatch(tokens["clean"], masks["clean"]), TokenBatch(tokens["corrupted"], masks["corrupted"]),
                     ans_tok, ans_pos, ans_mask, div["pos"], div["clean"], div["corrupted"], div_valid, kept,
                     name, align, n_padded, dropped)
