"""Layer states read from files, and `semalign similarity` on them: every format gives back the tensors saved,
layers in numeric order; the command's grids equal the library's and its cells file holds every cell."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from semalign_lens.cli import main
from semalign_lens.core.errors import SemalignError
from semalign_lens.lens.measures import measure_matrix, measure_null
from semalign_lens.lens.measures.states_file import load_states


@pytest.fixture()
def stacks():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    xs = torch.stack([base @ torch.randn(6, 12, generator=gen, dtype=torch.float64) for _ in range(3)]).float()
    ys = [base @ torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(11)]  # 11 layers: 10 after 2
    return xs, [y.float() for y in ys]


def test_every_format_reads_back_what_was_saved(tmp_path, stacks):
    xs, ys = stacks
    save_file({"states": xs}, str(tmp_path / "x.safetensors"))
    save_file({f"blocks.{i}.hook_out": y for i, y in enumerate(ys)}, str(tmp_path / "y.safetensors"))
    np.save(tmp_path / "x.npy", xs.numpy())
    torch.save(ys, tmp_path / "y.pt")
    torch.testing.assert_close(load_states(tmp_path / "x.safetensors"), xs)
    torch.testing.assert_close(load_states(tmp_path / "x.npy"), xs)
    for name in ("y.safetensors", "y.pt"):
        got = load_states(tmp_path / name)
        assert len(got) == len(ys), name
        for a, b in zip(got, ys, strict=True):  # layer 10 after layer 2: numeric, not alphabetical order
            torch.testing.assert_close(a, b)


def test_a_states_file_that_is_not_one_is_one_line(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(5))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    for name, match in (("flat.npy", r"shape \(5,\)"), ("bad.pt", "not a readable torch file"),
                        ("bad.npy", "not a readable .npy array"), ("x.csv", "must end in"),
                        ("missing.pt", "does not exist")):
        with pytest.raises(SemalignError, match=match) as err:
            load_states(tmp_path / name)
        assert "\n" not in str(err.value)


def test_semalign_similarity_prints_the_library_grids_and_writes_every_cell(tmp_path, stacks, capsys):
    xs, ys = stacks
    save_file({"states": xs}, str(tmp_path / "x.safetensors"))
    torch.save(ys, tmp_path / "y.pt")
    out = tmp_path / "cells.csv"
    assert main(["similarity", str(tmp_path / "x.safetensors"), str(tmp_path / "y.pt"), "--measures", "cka_debiased",
                 "procrustes", "mutual_knn", "--knn-k", "5", "--permutations", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cka_debiased (rows: teacher layers" in printed and "Diagonal" in printed and "Against the null" in printed
    cells = pd.read_csv(out)
    assert len(cells) == 3 * len(xs) * len(ys)
    for name, options in (("cka_debiased", {}), ("procrustes", {}), ("mutual_knn", {"k": 5})):
        part = cells[cells["measure"] == name]
        want = measure_matrix(name, xs, ys, **options)
        np.testing.assert_allclose(part["value"].to_numpy().reshape(want.shape), want.numpy(), atol=1e-12)
        null = measure_null(name, xs, ys, n_permutations=3, **options)
        np.testing.assert_allclose(part["p_value"].to_numpy().reshape(want.shape), null.p_values.numpy())
