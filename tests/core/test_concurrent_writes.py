"""Several processes writing one cache file at once, as the processes of an `accelerate launch` run do on its
first run: every write succeeds and leaves one whole file.

The review that found the race (`gpu-readiness-review.md`, experiment 12) saw 25 of 120 concurrent semantic-basis
saves fail with `FileNotFoundError ... basis.safetensors.tmp`: every writer used the same temporary name, so one
writer's rename took the file another was about to rename. Target caches raced worse: each builder deleted and
rewrote the shards the others were writing and checksumming (before `build_cache` took the cache's lock, all 30
builds here failed). Three processes, started together by a barrier, save one basis to one path, then build one
target cache key, many times each; one spawn serves both tests (starting the processes is most of their time).
"""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WRITERS = 3
BASIS_SAVES = 150  # per writer: the shared-temporary code failed 3 to 7 of 300 such saves (3 writers x 100)
CACHE_BUILDS = 10
N_SEQUENCES = 6


def _basis():
    from semalign_lens.lens.semantics import SemanticBasis

    gen = torch.Generator().manual_seed(0)
    return SemanticBasis.from_unembedding(torch.randn(8, 64, generator=gen), cache=False)


def _states(tokens: torch.Tensor, layers, embed: bool = True, logits: bool = False):
    """A stand-in for the teacher's forward (`models.residuals.residual_states`), a fixed function of the tokens:
    the writes are what is tested, and a real model would cost each process seconds of imports."""
    from semalign_lens.models.residuals import ResidualStates

    x = tokens.double()[..., None] * torch.arange(1, 9, dtype=torch.float64) / 100
    return ResidualStates({layer: (x * (layer + 2)).sin().float() for layer in layers}, x.float() if embed else None,
                          (x.sum(-1, keepdim=True) * torch.arange(32)).cos().float() if logits else None)


def _fake_forward(model, tokens, layers, embed=False, logits=False):
    return _states(tokens, layers, embed, logits)


def _cache_identity():
    from semalign_lens.training.targets import cache_identity

    return cache_identity("teacher", "tokenizer", [0, 1], "data", N_SEQUENCES, 8, 8, "topk", "tiny", top_k=4)


TOKENS = torch.arange(N_SEQUENCES * 8).view(N_SEQUENCES, 8) % 29


def _no_autocast():
    return torch.autocast("cpu", enabled=False)


def _writer(folder: str, barrier, errors) -> None:
    from semalign_lens.training import targets

    targets.residual_states = _fake_forward
    basis, ident = _basis(), _cache_identity()
    barrier.wait()
    for _ in range(BASIS_SAVES):
        try:
            basis.save(Path(folder) / "bases" / "basis.safetensors")
        except Exception:  # noqa: BLE001 - the failure is the finding: count it, name it
            errors.put(("basis", traceback.format_exc(limit=1)))
    barrier.wait()
    path = Path(folder) / "cache"
    for _ in range(CACHE_BUILDS):
        try:
            meta = targets.build_cache(path, ident, None, TOKENS, 1, 2, _no_autocast, progress=False)
            # what this writer got back is a whole cache: every shard it names is on disk as recorded
            assert meta["shards"] == N_SEQUENCES and targets.check_cache(path, ident, notes=False) == meta
        except Exception:  # noqa: BLE001
            errors.put(("cache", traceback.format_exc(limit=2)))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    folder = tmp_path_factory.mktemp("concurrent")
    ctx = multiprocessing.get_context("spawn")  # a fork of a process with torch's thread pools can hang
    barrier, errors = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(folder), barrier, errors)) for _ in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    found = []
    while not errors.empty():
        found.append(errors.get())
    return folder, found


def test_concurrent_saves_of_one_basis_all_succeed(written):
    from semalign_lens.lens.semantics import SemanticBasis

    folder, errors = written
    failed = [tb for kind, tb in errors if kind == "basis"]
    assert not failed, f"{len(failed)} of {WRITERS * BASIS_SAVES} saves failed, first: {failed[0]}"
    # one whole file, the basis every writer saved, and no temporary left behind
    assert torch.equal(SemanticBasis.load(folder / "bases" / "basis.safetensors").S, _basis().S)
    assert [p.name for p in (folder / "bases").iterdir()] == ["basis.safetensors"]


def test_concurrent_builds_of_one_target_cache_all_succeed(written):
    folder, errors = written
    failed = [tb for kind, tb in errors if kind == "cache"]
    assert not failed, f"{len(failed)} of {WRITERS * CACHE_BUILDS} builds failed, first: {failed[0]}"
    # the shards hold the states, and nothing else is left in the directory
    states = _states(TOKENS, [0, 1])
    for i in range(N_SEQUENCES):  # a shard names block 1's output "post.1" (the cache's names on disk)
        shard = load_file(str(folder / "cache" / f"shard-{i:05d}.safetensors"))
        assert torch.allclose(shard["post.1"].float(), states.post[1][i: i + 1], rtol=1e-3, atol=1e-3)
    assert sorted(p.name for p in (folder / "cache").iterdir() if not p.name.startswith("shard-")) == [
        ".semalign.lock", "meta.json"]
