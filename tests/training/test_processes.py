"""The processes of one run (`training/processes.py`): sharded-training configs refused in one line before any
model loads, and a process that cannot see the target cache the main process built told so in one line. (Runs of
two real processes: `test_loop.test_two_accelerate_processes_match_one`.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from trainer_helpers import make_cfg

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer


@pytest.mark.parametrize("flag,name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_accelerate_config_is_refused_before_loading(tmp_path, monkeypatch, flag, name):
    """What `accelerate launch` sets from an FSDP or DeepSpeed config (on a machine without GPUs it then starts
    plain CPU processes, so the config would be ignored silently)."""
    from semalign_lens.models import load as models

    monkeypatch.setenv(flag, "true")
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = make_cfg(tmp_path, teacher="stdlib-student", student="stdlib-student")
    with pytest.raises(SemalignError, match=rf"^accelerate is configured for {name}, which the trainer does not "
                                            r"use .*`accelerate launch --multi_gpu`") as err:
        Trainer(cfg)
    assert "\n" not in str(err.value)


def test_an_accelerator_set_up_for_fsdp_is_refused(tmp_path, tiny_pair, tokens):
    """A caller's own `Accelerator(fsdp_plugin=...)` (on a GPU machine its type is FSDP)."""
    from accelerate.utils import DistributedType

    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP)
    with pytest.raises(SemalignError, match=r"^accelerate is configured for FSDP,"):
        Trainer(make_cfg(tmp_path), tiny_pair, data=tokens,
                accelerator=fsdp)


def test_a_cache_another_machine_cannot_see_is_named(tmp_path):
    """The main process built and checked the cache; a process that finds a shard missing or of another size
    (its machine does not mount the cache directory) names the shard and the fix."""
    from semalign_lens.core.paths import file_record
    from semalign_lens.training.targets import unshared_cache

    for i in range(2):
        (tmp_path / f"shard-{i:05d}.safetensors").write_bytes(b"x" * (10 + i))
    meta = {"files": {p.name: file_record(p) for p in sorted(tmp_path.glob("shard-*"))}}
    assert unshared_cache(tmp_path, meta) is None
    (tmp_path / "shard-00001.safetensors").unlink()
    problem = unshared_cache(tmp_path, meta)
    assert problem.startswith(f"target cache shard {tmp_path / 'shard-00001.safetensors'} is missing for this "
                              "process") and "targets.cache_dir" in problem and "\n" not in problem
    (tmp_path / "shard-00001.safetensors").write_bytes(b"x" * 3)
    assert "3 bytes, 11 when written" in unshared_cache(tmp_path, meta)


def test_what_the_main_process_sends_the_others_survives_the_broadcast(tmp_path, tiny_pair, tokens, monkeypatch):
    """`setup.MainSetup` crosses processes pickled (`broadcast_object_list`): the others train with its pairing,
    map and fingerprint, and the teacher's facts read here off the teacher's own HF model."""
    import pickle

    import torch

    from semalign_lens.models.plain import underlying_hf
    from semalign_lens.training import loop

    sent = []
    monkeypatch.setattr(loop, "from_main", lambda acc, value, *a, **k: sent.append(value) or value)
    trainer = Trainer(make_cfg(tmp_path), tiny_pair, data=tokens)
    setup = pickle.loads(pickle.dumps(sent[0]))
    assert setup.pairs == trainer.pairs and setup.teacher_hash == trainer.identity["teacher_hash"]
    assert torch.equal(setup.transfer.matrix, trainer.transfer.matrix) and repr(setup.transfer) == repr(trainer.transfer)
    hf = underlying_hf(tiny_pair.teacher)
    assert (setup.teacher.blocks, setup.teacher.width, setup.teacher.head_rows, setup.teacher.dtype) == (
        hf.config.num_hidden_layers, hf.config.hidden_size, hf.get_output_embeddings().weight.shape[0], "float32")
