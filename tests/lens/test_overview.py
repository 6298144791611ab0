"""The overview's residual-norm statistics against HF's own hidden states, and their robust figure."""

from __future__ import annotations

import numpy as np
import torch

from semalign_lens.data.tokens import tokenize
from semalign_lens.lens.overview import residual_norm_figure, residual_norms


def test_residual_norms_are_robust_statistics_of_hf_hidden_states(tiny_pair, tiny_hf):
    teacher_hf, _, tok = tiny_hf
    batch = tokenize(tok, ["def add(a, b):\n    return a + b\n", "x = [1, 2, 3]\nprint(sum(x))\n"])
    table = residual_norms(tiny_pair.teacher, batch)
    with torch.no_grad():
        hidden = teacher_hf(input_ids=batch.tokens, attention_mask=batch.mask.long(),
                            output_hidden_states=True).hidden_states
    mask = batch.mask.clone()
    mask[:, 0] = False
    for layer in range(len(hidden) - 2):  # HF's last hidden state is after the final norm
        norms = hidden[layer + 1][mask].norm(dim=-1).numpy()
        row = table[table["layer"] == layer].iloc[0]
        q25, q75 = np.quantile(norms, [0.25, 0.75], method="linear")
        assert np.isclose(row["q25_norm"], q25, rtol=1e-4) and np.isclose(row["q75_norm"], q75, rtol=1e-4)
        # torch.median is the lower middle value for an even count, numpy's the midpoint: compare with that rule
        assert np.isclose(row["median_norm"], np.sort(norms)[(len(norms) - 1) // 2], rtol=1e-4)
        assert row["n_tokens"] == len(norms)

    fig = residual_norm_figure(table)
    assert fig.layout.yaxis.type == "log" and fig.data[0].error_y.symmetric is False
    assert (np.asarray(fig.data[0].error_y.arrayminus) >= 0).all()


def test_norm_jumps_names_the_jump_and_the_cka_band():
    """A teacher whose median norm grows 10x at block 2 and whose CKA rows step from ~0.1 to ~0.6 there."""
    import pandas as pd

    from semalign_lens.lens.overview import norm_jumps

    norms = pd.DataFrame({"model": ["t"] * 6 + ["s"] * 3, "layer": [0, 1, 2, 3, 4, 5, 0, 1, 2],
                          "median_norm": [1.0, 1.5, 15.0, 16.0, 16.5, 17.0, 2.0, 8.0, 9.0]})
    index = ["embed", "0", "1", "2", "3", "4", "5"]
    cka = pd.DataFrame({"0": [0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.6], "1": [0.1, 0.12, 0.1, 0.62, 0.6, 0.6, 0.6]},
                       index=index)
    text = norm_jumps(norms, cka)
    assert "t: the median norm jumps 10.0x at block 2 (1.5 → 15)" in text
    assert "s: the median norm jumps 4.0x at block 1" in text
    assert "changes most at block 2" in text and "about the depth of the norm jump" in text
    late = pd.DataFrame({"0": [0.1] * 6 + [0.7], "1": [0.1] * 6 + [0.7]}, index=index)
    assert "changes most at block 5" in norm_jumps(norms, late) and "another depth" in norm_jumps(norms, late)
