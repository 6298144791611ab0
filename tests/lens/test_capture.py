"""Narrow residual capture against HF hidden states (the independent reference)."""

from __future__ import annotations

import pytest
import torch

from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import tokenize
from semalign_lens.lens.capture import ShardedCapture, accumulated_resid, capture

TEXTS = ["def add(a, b):\n    return a + b\n", "import os", "class Point:\n    x: int = 0"]


@pytest.fixture(scope="module")
def batch(tiny_hf):
    return tokenize(tiny_hf[2], TEXTS)


def test_resid_post_equals_hf_hidden_states(tiny_pair, tiny_hf, batch):
    teacher_hf = tiny_hf[0]
    n = teacher_hf.config.num_hidden_layers
    cap = capture(tiny_pair.teacher, batch, range(n), points=("resid_pre", "resid_post"))
    with torch.no_grad():
        hidden = teacher_hf(input_ids=batch.tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cap.get("resid_pre", 0)[batch.mask], hidden[0][batch.mask])
    for layer in range(n - 1):
        torch.testing.assert_close(cap.get("resid_post", layer)[batch.mask], hidden[layer + 1][batch.mask])
    # HF's last entry is after the final norm: hidden[-1] = RMSNorm(resid_post of the last block).
    last = cap.get("resid_post", n - 1)
    normed = teacher_hf.model.norm(last)
    torch.testing.assert_close(normed[batch.mask], hidden[-1][batch.mask], atol=1e-5, rtol=1e-5)
    assert (last - hidden[-1])[batch.mask].abs().max() > 1e-2


def test_block_write_is_post_minus_pre(tiny_pair, batch):
    cap = capture(tiny_pair.teacher, batch, [1, 4], points=("resid_pre", "resid_post", "block_write"))
    for layer in (1, 4):
        torch.testing.assert_close(cap.get("block_write", layer),
                                   cap.get("resid_post", layer) - cap.get("resid_pre", layer))


def test_block_write_alone_equals_hf_hidden_state_difference(tiny_pair, tiny_hf, batch):
    """Only block_write requested (its resid_pre is held just until its resid_post arrives), two sequences
    per forward: block l's write = HF hidden_states[l + 1] - hidden_states[l]."""
    cap = capture(tiny_pair.teacher, batch, [1, 3], points=("block_write",), batch_size=2)
    assert cap.points == ["block_write"]
    with torch.no_grad():
        hidden = tiny_hf[0](input_ids=batch.tokens, output_hidden_states=True).hidden_states
    for layer in (1, 3):
        torch.testing.assert_close(cap.get("block_write", layer)[batch.mask],
                                   (hidden[layer + 1] - hidden[layer])[batch.mask])


def test_padding_is_masked_and_does_not_leak(tiny_pair, tiny_hf, batch):
    cap = capture(tiny_pair.student, batch, [0, 2])
    assert cap.mask.tolist() == batch.mask.tolist()
    assert cap.tokens_of("resid_post", 2).shape[0] == batch.mask.sum()
    for i, text in enumerate(TEXTS):  # each sequence alone, unpadded, gives the same states
        alone = tokenize(tiny_hf[2], [text])
        ref = capture(tiny_pair.student, alone, [2]).get("resid_post", 2)[0]
        torch.testing.assert_close(cap.get("resid_post", 2)[i, : ref.shape[0]], ref, atol=1e-5, rtol=1e-5)


def test_forward_stops_after_deepest_layer(tiny_pair, batch):
    """The bridge's own hook on block 3 fires only when a point needs block 3 (a caller's hooks stay put)."""
    fired = []
    model = tiny_pair.teacher
    model.add_hook("blocks.3.hook_out", lambda t, hook: fired.append(hook.name))
    try:
        capture(model, batch, [1], points=("resid_post", "mlp_out"), batch_size=3, progress=False)
        capture(model, batch, [4], points=("resid_pre",), batch_size=3, progress=False)
        assert fired == ["blocks.3.hook_out"]  # resid_pre of block 4 is block 3's output
        capture(model, batch, [3], points=("attn_out",), batch_size=3, progress=False)
        assert fired == ["blocks.3.hook_out"] * 2
    finally:
        model.reset_hooks()


def test_capture_is_a_view_over_one_residual_record(tiny_pair, tiny_hf, batch):
    """`Capture` keeps one `ResidualStates` record (each state once: resid_pre of block l is block l - 1's output)
    and the attention writes beside it; block_write is derived; the record's stream is HF's hidden states."""
    from semalign_lens.models.residuals import ResidualStates

    n = tiny_hf[0].config.num_hidden_layers
    cap = capture(tiny_pair.teacher, batch, range(n), points=("resid_pre", "resid_post", "block_write", "attn_out"),
                  batch_size=2, progress=False)
    assert isinstance(cap.states, ResidualStates) and sorted(cap.states.post) == list(range(n))
    assert cap.mask is cap.states.mask and cap.mask.tolist() == batch.mask.tolist()
    assert cap["blocks.0.hook_resid_pre"] is cap.states.embed
    for layer in range(1, n):
        assert cap["resid_pre", layer] is cap["resid_post", layer - 1] is cap.states.post[layer - 1]
    assert set(cap.writes) == {("attn_out", layer) for layer in range(n)} and cap["attn_out", 2] is cap.writes[
        ("attn_out", 2)]
    stored = {t.untyped_storage().data_ptr() for t in [cap.states.embed, *cap.states.post.values(),
                                                        *cap.writes.values()]}
    assert len(stored) == 2 * n + 1  # n + 1 residual states and n attention writes: nothing held twice
    with torch.no_grad():
        hidden = tiny_hf[0](input_ids=batch.tokens, output_hidden_states=True).hidden_states
    for i, state in enumerate(cap.states.stream()[:n]):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(state[batch.mask], hidden[i][batch.mask])
    torch.testing.assert_close(cap["block_write", 3], cap.states.post[3] - cap.states.post[2])


def test_sharded_capture_derives_the_same_points_as_memory(tiny_pair, batch, tmp_path):
    """Each shard is written from its sub-batch's record, so derived points (block_write) and shared states
    (resid_pre of block l = resid_post of block l - 1) read back as the in-memory capture gives them."""
    points = ("resid_pre", "block_write", "mlp_out")
    mem = capture(tiny_pair.teacher, batch, [2, 4], points, batch_size=2)
    disk = capture(tiny_pair.teacher, batch, [2, 4], points, batch_size=2, shard_dir=tmp_path)
    for point in points:
        torch.testing.assert_close(disk.flat_stack(point), mem.flat_stack(point))


def test_sharded_capture_matches_memory(tiny_pair, batch, tmp_path):
    mem = capture(tiny_pair.teacher, batch, [0, 5], batch_size=2)
    disk = capture(tiny_pair.teacher, batch, [0, 5], batch_size=2, shard_dir=tmp_path)
    assert isinstance(disk, ShardedCapture) and len(disk.files) == 2
    torch.testing.assert_close(disk.flat_stack("resid_post"), mem.flat_stack("resid_post"))


def test_results_are_float32_on_cpu(tiny_pair, batch):
    cap = capture(tiny_pair.teacher, batch, [2])
    t = cap.get("resid_post", 2)
    assert t.dtype == torch.float32 and t.device.type == "cpu"


def test_layer_out_of_range_gives_valid_range(tiny_pair, batch):
    with pytest.raises(SemalignError, match=r"valid layers are 0\.\.5"):
        capture(tiny_pair.teacher, batch, [6])


def test_empty_prompt_list(tiny_hf):
    with pytest.raises(SemalignError, match="empty prompt list"):
        tokenize(tiny_hf[2], [])


def test_unknown_point(tiny_pair, batch):
    with pytest.raises(SemalignError, match="valid points"):
        capture(tiny_pair.teacher, batch, [0], points=("resid_mid",))


def test_accumulated_resid_matches_hf_hidden_states_on_a_bridge_and_a_plain_model(tiny_pair, tiny_hf, batch):
    """The one residual stack: [embed, block 0 .. L-1] at the real tokens, the same on a bridge (its hooks) and
    on a plain HF model (forward hooks), against HF's own hidden states; `drop_first` drops position 0."""
    teacher_hf = tiny_hf[0]
    n = teacher_hf.config.num_hidden_layers
    with torch.no_grad():
        hidden = teacher_hf(input_ids=batch.tokens, output_hidden_states=True).hidden_states
    keep = batch.mask.clone()
    keep[:, 0] = False
    bridge = accumulated_resid(tiny_pair.teacher, batch, drop_first=True, batch_size=2)
    plain = accumulated_resid(teacher_hf, batch, drop_first=True, batch_size=2)
    assert len(bridge) == len(plain) == n + 1
    for i in range(n):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(bridge[i], hidden[i][keep])
        torch.testing.assert_close(plain[i], hidden[i][keep])
    torch.testing.assert_close(plain[n], bridge[n])
    assert bridge[0].shape == (int(keep.sum()), teacher_hf.config.hidden_size)
    with pytest.raises(SemalignError, match="no real token"):
        accumulated_resid(teacher_hf, type(batch)(batch.tokens[:, :1], batch.mask[:, :1]), drop_first=True)


def test_accumulated_resid_is_transformer_lens_accumulated_resid(tiny_pair, batch):
    """The points and labels of TL's own `ActivationCache.accumulated_resid` over the bridge's `run_with_cache`,
    at the real tokens (TL keeps [point, batch, pos, d]; ours flattens them), for every `layer` form."""
    model = tiny_pair.teacher
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens)
    for layer in (None, 3, 0):
        tl, tl_labels = cache.accumulated_resid(layer=layer, return_labels=True)
        ours, labels = accumulated_resid(model, batch, layer=layer, return_labels=True, batch_size=2)
        assert labels == tl_labels, layer
        torch.testing.assert_close(ours, tl[:, batch.mask].float())
    with pytest.raises(SemalignError, match=r"block index in 0\.\.6"):
        accumulated_resid(model, batch, layer=7)


def test_capture_speaks_transformer_lens(tiny_pair, batch):
    """TL conventions: `cap["resid_post", 3]` and hook names in TL's or the bridge's form; `stack_activation`
    as TL's own over the bridge's `run_with_cache`, beside the flattened `flat_stack`; an `ActivationCache`
    both ways."""
    from transformer_lens.utilities import get_act_name

    from semalign_lens.lens.capture import Capture

    model = tiny_pair.teacher
    cap = capture(model, batch, range(4), points=("resid_pre", "resid_post"), progress=False)
    assert cap["resid_post", 3] is cap.get("resid_post", 3)
    assert cap[get_act_name("resid_post", 3)] is cap["blocks.3.hook_out"] is cap.get("resid_post", 3)
    assert cap["blocks.0.hook_resid_pre"] is cap.get("resid_pre", 0)
    with pytest.raises(SemalignError, match="not a residual hook name"):
        cap["blocks.0.attn.hook_z"]
    with torch.no_grad():
        _, tl_cache = model.run_with_cache(batch.tokens)
    for ours, tl in ((cap.stack_activation("resid_post"), tl_cache.stack_activation("resid_post", 4)),  # captured 0..3
                     (cap.stack_activation("resid_post", 2), tl_cache.stack_activation("resid_post", 2))):
        assert ours.shape == tl.shape  # right padding: real positions do not depend on what follows
        torch.testing.assert_close(ours[:, batch.mask], tl[:, batch.mask].float())
    torch.testing.assert_close(cap.flat_stack("resid_post"), cap.stack_activation("resid_post")[:, batch.mask])
    cache = cap.to_activation_cache(model)
    for layer in range(4):  # right padding: real positions do not depend on what follows
        key = get_act_name("resid_post", layer)
        torch.testing.assert_close(cache[key][batch.mask], tl_cache[key][batch.mask].float())
    back = Capture.from_activation_cache(tl_cache, mask=batch.mask)
    torch.testing.assert_close(back.tokens_of("resid_pre", 2), cap.tokens_of("resid_pre", 2))


def test_accumulated_resid_measures_with_dropout_off_and_restores_the_mode():
    """A trainer's student is in train mode; GPT-2 has dropout 0.1: the stack is still deterministic."""
    from semalign_lens.models.tiny import TinyArch, tiny_family_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_family_model("gpt2", TinyArch(n_layers=2, d_model=32, n_heads=2, n_kv_heads=2, d_mlp=64), len(tok), 0)
    model.train()
    batch = tokenize(tok, TEXTS)
    first, second = accumulated_resid(model, batch), accumulated_resid(model, batch)
    assert model.training and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_damaged_capture_shard_is_named_never_read(tiny_pair, batch, tmp_path):
    capture(tiny_pair.teacher, batch, [0, 5], batch_size=2, shard_dir=tmp_path)
    first, second = tmp_path / "shard-00000.safetensors", tmp_path / "shard-00001.safetensors"
    data = second.read_bytes()
    second.write_bytes(data[:-4] + bytes(b ^ 0xFF for b in data[-4:]))  # same size: found before it is first read
    disk = ShardedCapture(tmp_path)
    with pytest.raises(SemalignError, match=f"capture shard {second} is damaged \\(its sha256 differs"):
        disk.flat_stack("resid_post")
    first.write_bytes(first.read_bytes()[:100])  # truncated: found on opening
    with pytest.raises(SemalignError, match=f"capture shard {first} is damaged \\(100 bytes, \\d+ when written\\); "
                                            "capture again into an empty shard_dir"):
        ShardedCapture(tmp_path)


def test_token_states_reads_the_residual_record_and_the_block_writes_in_the_same_forwards(tiny_pair, batch,
                                                                                          monkeypatch):
    """One forward per chunk gives the record (its stream is `accumulated_resid`) and the writes (`sublayer_writes`),
    each of which is tested against HF above and in test_heads."""
    from semalign_lens.lens.capture import sublayer_writes, token_states

    model = tiny_pair.teacher
    stack = accumulated_resid(model, batch, drop_first=True, batch_size=2)
    writes = sublayer_writes(model, batch, points=("mlp_out",), drop_first=True, batch_size=2)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(a[0]) or forward(*a, **k))
    states, got = token_states(model, batch, writes=("mlp_out",), drop_first=True, batch_size=2)
    assert len(calls) == 2 and states.mask is None and sorted(states.post) == list(range(model.cfg.n_layers))
    assert torch.equal(torch.stack(states.stream()), stack) and list(got) == ["mlp_out"]
    assert torch.equal(got["mlp_out"], writes["mlp_out"])
    with pytest.raises(SemalignError, match="token_states reads"):
        token_states(model, batch, writes=("resid_post",))
