"""Tiny random teacher/student pairs for tests and the notebooks' fast mode. Nothing is downloaded.

One byte-level BPE tokenizer is trained with `tokenizers` on a few hundred lines of the standard library
(fast and deterministic), and two Llama models are built from configs: the teacher deeper and wider than the
student, as in SemAlign. `tiny_hf_pair` returns the raw HF models (the independent reference in tests);
`tiny_pair` returns them booted as TransformerBridge models in a `ModelPair`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.paths import cache_dir

TINY_VOCAB = 384


@dataclass(frozen=True)
class TinyArch:
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_mlp: int


TINY_TEACHER = TinyArch(n_layers=6, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
TINY_STUDENT = TinyArch(n_layers=3, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=64)
# the pair of the architecture and tokenizer-convention matrices (tests/test_architectures.py and
# tests/test_tokenizer_conventions.py): smaller still, since those run every stage on every family or convention
MATRIX_TEACHER = TinyArch(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
MATRIX_STUDENT = TinyArch(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=64)


# The modules whose source trains a tiny tokenizer: the shared one, and the other tokenizer of the tiny
# cross-tokenizer pair (other text, other size: other merges, other ids, other token boundaries).
TOKENIZER_TEXTS = {"default": ("collections", "json", "textwrap"), "other": ("string", "pprint", "heapq")}
TINY_OTHER_VOCAB = 320


def _training_text(text: str = "default") -> list[str]:
    import importlib

    sources = [inspect.getsource(importlib.import_module(m)) for m in TOKENIZER_TEXTS[text]]
    return [line for src in sources for line in src.splitlines() if line.strip()]


def tiny_tokenizer_dir(vocab_size: int = TINY_VOCAB, text: str = "default") -> Path:
    """A directory holding a tiny byte-level BPE tokenizer (trained once, then cached) on `TOKENIZER_TEXTS`.

    `<|endoftext|>` (id 0) is BOS/EOS/PAD, like SmolLM2's document separator. It lives on disk because
    TransformerBridge re-opens tokenizers by `name_or_path`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder = cache_dir("tiny", f"tokenizer-v1-{vocab_size}" + ("" if text == "default" else f"-{text}"))
    if (folder / "tokenizer.json").exists():
        return folder
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_training_text(text), trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            pad_token="<|endoftext|>", unk_token="<|endoftext|>").save_pretrained(str(folder))
    return folder


@dataclass(frozen=True)
class TokenizerConvention:
    """How a family's real tokenizer marks documents: its special tokens (in id order; `at_end`: after the
    learned pieces, as Llama-3, GPT-2 and Qwen number them), which are BOS/EOS/PAD/UNK, whether its
    post-processor adds BOS, and its kind: byte-level BPE, or SentencePiece-style BPE (metaspace `▁`,
    `<0xNN>` byte fallback; `prefix_space`: a `▁` before the first word, as Llama-2 adds and Gemma does not)."""

    specials: tuple[str, ...]
    bos: str | None
    eos: str | None
    pad: str | None = None
    unk: str | None = None
    adds_bos: bool = False
    sentencepiece: bool = False
    prefix_space: bool = True
    at_end: bool = False


TOKENIZER_CONVENTIONS = {
    "llama3": TokenizerConvention(("<|begin_of_text|>", "<|end_of_text|>"), "<|begin_of_text|>", "<|end_of_text|>",
                                  adds_bos=True, at_end=True),
    "llama2": TokenizerConvention(("<unk>", "<s>", "</s>"), "<s>", "</s>", unk="<unk>", adds_bos=True,
                                  sentencepiece=True),
    "gemma": TokenizerConvention(("<pad>", "<eos>", "<bos>", "<unk>"), "<bos>", "<eos>", pad="<pad>", unk="<unk>",
                                 adds_bos=True, sentencepiece=True, prefix_space=False),
    "opt": TokenizerConvention(("<s>", "<pad>", "</s>", "<unk>"), "</s>", "</s>", pad="<pad>", unk="<unk>",
                               adds_bos=True),
    "chatml": TokenizerConvention(("<|endoftext|>", "<|im_start|>", "<|im_end|>"), None, "<|im_end|>",
                                  pad="<|endoftext|>", at_end=True),
    "gpt2": TokenizerConvention(("<|endoftext|>",), "<|endoftext|>", "<|endoftext|>", at_end=True),
}


def convention_tokenizer_dir(convention: str, vocab_size: int = TINY_VOCAB) -> Path:
    """A tiny tokenizer built the way `convention`'s family builds its real one (`TOKENIZER_CONVENTIONS`), trained
    once with `tokenizers` on `TOKENIZER_TEXTS["default"]` and cached: so that tests meet the special tokens,
    BOS behaviour and pieces of the families users bring, not only SmolLM2's."""
    import json

    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    conv = TOKENIZER_CONVENTIONS[convention]
    folder = cache_dir("tiny", f"tokenizer-{convention}-v1-{vocab_size}")
    if (folder / "tokenizer.json").exists():
        return folder
    first = () if conv.at_end else conv.specials
    if conv.sentencepiece:  # learn pieces on ▁-words, then lay out the vocabulary as SentencePiece does
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first" if conv.prefix_space else "never")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(first) - 256, show_progress=False)
        tok.train_from_iterator(_training_text(), trainer=trainer)
        learned = json.loads(tok.to_str())["model"]
        pieces = [*first, *(f"<0x{b:02X}>" for b in range(256)),
                  *sorted(learned["vocab"], key=learned["vocab"].get)]
        tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[tuple(m) if isinstance(m, list)
                                   else tuple(m.split(" ")) for m in learned["merges"]], unk_token=conv.unk,
                                   byte_fallback=True, fuse_unk=True))
        steps = [normalizers.Prepend("▁")] if conv.prefix_space else []
        tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         *([decoders.Strip(" ", 1, 0)] if conv.prefix_space else [])])
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(conv.specials) * conv.at_end, special_tokens=list(first),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_training_text(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in conv.specials])
    if conv.adds_bos:
        bos = (conv.bos, tok.token_to_id(conv.bos))
        tok.post_processor = processors.TemplateProcessing(single=f"{conv.bos} $A", pair=f"{conv.bos} $A {conv.bos} $B",
                                                           special_tokens=[bos])
    roles = {k: v for k, v in (("bos_token", conv.bos), ("eos_token", conv.eos), ("pad_token", conv.pad),
                               ("unk_token", conv.unk)) if v is not None}
    PreTrainedTokenizerFast(tokenizer_object=tok, **roles).save_pretrained(str(folder))
    return folder


# The tokenizer convention of each family's real tokenizer (`TOKENIZER_CONVENTIONS`; the rest: GPT-2's), so the
# architecture matrix meets each family's special tokens and BOS behaviour, not one shared tiny tokenizer's.
FAMILY_CONVENTIONS = {
    **dict.fromkeys(("llama", "mistral", "mixtral"), "llama2"),
    **dict.fromkeys(("gemma", "gemma2", "gemma3_text", "gemma4_text", "recurrent_gemma"), "gemma"),
    "opt": "opt",
    **dict.fromkeys(("qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_5_text"), "chatml"),
    **dict.fromkeys(("llama4_text", "smollm3", "olmo3"), "llama3"),
}


@functools.lru_cache(maxsize=8)
def family_tokenizer(family: str):
    """The tiny tokenizer of `family`'s convention (`FAMILY_CONVENTIONS`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(convention_tokenizer_dir(FAMILY_CONVENTIONS.get(family, "gpt2"))))


def special_ids(tokenizer) -> dict[str, int | None]:
    """The config keys of a tokenizer's BOS/EOS/PAD ids, as its family's config.json sets them."""
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def write_convention_pair(out: str | Path, convention: str, teacher: TinyArch = MATRIX_TEACHER,
                          student: TinyArch = MATRIX_STUDENT, ids: dict[str, int | None] | None = None
                          ) -> tuple[Path, Path]:
    """`out/teacher` and `out/student`: random Llama directories saved as a user saves a model they bring
    (`save_pretrained` of model and tokenizer), sharing `convention`'s tokenizer, their configs' special-token
    ids its own (`ids` overrides some, to build a broken config)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(convention_tokenizer_dir(convention)))
    dirs = []
    for name, arch, seed in (("teacher", teacher, 0), ("student", student, 1)):
        folder = Path(out) / name
        tiny_hf_model(arch, len(tok), seed, ids={**special_ids(tok), **(ids or {})}).save_pretrained(str(folder))
        tok.save_pretrained(str(folder))
        dirs.append(folder)
    return dirs[0], dirs[1]


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = TINY_VOCAB, text: str = "default"):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir(vocab_size, text)))


def tiny_hf_model(arch: TinyArch, vocab_size: int, seed: int, ids: dict[str, int | None] | None = None):
    """A random Llama; `ids`: its config's special-token ids (`special_ids(tokenizer)`; default all 0, the tiny
    tokenizer's `<|endoftext|>`)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = ids if ids is not None else {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=arch.d_model, intermediate_size=arch.d_mlp,
                      num_hidden_layers=arch.n_layers, num_attention_heads=arch.n_heads,
                      num_key_value_heads=arch.n_kv_heads, max_position_embeddings=256, tie_word_embeddings=False,
                      attn_implementation="eager", **ids)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    # Random init leaves the final norm at 1 and everything tiny; widen the scales a little so that layers
    # differ from each other and logits are not all equal (tests need non-degenerate structure).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    return model


def tiny_hf_pair(seed: int = 0, teacher: TinyArch = TINY_TEACHER, student: TinyArch = TINY_STUDENT):
    """(teacher_hf, student_hf, tokenizer): plain HF models, the reference for the bridge."""
    tok = tiny_tokenizer()
    return tiny_hf_model(teacher, len(tok), seed), tiny_hf_model(student, len(tok), seed + 1), tok


def tiny_pair(seed: int = 0, teacher: TinyArch = TINY_TEACHER, student: TinyArch = TINY_STUDENT):
    """A `ModelPair` of tiny TransformerBridge models sharing one tokenizer."""
    from .load import load_model
    from .pair import ModelPair

    t_hf, s_hf, tok = tiny_hf_pair(seed, teacher, student)
    return ModelPair(load_model(t_hf, tokenizer=tok, name="tiny-teacher"),
                     load_model(s_hf, tokenizer=tok, name="tiny-student"))


# Head rows beyond the tokenizer of the tiny padded pair (teacher, student): one tokenizer, two padded heads, as
# Qwen2.5-7B (152,064 rows) and 1.5B (151,936) pad one 151,665-token tokenizer to different multiples.
TINY_PADDING = (64, 16)


def tiny_padded_hf_pair(seed: int = 0, padding: tuple[int, int] = TINY_PADDING):
    """(teacher_hf, student_hf, tokenizer): the tiny pair with `padding` head (and embedding) rows beyond the
    shared tokenizer, `vocab_size = len(tokenizer) + padding` in their configs. The padded rows hold random weights
    like every other row, as an untrained padding does, so a stage that read them would give other numbers."""
    tok = tiny_tokenizer()
    return (tiny_hf_model(TINY_TEACHER, len(tok) + padding[0], seed),
            tiny_hf_model(TINY_STUDENT, len(tok) + padding[1], seed + 1), tok)


def tiny_padded_pair(seed: int = 0, padding: tuple[int, int] = TINY_PADDING):
    """A `ModelPair` of the tiny padded models (`tiny_padded_hf_pair`)."""
    from .load import load_model
    from .pair import ModelPair

    t_hf, s_hf, tok = tiny_padded_hf_pair(seed, padding)
    return ModelPair(load_model(t_hf, tokenizer=tok, name="tiny-teacher-padded"),
                     load_model(s_hf, tokenizer=tok, name="tiny-student-padded"))


def tiny_cross_pair(seed: int = 0):
    """A `ModelPair(vocab="intersection")` of tiny models with two tokenizers: the teacher's is the shared
    tiny one, the student's another byte-level BPE (`TOKENIZER_TEXTS["other"]`, `TINY_OTHER_VOCAB` tokens)."""
    from .load import load_model
    from .pair import ModelPair

    t_tok, s_tok = tiny_tokenizer(), tiny_tokenizer(TINY_OTHER_VOCAB, "other")
    teacher = load_model(tiny_hf_model(TINY_TEACHER, len(t_tok), seed), tokenizer=t_tok, name="tiny-teacher")
    student = load_model(tiny_hf_model(TINY_STUDENT, len(s_tok), seed + 1), tokenizer=s_tok,
                         name="tiny-student-other-tokenizer")
    return ModelPair(teacher, student, vocab="intersection")


# The families of the architecture matrix (`tests/test_architectures.py`): each built tiny from its transformers config.
# The first ten are the canonical shared-vocabulary families; the rest are other decoder families the bridge boots
# that build tiny from a config (Falcon's fixed head_dim needs its own sizes).
# The last group (`BROAD_FAMILIES`) is built from every size name a config may use, kept where the config has it:
# mixtures of experts, state-space and hybrid families among them (two experts, one active).
BROAD_FAMILIES = ("gptj", "gpt_neo", "gpt_bigcode", "mpt", "xglm", "glm4", "qwen3_moe", "olmoe", "gpt_oss", "lfm2",
                  "recurrent_gemma", "qwen3_next", "jamba", "nemotron_h", "modernbert-decoder", "mamba", "rwkv",
                  "mamba2", "bamba", "lfm2_moe", "gemma4_text", "deepseek_v2", "deepseek_v3", "sarvam_mla",
                  "falcon_h1", "phimoe", "granitemoe", "jetmoe", "hunyuan_v1_dense", "exaone4", "seed_oss", "ernie4_5",
                  "apertus", "arcee", "nemotron", "qwen3_5_text", "minimax_m2", "llama4_text", "afmoe")
# Analysed, not trained (`architectures.shared_weights_problem`): built the same way, kept out of `FAMILIES`
SHARED_WEIGHT_FAMILIES = ("zamba2",)
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi3", "opt",
            "gemma", "olmo", "olmo2", "olmo3", "granite", "stablelm", "cohere", "phi", "starcoder2", "smollm3",
            "mixtral", "qwen2_moe", "bloom", "falcon", *BROAD_FAMILIES)


def _own_sizes(family: str, arch: TinyArch) -> dict:
    """Sizes a family derives by its own rule, where the shared names of `broad_spec` do not fit: Mamba-2 heads
    span twice the stream (expand 2), MLA attention has its own head widths, some hybrids list their layers."""
    n, d, h = arch.n_layers, arch.d_model, arch.n_heads
    odd = list(range(1, n, 2))
    ssm = {"mamba_n_heads": h, "mamba_d_head": 2 * d // h, "mamba_d_state": 16, "mamba_expand": 2,
           "mamba_n_groups": 1, "mamba_chunk_size": 8}
    mla = {"q_lora_rank": None, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "head_dim": 8, "qk_nope_head_dim": 8,
           "v_head_dim": 16, "n_routed_experts": 2, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1}
    return {
        "mamba2": {"head_dim": 2 * d // h, "state_size": 16, "expand": 2, "n_groups": 1, "chunk_size": 8},
        "bamba": {"attn_layer_indices": odd, **ssm},
        "zamba2": {"layers_block_type": ["mamba" if i % 2 == 0 else "hybrid" for i in range(n)],
                   "hybrid_layer_ids": odd, "mamba_headdim": 2 * d // h, "n_mamba_heads": h, "mamba_ngroups": 1,
                   "mamba_d_state": 16, "mamba_expand": 2, "num_mem_blocks": 1,
                   "attention_hidden_size": 2 * d},  # its attention reads the stream and the embeddings
        "lfm2_moe": {"layer_types": ["conv" if i % 2 == 0 else "full_attention" for i in range(n)],
                     "num_dense_layers": 1},
        "gemma4_text": {"global_head_dim": d // h, "hidden_size_per_layer_input": 16, "sliding_window": 8,
                        "layer_types": ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]},
        "deepseek_v2": mla, "deepseek_v3": mla, "sarvam_mla": mla,
        # its defaults (a 1024-wide SSM of 128 heads, state 256, chunks of 256) made it 8 of the suite's 22 minutes
        "falcon_h1": {"mamba_d_ssm": 2 * d, "mamba_n_heads": h, "mamba_d_head": 2 * d // h, "mamba_d_state": 16,
                      "mamba_chunk_size": 8},
    }.get(family, {})


def _has(config, key: str) -> bool:
    """Whether `config` has `key` (Gemma-4's per-layer fields raise a non-AttributeError on global access)."""
    try:
        return hasattr(config, key) or key in getattr(config, "attribute_map", {})
    except Exception:  # noqa: BLE001 - transformers' AmbiguousGlobalPerLayerAttributeError: the key exists
        return True


def broad_spec(family: str, arch: TinyArch) -> dict:
    """`arch`'s sizes under every name the decoder configs use, kept where `family`'s config has the name."""
    from transformers import AutoConfig

    head_dim = arch.d_model // arch.n_heads
    sizes = {"hidden_size": arch.d_model, "d_model": arch.d_model, "n_embd": arch.d_model,
             "num_hidden_layers": arch.n_layers, "num_layers": arch.n_layers, "n_layer": arch.n_layers,
             "n_layers": arch.n_layers, "num_attention_heads": arch.n_heads, "num_heads": arch.n_heads,
             "n_head": arch.n_heads, "n_heads": arch.n_heads, "attention_heads": arch.n_heads,
             "num_key_value_heads": arch.n_kv_heads, "head_dim": head_dim, "intermediate_size": arch.d_mlp,
             "ffn_dim": arch.d_mlp, "n_inner": arch.d_mlp, "moe_intermediate_size": arch.d_mlp,
             "max_position_embeddings": 256, "n_positions": 256, "max_seq_len": 256, "context_length": 256,
             "num_experts": 2, "num_local_experts": 2, "num_experts_per_tok": 1, "rotary_dim": head_dim,
             "attention_hidden_size": arch.d_model, "expansion_ratio": arch.d_mlp // arch.d_model}
    default = AutoConfig.for_model(family)
    own = _own_sizes(family, arch)  # a family with its own rule lists its layers there, or derives the list
    spec = {**{k: v for k, v in sizes.items() if _has(default, k)}, **own}
    for key in ("layers_block_type", "layer_types") if not own else ():  # hybrids list a type per layer: cycle
        types = getattr(default, key, None)
        derived = isinstance(getattr(type(default), key, None), property)  # Mamba's, read from other fields
        if isinstance(types, list) and types and len(types) != arch.n_layers and not derived:
            cycled = [types[i % len(types)] for i in range(arch.n_layers)]
            try:  # some configs derive the list from another field (RecurrentGemma's block_types)
                AutoConfig.for_model(family, **{**spec, key: cycled})
            except Exception:  # noqa: BLE001 - transformers raises validation errors of several kinds here
                continue
            spec[key] = cycled
    if family == "gpt_neo":  # one attention type per layer
        spec["attention_types"] = [[["global", "local"], arch.n_layers // 2]] if arch.n_layers % 2 == 0 else \
            [[["global"], arch.n_layers]]
    return spec


def tiny_family_model(family: str, arch: TinyArch, vocab_size: int, seed: int,
                      ids: dict[str, int | None] | None = None):
    """A random HF causal LM of `family` (a `FAMILIES` name) with `arch`'s sizes, in eval mode; `ids`: its
    config's special-token ids (`special_ids(tokenizer)`; default all 0, the tiny tokenizer's)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    ids = ids if ids is not None else {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    common = {"vocab_size": vocab_size, **{k: v for k, v in ids.items() if v is not None}}
    if family == "gpt2":
        spec = {"n_layer": arch.n_layers, "n_embd": arch.d_model, "n_head": arch.n_heads, "n_positions": 256,
                "n_inner": arch.d_mlp}
    elif family == "opt":
        spec = {"num_hidden_layers": arch.n_layers, "hidden_size": arch.d_model, "num_attention_heads": arch.n_heads,
                "ffn_dim": arch.d_mlp, "word_embed_proj_dim": arch.d_model, "max_position_embeddings": 256}
    elif family == "gpt_neox":
        spec = {"num_hidden_layers": arch.n_layers, "hidden_size": arch.d_model, "num_attention_heads": arch.n_heads,
                "intermediate_size": arch.d_mlp, "max_position_embeddings": 256}
    elif family == "bloom":
        spec = {"n_layer": arch.n_layers, "hidden_size": arch.d_model, "n_head": arch.n_heads}
    elif family == "falcon":  # head_dim follows from hidden_size / heads; MLP is 4 x hidden
        spec = {"num_hidden_layers": arch.n_layers, "hidden_size": arch.d_model, "num_attention_heads": arch.n_heads,
                "new_decoder_architecture": False, "multi_query": True, "max_position_embeddings": 256}
    elif family in BROAD_FAMILIES + SHARED_WEIGHT_FAMILIES:
        spec = broad_spec(family, arch)
        if _has(AutoConfig.for_model(family), "vocab_size_per_layer_input"):  # Gemma-4's per-layer embeddings
            spec["vocab_size_per_layer_input"] = vocab_size
    elif family in FAMILIES:
        spec = {"num_hidden_layers": arch.n_layers, "hidden_size": arch.d_model, "num_attention_heads": arch.n_heads,
                "num_key_value_heads": arch.n_kv_heads, "intermediate_size": arch.d_mlp,
                "max_position_embeddings": 256, "head_dim": arch.d_model // arch.n_heads}
    else:
        raise ValueError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    config = AutoConfig.for_model(family, **spec, **common)
    for key in ids.keys() - common.keys():  # a role the tokenizer lacks: the family's default id, if it fits,
        if isinstance(getattr(config, key, None), int) and getattr(config, key) >= vocab_size:  # else its EOS
            setattr(config, key, ids.get("eos_token_id") or 0)  # (some configs require an int: ModernBERT's pad)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


# TransformerLens-native layouts (`TransformerBridge.boot_native`): GPT-2-like, Llama-like (rotary, RMSNorm,
# gated MLP, grouped-query attention) and attention-only. Each is its own family of `architectures`.
NATIVE_LAYOUTS = {
    "native": {"act_fn": "gelu", "normalization_type": "LN"},
    "native_gated": {"act_fn": "silu", "normalization_type": "RMS", "gated_mlp": True,
                     "positional_embedding_type": "rotary", "final_rms": True},
    "native_attn_only": {"normalization_type": "LN", "attn_only": True},
}


def tiny_native_bridge(layout: str, arch: TinyArch, tokenizer, seed: int):
    """A random TransformerLens-native bridge of `layout` (a `NATIVE_LAYOUTS` name) with `arch`'s sizes."""
    from transformer_lens.model_bridge import TransformerBridge

    if layout not in NATIVE_LAYOUTS:
        raise ValueError(f"unknown native layout {layout!r}; valid: {', '.join(NATIVE_LAYOUTS)}")
    d_head = arch.d_model // arch.n_heads
    cfg = {"n_layers": arch.n_layers, "d_model": arch.d_model, "n_heads": arch.n_heads, "d_head": d_head,
           "d_mlp": arch.d_mlp, "d_vocab": len(tokenizer), "n_ctx": 256, "seed": seed, **NATIVE_LAYOUTS[layout]}
    if NATIVE_LAYOUTS[layout].get("positional_embedding_type") == "rotary":
        cfg.update(n_key_value_heads=arch.n_kv_heads, rotary_dim=d_head)
    return TransformerBridge.boot_native(cfg, tokenizer=tokenizer, model_name=f"tiny-{layout}-{arch.n_layers}")
