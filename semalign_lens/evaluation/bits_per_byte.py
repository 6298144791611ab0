"""One table of bits per byte for models with different tokenizers, on the very same texts.

`compare_cross_entropy` scores teacher and student on one tokenisation; a cross-tokenizer student cannot
read it. Here every evaluation set is first cut into texts (the evaluation blocks of the first model's
tokenizer, spelled back to text and split at special tokens; HumanEval's prompt + solution as they are),
then each model tokenises each text itself, after its own document-start token, and scores every text
token. Dividing each model's summed NLL by the texts' UTF-8 bytes gives bits per byte on identical bytes, so
a teacher, a same-vocabulary student and a cross-tokenizer student sit in one table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from ..core.errors import SemalignError
from ..data.text_bytes import bits_per_byte, token_bytes
from ..data.tokens import tokenize
from ..models.likelihood import token_nll
from .eval_sets import EVAL_SETS, eval_set


def block_texts(tokens, tokenizer) -> list[str]:
    """The texts a batch of token blocks spells, split at special tokens; partial characters at a block's
    edges are dropped (both sides then score the same complete characters)."""
    pieces = token_bytes(tokenizer)
    out = []
    for row in tokens.tolist():
        part: list[bytes] = []
        for i in [*row, None]:
            b = pieces[i] if i is not None else None
            if b is None:
                text = b"".join(part).decode("utf-8", errors="ignore")
                if text:
                    out.append(text)
                part = []
            else:
                part.append(b)
    return out


def set_texts(name: str, tokenizer, max_tokens: int = 16384, max_len: int = 512) -> list[str]:
    """The texts of evaluation set `name` (see the module docstring), fixed by `tokenizer`'s blocks."""
    es = eval_set(name, tokenizer, max_tokens=max_tokens, max_len=max_len)
    return list(es.texts) if name == "humaneval" else block_texts(es.batch.tokens[es.batch.mask.all(1)], tokenizer)


def bits_per_byte_table(models: Mapping[str, object], names: Sequence[str] = tuple(EVAL_SETS), *,
                        max_tokens: int = 16384, max_len: int = 512, batch_size: int = 4, precision: str = "auto",
                        progress: bool = True):
    """DataFrame with one row per set: set, bytes, and `<model>_bpb`, `<model>_tokens` for every model."""
    import pandas as pd

    if not models:
        raise SemalignError("bits_per_byte_table needs at least one model, as {name: model}")
    first = next(iter(models.values())).tokenizer
    rows = []
    for name in tqdm(list(names), desc="bits per byte", disable=not progress):
        texts = set_texts(name, first, max_tokens, max_len)
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        row = {"set": name, "description": EVAL_SETS[name], "texts": len(texts), "bytes": n_bytes}
        for label, model in models.items():
            batch = tokenize(model.tokenizer, texts)  # each model's own document-start token, then the text
            nll, count = token_nll(model, batch, batch_size=batch_size, precision=precision, progress=progress)
            row[f"{label}_tokens"] = count
            row[f"{label}_bpb"] = bits_per_byte(nll, n_bytes)
        rows.append(row)
    return pd.DataFrame(rows)
