"""Shared fixtures: tiny random models built from configs (nothing downloaded), offline Hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# precision "auto" means fp32 in the suite: its tolerances are fp32's, and must hold on every CPU (auto would
# be bf16 on CPUs with native bf16 only); tests/core/test_precision.py tests the hardware rule itself.
os.environ.setdefault("SEMALIGN_PRECISION", "fp32")
# Under pytest-xdist each worker is one of two processes on two cores: one torch thread each, and a cache of its
# own, so that two workers never build the same converted teacher or tiny tokenizer at once.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    _root = os.environ.get("SEMALIGN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "semalign_lens")
    os.environ["SEMALIGN_CACHE"] = os.path.join(_root, f"xdist-{worker}")
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pair():
    """ModelPair of tiny TransformerBridge Llamas: teacher 6 layers d64, student 3 layers d32, vocab 384."""
    from semalign_lens.models.tiny import tiny_pair as build

    return build(seed=0)


@pytest.fixture(scope="session")
def tiny_hf():
    """(teacher_hf, student_hf, tokenizer): the same tiny models as plain HF modules, the reference."""
    from semalign_lens.models.tiny import tiny_hf_pair

    return tiny_hf_pair(seed=0)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M teacher (slow: ~3 s warm, ~20 s on first conversion)."""
    from semalign_lens.models.load import load_model

    return load_model("smollm2-135m")


def hf_module_outputs(hf, tokens) -> dict[str, list]:
    """A plain HF Llama's own module outputs on `tokens`, read by forward hooks (the reference the hooked views
    are tested against): the residual after the embeddings and after each decoder layer (`resid`), and each
    layer's attention (`attn_out`) and MLP (`mlp_out`) outputs."""
    out = {"resid": [], "attn_out": [], "mlp_out": []}
    handles = [hf.model.embed_tokens.register_forward_hook(lambda m, a, o: out["resid"].append(o))]
    for layer in hf.model.layers:
        handles.append(layer.register_forward_hook(lambda m, a, o: out["resid"].append(o[0] if isinstance(o, tuple)
                                                                                        else o)))
        handles.append(layer.self_attn.register_forward_hook(lambda m, a, o: out["attn_out"].append(o[0])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o: out["mlp_out"].append(o)))
    try:
        with torch.no_grad():
            hf(input_ids=tokens)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.fixture(scope="session")
def hf_outputs():
    """`hf_module_outputs` as a fixture (test modules do not import each other)."""
    return hf_module_outputs


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
