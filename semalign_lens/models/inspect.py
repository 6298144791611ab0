"""What `semalign info` says of one model: its card (`describe`), and whether the trainer and the tokenizer rules
can use it (`trainer_problem`, `tokenizer_problem`), each problem as one line that names the fix."""

from __future__ import annotations

from typing import Any

from ..core.checks import require_hooked
from ..core.errors import SemalignError
from .load import head_rows, model_mode, model_name


def _mlp_width(model) -> int | None:
    """The MLP's hidden width as the HF config states it (the bridge's `cfg.d_mlp` falls back to 4 x d_model
    for families whose config names it otherwise, e.g. OPT's `ffn_dim`)."""
    config = getattr(getattr(model, "original_model", None), "config", None)
    config = getattr(config, "text_config", None) or config
    for key in ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    if getattr(config, "model_type", None) == "gpt2":  # n_inner None means 4 x n_embd
        return 4 * config.n_embd
    return None if getattr(model.cfg, "attn_only", False) else getattr(model.cfg, "d_mlp", None)


def describe(model) -> dict[str, Any]:
    """One row of facts about a model (what `semalign info` prints)."""
    require_hooked(model)
    cfg = model.cfg
    return {
        "model": model_name(model),
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "heads": cfg.n_heads,
        "kv_heads": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
        "d_mlp": _mlp_width(model),
        "vocab": cfg.d_vocab,
        "tokenizer_len": len(model.tokenizer) if model.tokenizer is not None else None,
        "norm": getattr(cfg, "normalization_type", None),
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "mode": model_mode(model),
    }


def trainer_problem(model, name: str, trained: bool = True) -> str | None:
    """Why the trainer cannot take `model`, else None: it trains a plain copy of the model behind the bridge
    (`hf.clean_copy`), so it needs the family's block paths (`architectures`), a copy that computes the
    bridge's logits (built here on shared weights and probed on 8 tokens) and, when `trained` (the student),
    blocks that own their weights. Evaluation needs none of it (it runs the bridge itself where there is no
    exact copy)."""
    from .architectures import architecture, shared_weights_problem
    from .plain import clean_copy

    try:
        copy = clean_copy(model, share_weights=True)  # the copy's tensors are the model's, under plain names
        architecture(copy)
        problem = shared_weights_problem(copy) if trained else None
    except SemalignError as err:
        problem = str(err)
    return None if problem is None else f"{name}: {problem}" if name not in problem else problem


def _config_ids(config, key: str) -> list[int]:
    value = getattr(config, key, None)
    return [] if value is None else [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]


def tokenizer_problem(model, name: str) -> str | None:
    """None when `model`'s tokenizer and config agree on the tokens every stage relies on, else the one-line
    reason with the fix: a config special-token id outside the vocabulary; a document start that its config
    contradicts (the tokenizer's BOS or EOS, where no `document_start` is declared); no document start at all
    (nothing separates packed documents). `data.tokens.document_start` is the one rule these checks follow."""
    from ..data.tokens import DOCUMENT_START_KEY, document_start
    from .plain import underlying_hf

    tokenizer = model.tokenizer
    config = getattr(underlying_hf(model), "config", None)
    rows = head_rows(model)  # the embedding's rows: an id at or past them indexes nothing
    fix = (f"declare the separator instead: data.document_start = '<token>' in the align config, or "
           f'"{DOCUMENT_START_KEY}": "<token>" in its tokenizer_config.json')
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        bad = next((i for i in _config_ids(config, key) if not 0 <= i < rows), None)
        if bad is not None:
            return (f"{name}'s config.json sets {key} = {bad}, outside its vocabulary of {rows} tokens; set {key} "
                    f"in config.json to a token id below {rows} (its tokenizer's is "
                    f"{getattr(tokenizer, key, None)}) or remove it")
    try:
        start = document_start(tokenizer)
    except SemalignError as err:
        return f"{name}: {err}"
    if start is None:
        return (f"{name}'s tokenizer has no BOS and no EOS token, so nothing separates documents; {fix}")
    if start >= rows:  # a token added to the tokenizer after the model was built: the embedding has no row for it
        return (f"{name}'s document start {tokenizer.convert_ids_to_tokens(start)!r} has id {start}, outside its "
                f"vocabulary of {rows} rows; {fix}")
    if not (getattr(tokenizer, "init_kwargs", None) or {}).get(DOCUMENT_START_KEY):
        key, role = ("bos_token_id", "BOS") if start == tokenizer.bos_token_id else ("eos_token_id", "EOS")
        ids = _config_ids(config, key)
        if ids and start not in ids:
            token = tokenizer.convert_ids_to_tokens(start)
            return (f"{name}'s tokenizer has {role} {token!r} (id {start}) but its config.json says {key} = "
                    f"{ids[0] if len(ids) == 1 else ids}; make them agree (fix {key} in config.json or the "
                    f"tokenizer's {role.lower()}_token), or {fix}")
    return None
