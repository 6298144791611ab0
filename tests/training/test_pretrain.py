"""Student pretraining: exact resume, atomic checkpoints, clear errors (a tiny config on a tiny corpus)."""

from __future__ import annotations

import json
import math
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from semalign_lens.core.config import from_dict
from semalign_lens.core.errors import SemalignError
from semalign_lens.data import corpus
from semalign_lens.models.tiny import tiny_tokenizer_dir
from semalign_lens.training import checkpoint
from semalign_lens.training.pretrain import PretrainConfig, batch_indices, pretrain

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name in ("abc.py", "bisect.py", "colorsys.py", "copy.py", "fnmatch.py", "glob.py", "heapq.py",
                 "keyword.py", "numbers.py", "shlex.py", "stat.py", "string.py"):
        shutil.copy(STDLIB / name, root / name)
    (root / "test").mkdir()
    shutil.copy(STDLIB / "this.py", root / "test" / "test_this.py")
    return root


def tiny_config(root: Path, **overrides) -> PretrainConfig:
    data = {"arch": {"n_layers": 2, "d_model": 32, "n_heads": 2, "n_kv_heads": 1, "d_mlp": 64,
                     "max_position_embeddings": 128},
            "teacher": str(tiny_tokenizer_dir()), "corpus": str(root), "val_fraction": 0.3, "seq_len": 64,
            "batch_size": 4, "total_tokens": 4 * 64 * 6, "warmup_steps": 2, "eval_every": 3, "log_every": 1,
            "eval_blocks": 4, "lr": 3e-3}
    data.update(overrides)
    return from_dict(PretrainConfig, data)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_corpus_excludes_test_directories(tiny_corpus):
    files = corpus.stdlib_files(tiny_corpus)
    assert len(files) == 12 and not any("test" in p.parts for p in files)
    assert corpus.stdlib_test_files(tiny_corpus) == [tiny_corpus / "test" / "test_this.py"]


def test_real_stdlib_split_is_deterministic_and_disjoint():
    files = corpus.stdlib_files()
    train, val = corpus.split_files(files, corpus.stdlib_root(), 0.02)
    assert not set(train) & set(val) and len(train) + len(val) == len(files)
    assert 0.005 < len(val) / len(files) < 0.05
    assert any(p.name == "topics.py" for p in files)
    assert corpus.split_files(files, corpus.stdlib_root(), 0.02)[1] == val


def test_batches_are_a_function_of_seed_and_step():
    a = batch_indices(10, 4, step=7, seed=1)
    assert torch.equal(a, batch_indices(10, 4, step=7, seed=1))
    epoch = torch.cat([batch_indices(10, 5, step=s, seed=1) for s in range(2)])
    assert sorted(epoch.tolist()) == list(range(10))  # one epoch visits every block once


def test_lr_schedule_warms_up_then_decays(tiny_corpus):
    """Pretraining's schedule is the aligner's (`schedule.warmup_then_decay`) over the whole run."""
    from semalign_lens.training.schedule import warmup_then_decay

    cfg = tiny_config(tiny_corpus, total_tokens=4 * 64 * 100, warmup_steps=10)
    lr_at = lambda step: warmup_then_decay(cfg.lr, step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)  # noqa: E731
    assert lr_at(0) == pytest.approx(cfg.lr / 10)
    assert lr_at(9) == pytest.approx(cfg.lr)
    assert lr_at(cfg.steps - 1) == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=0.01)


def test_resume_after_stop_reproduces_uninterrupted_run(tiny_corpus, tmp_path):
    cfg = tiny_config(tiny_corpus)
    whole = pretrain(cfg, tmp_path / "whole", progress=False)
    first = pretrain(cfg, tmp_path / "split", stop_after_steps=2, progress=False)
    assert not first["finished"]
    resumed = pretrain(cfg, tmp_path / "split", progress=False)
    assert resumed["finished"] and whole["finished"]
    split_losses = _losses(tmp_path / "split")
    assert split_losses.keys() == _losses(tmp_path / "whole").keys()
    for step, loss in _losses(tmp_path / "whole").items():
        assert split_losses[step] == pytest.approx(loss, abs=1e-6), step
    assert resumed["val_loss_full"] == pytest.approx(whole["val_loss_full"], abs=1e-6)
    # the learning rate each step trained at: warmup over 2 steps, then cosine to 0.1 x peak over the other 4
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    assert lr[1] == pytest.approx(peak / 2) and lr[2] == pytest.approx(peak)
    assert lr[6] == pytest.approx(floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
    assert whole["val_loss_full"] < math.log(384) - 0.1  # it learns: below chance after 6 steps


def test_interrupted_checkpoint_write_keeps_last_good(tiny_corpus, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_corpus)
    pretrain(cfg, tmp_path, stop_after_steps=2, progress=False)
    good = checkpoint.latest_checkpoint(tmp_path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path, stop_after_steps=1, progress=False)
    assert checkpoint.latest_checkpoint(tmp_path) == good
    monkeypatch.undo()
    assert pretrain(cfg, tmp_path, progress=False)["finished"]


def test_resume_with_other_config_is_refused(tiny_corpus, tmp_path):
    pretrain(tiny_config(tiny_corpus), tmp_path, stop_after_steps=1, progress=False)
    with pytest.raises(SemalignError, match=r"keys differ: \['lr'\]"):
        pretrain(tiny_config(tiny_corpus, lr=1e-3), tmp_path, progress=False)


def test_corpus_without_python_files(tmp_path):
    (tmp_path / "notes.txt").write_text("no python here")
    with pytest.raises(SemalignError, match="no .py files"):
        corpus.stdlib_files(tmp_path)


def test_heads_must_divide_width(tiny_corpus):
    with pytest.raises(SemalignError, match="not divisible by n_heads"):
        tiny_config(tiny_corpus, arch={"d_model": 30, "n_heads": 4, "n_kv_heads": 2})


def test_unknown_config_key_is_named(tiny_corpus):
    with pytest.raises(SemalignError, match=r"unknown key\(s\) \['learning_rate'\].*valid keys"):
        tiny_config(tiny_corpus, learning_rate=1.0)


def test_own_bpe_tokenizer_trains_exports_and_refuses_distillation(tiny_corpus, tmp_path):
    from transformers import AutoTokenizer

    from semalign_lens.training.bpe import train_bpe
    from semalign_lens.training.pretrain import export_student

    files = corpus.stdlib_files(tiny_corpus)
    tok_dir = train_bpe(files, 400, tmp_path / "bpe")
    again = train_bpe(files, 400, tmp_path / "bpe2")
    assert (tok_dir / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()  # deterministic
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    text = corpus.read_text(files[0])
    assert len(tok) == 400 and tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    cfg = tiny_config(tiny_corpus, tokenizer=str(tok_dir), name="tiny-bpe")
    assert pretrain(cfg, tmp_path / "run", progress=False)["finished"]
    out = export_student(tmp_path / "run", tmp_path / "exported")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 400
    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == tok.get_vocab()
    with pytest.raises(SemalignError, match="distill_weight > 0 needs the teacher's tokenizer"):
        tiny_config(tiny_corpus, tokenizer=str(tok_dir), distill_weight=0.5).validate()
    with pytest.raises(SemalignError, match="has no tokenizer.json"):
        pretrain(tiny_config(tiny_corpus, tokenizer=str(tmp_path)), tmp_path / "run2", progress=False)


def test_train_tokenizer_reproduces_the_shipped_8k_vocabulary(tmp_path):
    """`semalign zoo train-tokenizer` on this Python's standard library gives the shipped student's tokenizer:
    the same vocabulary and merges (deterministic; the student's card depends on it)."""
    import platform

    from semalign_lens.models.zoo import STUDENT_8K_DIR
    from semalign_lens.training.bpe import train_corpus_bpe

    if f"CPython {platform.python_version()} " not in (STUDENT_8K_DIR / "MODEL_CARD.md").read_text():
        pytest.skip(f"the shipped tokenizer was learned on another Python's standard library than "
                    f"{platform.python_version()} (see its card)")
    shipped = json.loads((STUDENT_8K_DIR / "tokenizer.json").read_text())
    fresh = json.loads((train_corpus_bpe(8192, tmp_path / "bpe") / "tokenizer.json").read_text())
    assert fresh["model"]["vocab"] == shipped["model"]["vocab"]
    assert fresh["model"]["merges"] == shipped["model"]["merges"]


def test_model_card_of_a_student_with_its_own_tokenizer(tiny_corpus, tmp_path):
    """The card names the student, its tokenizer's origin, the bits-per-byte table and the retrain commands
    (train-tokenizer first, then the student's own config)."""
    import pandas as pd

    from semalign_lens.reports.model_card import write_model_card
    from semalign_lens.training.bpe import train_bpe
    from semalign_lens.training.pretrain import export_student

    tok_dir = train_bpe(corpus.stdlib_files(tiny_corpus), 400, tmp_path / "bpe")
    cfg = tiny_config(tiny_corpus, tokenizer=str(tok_dir), name="tiny-bpe-student")
    pretrain(cfg, tmp_path / "run", progress=False)
    out = export_student(tmp_path / "run", tmp_path / "exported")
    bpb = pd.DataFrame([{"set": "stdlib_val", "description": "d", "bytes": 100, "a_bpb": 1.25, "b_bpb": 2.5}])
    card = write_model_card(tmp_path / "run", out, val_loss=3.0, bits_per_byte=bpb).read_text()
    assert card.startswith("# tiny-bpe-student\n") and "own 400-token byte-level BPE" in card
    assert "| stdlib_val |" in card and "2.500" in card
    assert f"semalign zoo train-tokenizer --vocab-size 400 --out {tok_dir}" in card
    assert "--config semalign_lens/models/zoo/configs/tiny_bpe_student.json --run-dir runs/tiny-bpe-student" in card
    assert json.loads((out / "metrics.json").read_text())["bits_per_byte"][0]["b_bpb"] == 2.5
