"""A loaded model as lm-evaluation-harness's HF model (`HFLM`), with the package's document start if asked.

Imported only after `harness.require_lm_eval` (lm-eval is an optional extra). Ours: the harness is
EleutherAI's lm-evaluation-harness (Gao et al. 2021-2024, `lm-eval` on PyPI); the class below changes only
which token starts each request.

Why the document start matters: every scorer of this package reads [document start] + text
(`data.document_start`: a declared `document_start`, else BOS, else EOS). The harness encodes a context with
the tokenizer's own special tokens (a Llama tokenizer adds BOS, a GPT-2/SmolLM2 one adds nothing) and puts
BOS (else EOS) only before an empty context. For the embedded student both differ from its training data:
it was pretrained on `<|endoftext|>`-separated files while its BOS is the chat marker `<|im_start|>`.
`DocumentStartLM` makes every request start as the package's do: loglikelihood contexts and generation
prompts get the document start prepended, rolling loglikelihoods use it as their prefix token.
"""

from __future__ import annotations

import torch
from lm_eval.models.huggingface import HFLM


class DocumentStartLM(HFLM):
    """`HFLM` whose requests start with `document_start` (a token id) and never with the tokenizer's own
    special tokens: the token sequences the package's scorers build (`data.prompt_answer_batch`,
    `humaneval.greedy_generate`, `scoring.cross_entropy`)."""

    def __init__(self, *args, document_start: int, **kwargs):
        super().__init__(*args, add_bos_token=False, prefix_token_id=document_start, **kwargs)
        self.document_start = int(document_start)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The harness's split of context and continuation tokens, the context behind the document start (an
        empty context is the harness's own case: it uses `prefix_token_id`, our document start)."""
        context_ids, continuation_ids = super()._encode_pair(context, continuation)
        return [self.document_start, *context_ids], continuation_ids

    def tok_batch_encode(self, strings: list[str], padding_side: str = "left", left_truncate_len: int | None = None,
                         truncation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Generation prompts, padded by the harness (on the left), each with the document start before its first
        real token."""
        keep = None if left_truncate_len is None else left_truncate_len - 1
        ids, mask = super().tok_batch_encode(strings, padding_side, keep, truncation)
        width = ids.shape[1] + 1
        out_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id or 0, dtype=ids.dtype)
        out_mask = torch.zeros((len(ids), width), dtype=mask.dtype)
        for row, (seq, real) in enumerate(zip(ids, mask.bool(), strict=True)):
            tokens = seq[real]
            start = width - len(tokens) - 1 if padding_side == "left" else 0
            out_ids[row, start] = self.document_start
            out_ids[row, start + 1:] = tokens
            out_mask[row, start:] = 1
        return out_ids, out_mask
