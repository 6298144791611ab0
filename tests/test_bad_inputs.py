"""Every bad input gives one line, exit code 2 (CLI) or a `SemalignError` (API), no traceback, nothing lost.

The cases and their messages are tabulated in docs/bad_inputs.md. Tiny random models only (nothing is
downloaded, the real teacher is never touched). The CLI cases run as subprocesses (`HF_HUB_OFFLINE=1`), a few
at a time, once per module (`cli_results`); every file under the fixture tree — a finished align run with
its checkpoints, a demo directory with its report.html, the model directories — is hashed before and after,
and must be byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from semalign_lens.core.errors import SemalignError, one_line

LATIN1 = "caf\xe9 cr\xe8me\n".encode("latin-1")  # not UTF-8: byte 0xe9


# ----------------------------------------------------------------------------------------------- the fixture tree

def _save(model, tok, out: Path) -> Path:
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _copy_model(src: Path, out: Path, drop=(), **files) -> Path:
    shutil.copytree(src, out)
    for pattern in drop:
        for path in out.glob(pattern):
            path.unlink()
    for name, content in files.items():
        (out / name.replace("__", ".")).write_bytes(content if isinstance(content, bytes) else content.encode())
    return out


def _read_only_dir(root: Path) -> Path | None:
    """A directory nothing can be created in: chmod 555 for a normal user; /proc for root (root ignores the
    permission bits); None where neither exists."""
    from semalign_lens.core.checks import _writable

    if os.geteuid() != 0:
        ro = root / "read-only"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    proc = Path("/proc")
    return proc if proc.is_dir() and not _writable(proc) else None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from transformers import BertConfig, BertLMHeadModel

    from semalign_lens.models.tiny import TinyArch, tiny_hf_model, tiny_hf_pair
    from semalign_lens.training import align, load_align_config

    root = tmp_path_factory.mktemp("bad-inputs")
    t_hf, s_hf, tok = tiny_hf_pair(seed=0)
    teacher, student = _save(t_hf, tok, root / "teacher"), _save(s_hf, tok, root / "student")
    _save(tiny_hf_model(TinyArch(8, 32, 2, 1, 64), len(tok), 5), tok, root / "deep")  # 8 blocks > 6
    weights = (teacher / "model.safetensors").read_bytes()
    _copy_model(teacher, root / "trunc", model__safetensors=weights[: len(weights) // 2])
    _copy_model(teacher, root / "garbage", model__safetensors=os.urandom(4096))
    _copy_model(teacher, root / "zero", model__safetensors=b"")
    _copy_model(teacher, root / "notok", drop=["tokenizer*"])
    _copy_model(teacher, root / "noweights", drop=["*.safetensors"])
    _copy_model(teacher, root / "badcfg", config__json="{not json")
    _copy_model(teacher, root / "cfgonly", drop=["*"], config__json=json.dumps({"lr": 0.1, "steps": 3}))
    bert = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, is_decoder=True)
    _copy_model(teacher, root / "mismatch", config__json=bert.to_json_string())  # Llama weights, BERT config
    _copy_model(teacher, root / "badtype", config__json=json.dumps({"model_type": "no_such_arch"}))
    # another tokenizer (400 tokens) under a 400-row head: a head padded beyond one tokenizer would be accepted
    from semalign_lens.models.tiny import TINY_STUDENT, tiny_tokenizer

    other_tok = tiny_tokenizer(vocab_size=400)
    _save(tiny_hf_model(TINY_STUDENT, len(other_tok), 1), other_tok, root / "othervocab")
    assert BertLMHeadModel  # the mismatch case needs the class to exist in this transformers
    from semalign_lens.models.load import save_model
    from semalign_lens.models.tiny import tiny_native_bridge

    native = save_model(tiny_native_bridge("native", TinyArch(2, 32, 2, 1, 64), tok, 0), root / "native")
    native_cfg = json.loads((native / "config.json").read_text())
    _copy_model(native, root / "native-nocfg", config__json=json.dumps(
        {k: v for k, v in native_cfg.items() if k != "transformer_lens_config"}))
    _copy_model(native, root / "native-deeper", config__json=json.dumps(  # 3 blocks' config, 2 blocks' weights
        {**native_cfg, "transformer_lens_config": {**native_cfg["transformer_lens_config"], "n_layers": 3}}))
    (root / "empty").mkdir()
    (root / "gguf-dir").mkdir()
    (root / "gguf-dir" / "model.gguf").write_text("not a gguf")
    (root / "fake.gguf").write_text("hello, not GGUF")
    (root / "notmodel.json").write_text(json.dumps({"a": 1}))
    (root / "afile").write_text("a plain file\n")
    from safetensors.torch import save_file  # layer states for `semalign similarity`: 40 tokens, 30, one NaN

    gen = torch.Generator().manual_seed(0)
    states = torch.randn(3, 40, 8, generator=gen)
    save_file({"states": states}, str(root / "states-a.safetensors"))
    save_file({f"layer.{i}": torch.randn(30, 4, generator=gen) for i in range(2)}, str(root / "states-short.safetensors"))
    states[1, 5, 2] = float("nan")
    save_file({"states": states}, str(root / "states-nan.safetensors"))

    text = root / "text"
    text.mkdir()
    for module in (json, textwrap):
        shutil.copy(module.__file__, text / f"{module.__name__}.py")
    (root / "bad.txt").write_bytes(b"def f():\n    return 1\n" + LATIN1)
    (root / "baddir").mkdir()
    shutil.copy(textwrap.__file__, root / "baddir" / "good.py")
    (root / "baddir" / "legacy.py").write_bytes(b"# " + LATIN1)
    (root / "bad.jsonl").write_bytes(b'{"text": "' + LATIN1.strip() + b'"}\n')
    (root / "notjson.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (root / "textnum.jsonl").write_text('{"text": 3}\n')
    (root / "empty.txt").write_text("")
    (root / "data.json").write_text(json.dumps({"text": "x"}))
    pair = {"clean": "The capital of France is", "corrupted": "The capital of Italy is", "answer": " Paris"}
    (root / "badtask.jsonl").write_bytes(json.dumps(pair).encode()[:-2] + b' \xe9"}\n')
    (root / "malformed.json").write_text(json.dumps([{"clean": "a"}, {"clean": "b", "corrupted": "b", "answer": "c"}]))
    (root / "task.txt").write_text(json.dumps(pair))
    (root / "emptytask.jsonl").write_text("\n")

    config = {"teacher": str(teacher), "student": str(student), "run_dir": str(root / "run"), "progress": False,
              "report": False, "figures": False,
              "data": {"source": str(text), "seq_len": 32, "n_sequences": 8, "batch_size": 4, "diag_sequences": 2},
              "schedule": {"stage_steps": 1, "lr": 1e-2}, "objective": {"terms": {"relation": 1.0}}}
    (root / "run.json").write_text(json.dumps(config))
    result = align(load_align_config(root / "run.json"))  # a previous good run: checkpoints, student/, final.json
    assert result.finished and (root / "run" / "checkpoints").is_dir()
    ckpt = sorted((root / "run" / "checkpoints").glob("step-*"))[-1]

    (root / "demo").mkdir()
    (root / "demo" / "report.html").write_text("<html>the previous demo</html>")
    (root / "demo" / "results.csv").write_text("model,score\nteacher,1\n")

    pretrain = root / "pretrain-run"  # enough of a pretraining run for export-student to reach its --out check
    pretrain.mkdir()
    from semalign_lens.core.config import to_dict
    from semalign_lens.training.pretrain import PretrainConfig

    (pretrain / "config.json").write_text(json.dumps(to_dict(PretrainConfig())))
    shutil.copytree(ckpt, pretrain / "checkpoints" / ckpt.name)
    (pretrain / "latest.json").write_text(json.dumps({"step": 1, "path": f"checkpoints/{ckpt.name}"}))
    return SimpleNamespace(root=root, teacher=teacher, student=student, ckpt=ckpt, tok=tok,
                           read_only=_read_only_dir(root))


def _snapshot(root: Path, content: bool = True) -> dict[str, object]:
    """Every path under `root`: its sha256 (`content`), else its size and mtime (cheaper, as strict for writes)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel] = "dir"
        elif content:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = (path.stat().st_size, path.stat().st_mtime_ns)
    return out


# ----------------------------------------------------------------------------------------------- CLI

ALIGN = ["align", "--config", "run.json"]
# (id, argv, substrings the error line must hold, paths that must stay byte-identical)
# {ro} is a read-only directory; cases using it are skipped where none exists.
CLI_CASES = [
    ("info-truncated-safetensors", ["info", "trunc"], ["trunc/model.safetensors", "truncated", "re-download"], []),
    # TransformerLens short names resolve to their Hub id, which offline fails fast naming the resolved id
    ("info-short-hub-name-offline", ["info", "pythia-70m"], ["'EleutherAI/pythia-70m'", "HF_HUB_OFFLINE=1"], []),
    ("info-unknown-short-name", ["info", "notamodel"], ["'notamodel'", "short name TransformerLens knows"], []),
    ("info-corrupt-safetensors", ["info", "garbage"], ["garbage/model.safetensors", "corrupt", "re-download"], []),
    ("info-no-tokenizer", ["info", "notok"], ["no tokenizer files", "tokenizer.save_pretrained"], []),
    ("info-config-not-a-model", ["info", "cfgonly"], ["not a Hugging Face model config"], []),
    ("info-align-run-dir", ["info", "run"], ["run directory", "run/student"], ["run"]),
    ("info-checkpoint-dir", ["info", "run/checkpoints/{ckpt}"], ["training checkpoint", "run/student"], ["run"]),
    ("info-missing-path", ["info", "./no/such/dir"], ["neither a zoo name, an existing path"], []),
    ("info-fake-gguf", ["info", "fake.gguf"], ["not a GGUF file"], []),
    ("info-second-source-bad", ["info", "teacher", "trunc"], ["trunc/model.safetensors", "truncated"], []),
    ("report-task-not-utf8", ["report", "pairing", "teacher", "student", "--task", "badtask.jsonl"],
     ["badtask.jsonl is not UTF-8", "byte 0xe9"], []),
    ("report-task-malformed", ["report", "pairing", "teacher", "student", "--task", "malformed.json"],
     ["3 malformed record(s)", "missing field 'corrupted'", "are the same text"], []),
    ("report-out-not-html", ["report", "pairing", "teacher", "student", "--out", "report.txt"], ["must end in .html"],
     []),
    ("report-out-read-only", ["report", "pairing", "teacher", "student", "--out", "{ro}/r.html"], ["not writable"], []),
    ("report-teacher-shallower", ["report", "pairing", "student", "teacher"],
     ["has 3 blocks but student teacher has 6", "at least as deep"], []),
    ("report-prompts-not-int", ["report", "pairing", "teacher", "student", "--prompts", "x"],
     ["invalid int value: 'x'", "usage: semalign report pairing"], []),
    ("report-knn-k-above-tokens", ["report", "pairing", "teacher", "student", "--knn-k", "5000"],
     ["knn_k = 5000 neighbours needs fewer than knn_tokens = 1024"], []),
    ("report-cka-alone", ["report", "pairing", "teacher", "student", "--measures", "cka"], ["are CKA alone"], []),
    ("report-stitch-without-stitching", ["report", "pairing", "teacher", "student", "--strategy", "stitch"],
     ["stitching=True", "--stitching"], []),
    ("similarity-different-token-counts", ["similarity", "states-a.safetensors", "states-short.safetensors"],
     ["xs covers tokens (40,) and ys (30,)", "same token batch"], []),
    ("similarity-k-larger-than-n", ["similarity", "states-a.safetensors", "states-a.safetensors", "--measures",
                                    "mutual_knn", "--knn-k", "50"], ["k = 50 neighbours needs 1 <= k < n", "(40)"], []),
    ("similarity-nan-states", ["similarity", "states-a.safetensors", "states-nan.safetensors"],
     ["layer 1 of ys contains NaN or inf"], []),
    ("similarity-unknown-measure", ["similarity", "states-a.safetensors", "states-a.safetensors", "--measures", "cca"],
     ["unknown similarity measures ['cca']", "procrustes"], []),
    ("similarity-not-a-states-file", ["similarity", "fake.gguf", "states-a.safetensors"],
     ["fake.gguf must end in .safetensors, .npy, .pt"], []),
    ("align-data-not-utf8", [*ALIGN, "--set", "run_dir=r1", "--set", "data.source=bad.txt"],
     ["bad.txt is not UTF-8", "byte 0xe9"], []),
    ("align-data-dir-not-utf8", [*ALIGN, "--set", "run_dir=r1", "--set", "data.source=baddir"],
     ["baddir/legacy.py is not UTF-8"], []),
    ("align-teacher-shallower", [*ALIGN, "--set", "run_dir=r1", "--set", "student=deep"],
     ["has 6 blocks but student deep has 8", "at least as deep"], []),
    ("align-student-truncated", [*ALIGN, "--set", "run_dir=r1", "--set", "student=trunc"],
     ["trunc/model.safetensors", "truncated"], []),
    ("align-run-dir-is-file", [*ALIGN, "--set", "run_dir=afile"], ["run_dir afile is an existing file"], ["afile"]),
    ("align-run-dir-is-model", [*ALIGN, "--set", "run_dir=teacher"], ["would overwrite"], ["teacher"]),
    ("align-run-dir-read-only", [*ALIGN, "--set", "run_dir={ro}/run"], ["not writable"], []),
    ("align-run-dir-other-run", [*ALIGN, "--set", "schedule.lr=0.5"], ["holds a run with other inputs",
                                                                        "config.schedule.lr"], ["run"]),
    ("align-student-layers", [*ALIGN, "--set", "run_dir=r1", "--set", "pairing.student_layers=[7]"],
     ["pairing.student_layers [7]", "3 blocks"], []),
    ("align-cross-pair-cached", [*ALIGN, "--set", "run_dir=r1", "--set", "vocab=intersection", "--set",
                                 "targets.mode=cached"], ["vocab = 'intersection'", "targets.mode = 'online'"], []),
    ("align-cross-pair-kl", [*ALIGN, "--set", "run_dir=r1", "--set", "vocab=intersection", "--set",
                             "objective.terms={{kl = 1.0}}"], ["compares teacher and student logits", "'shared_kl'"], []),
    ("align-vocab-unknown", [*ALIGN, "--set", "run_dir=r1", "--set", "vocab=both"],
     ["AlignConfig.vocab must be one of ('shared', 'intersection')"], []),
    ("align-tail-samples-without-top-k", [*ALIGN, "--set", "run_dir=r1", "--set", "targets.tail_samples=16"],
     ["targets.tail_samples = 16 refines a top-k cache", "cache_logits = 'topk'"], []),
    ("align-tracker-unknown", [*ALIGN, "--set", "run_dir=r1", "--set", 'trackers=["tensorbored"]'],
     ["unknown tracker 'tensorbored'", "'tensorboard'"], []),
    ("align-tracker-not-installed", [*ALIGN, "--set", "run_dir=r1", "--set", 'trackers=["comet_ml"]'],
     ["tracker 'comet_ml' is not installed; pip install 'comet_ml'"], []),
    ("demo-out-is-file", ["demo", "--out", "afile"], ["afile is an existing file"], ["afile"]),
    ("demo-out-read-only", ["demo", "--out", "{ro}/demo"], ["not writable"], []),
    ("demo-unknown-profile", ["demo", "--profile", "huge", "--out", "demo"], ["unknown demo profile 'huge'"], ["demo"]),
    ("export-run-dir-is-align-run", ["zoo", "export-student", "--run-dir", "run", "--out", "exp"],
     ["`semalign align` run directory"], ["run"]),
    ("export-out-is-file", ["zoo", "export-student", "--run-dir", "pretrain-run", "--out", "afile"],
     ["afile is an existing file"], ["afile", "pretrain-run"]),
    ("unknown-command", ["nope"], ["invalid choice: 'nope'"], []),
]


def _argv(argv: list[str], env) -> list[str] | None:
    if any("{ro}" in a for a in argv) and env.read_only is None:
        return None
    return [a.format(ro=env.read_only, ckpt=env.ckpt.name) for a in argv]


CLI_GROUP = 8  # cases run together (three processes at a time), so that no one test waits for them all


@pytest.fixture(scope="module")
def cli_results(env):
    """`cli_results(i)`: (results, snapshot before, snapshot after) of the group of CLI cases holding case i, run
    on first use."""
    run_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    groups = {}

    def run(case):
        argv = _argv(case[1], env)
        if argv is None:
            return case[0], None
        return case[0], subprocess.run([sys.executable, "-m", "semalign_lens", *argv], capture_output=True,
                                       text=True, timeout=300, cwd=env.root, env=run_env)

    def results(index: int):
        group = index // CLI_GROUP
        if group not in groups:
            before = _snapshot(env.root)
            with ThreadPoolExecutor(3) as pool:
                done = dict(pool.map(run, CLI_CASES[group * CLI_GROUP: (group + 1) * CLI_GROUP]))
            groups[group] = (done, before, _snapshot(env.root))
        return groups[group]

    return results


@pytest.mark.xdist_group("bad-inputs-cli")
@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_exit_2_and_loses_nothing(case, cli_results):
    name, _, expected, kept = case
    results, before, after = cli_results(CLI_CASES.index(case))
    proc = results[name]
    if proc is None:
        pytest.skip("no read-only directory on this machine")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines and lines[-1].startswith("semalign: error: "), proc.stderr[-3000:]
    assert len(lines) == 1, f"refused up front, yet stderr has more than the error line:\n{proc.stderr[-3000:]}"
    for text in expected:
        assert text in lines[-1], (text, lines[-1])
    for prefix in kept:
        changed = {k for k in set(before) | set(after) if (k == prefix or k.startswith(prefix + "/"))
                   and before.get(k) != after.get(k)}
        assert not changed, f"{name} changed {sorted(changed)[:5]}"


@pytest.mark.xdist_group("bad-inputs-cli")
def test_refused_commands_wrote_nothing_anywhere(cli_results):
    for index in range(0, len(CLI_CASES), CLI_GROUP):
        _, before, after = cli_results(index)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        assert not changed, changed[:10]


# ----------------------------------------------------------------------------------------------- Python API

def _api_cases():
    from semalign_lens.core.checks import check_output_dir, check_output_file, read_utf8
    from semalign_lens.data.tasks import load_task, tokenize_pairs
    from semalign_lens.data.tokens import TokenBatch, tokenize
    from semalign_lens.demo import run_demo
    from semalign_lens.lens import attribution, pairing, similarity
    from semalign_lens.lens import capture as activations
    from semalign_lens.lens.inspection import InspectionSettings, inspect_pairing
    from semalign_lens.lens.measures.states_file import load_states
    from semalign_lens.lens.overview import architecture_table, residual_norms
    from semalign_lens.lens.semantics import SemanticBasis, TransferMap
    from semalign_lens.models.inspect import describe
    from semalign_lens.models.load import check_safetensors, load_model
    from semalign_lens.models.pair import ModelPair
    from semalign_lens.models.residuals import residual_states
    from semalign_lens.reports.pairing import pairing_report
    from semalign_lens.training import Trainer, align, load_align_config
    from semalign_lens.training.pretrain import export_student

    def batch(ctx):
        return tokenize(ctx.tok, ["def f(x):", "import os"])

    def pairs(ctx):
        return tokenize_pairs(ctx.tok, load_task("facts", tokenizer=ctx.tok, n=4), align="left_pad")

    def cfg(ctx, **over):
        return load_align_config(ctx.root / "run.json", {"run_dir": str(ctx.root / "api-run"), **over})

    def tokens(ctx):
        ids = torch.randint(1, 300, (12, 16), generator=torch.Generator().manual_seed(0))
        return TokenBatch(ids, torch.ones_like(ids, dtype=torch.bool))

    hf = "plain Hugging Face model.*load_model\\(model, tokenizer=tok\\)"
    return [
        # model sources
        ("load-truncated", lambda c: load_model(c.root / "trunc"), "trunc/model.safetensors is truncated"),
        ("load-corrupt", lambda c: load_model(c.root / "garbage"), "garbage/model.safetensors is corrupt"),
        ("load-no-tokenizer", lambda c: load_model(c.root / "notok"), "no tokenizer files"),
        ("load-no-weights", lambda c: load_model(c.root / "noweights"), "no weights"),
        ("load-config-not-json", lambda c: load_model(c.root / "badcfg"), "not valid JSON"),
        ("load-config-not-model", lambda c: load_model(c.root / "cfgonly"), "not a Hugging Face model config"),
        ("load-run-dir", lambda c: load_model(c.root / "run"), "`semalign align` run directory.*run/student"),
        ("load-checkpoint", lambda c: load_model(c.ckpt), "training checkpoint"),
        ("load-empty-dir", lambda c: load_model(c.root / "empty"), "without config.json"),
        ("load-missing", lambda c: load_model(str(c.root / "nope")), "neither a zoo name"),
        ("load-empty-string", lambda c: load_model(""), "empty model source"),
        ("load-fake-gguf", lambda c: load_model(c.root / "fake.gguf"), "not a GGUF file"),
        ("load-missing-gguf", lambda c: load_model(c.root / "missing.gguf"), "GGUF file .*missing.gguf does not exist"),
        ("load-json-file", lambda c: load_model(c.root / "notmodel.json"), "not a GGUF file"),
        ("load-weights-file", lambda c: load_model(c.teacher / "model.safetensors"), "pass the directory itself"),
        ("load-dir-of-gguf", lambda c: load_model(c.root / "gguf-dir"), "pass the .gguf file itself"),
        ("load-empty-safetensors", lambda c: load_model(c.root / "zero"), "zero/model.safetensors is truncated"),
        ("load-config-weights-mismatch", lambda c: load_model(c.root / "mismatch"), "do not fit its config.json"),
        ("load-unknown-architecture", lambda c: load_model(c.root / "badtype"), "could not load the model.*no_such_arch"),
        ("load-native-no-tl-config", lambda c: load_model(c.root / "native-nocfg"),
         "TransformerLens-native model but its transformer_lens_config is unreadable"),
        ("load-native-weights-mismatch", lambda c: load_model(c.root / "native-deeper"),
         "do not fit its config.json \\(\\d+ parameter\\(s\\) missing"),
        ("load-int", lambda c: load_model(3), "cannot load a model from int"),
        ("load-hf-without-tokenizer", lambda c: load_model(c.hf[0]), "needs its tokenizer"),
        ("load-unknown-mode", lambda c: load_model(c.hf[0], tokenizer=c.tok, mode="fast"), "mode must be one of"),
        ("load-dtype-string", lambda c: load_model(c.hf[0], tokenizer=c.tok, dtype="float32"), "torch.dtype"),
        ("load-tokenizer-string", lambda c: load_model(c.hf[0], tokenizer="gpt2"), "Hugging Face tokenizer"),
        ("transfer-map-load-corrupt", lambda c: TransferMap.load(c.root / "garbage" / "model.safetensors"),
         "transfer map file .* is corrupt"),
        ("basis-load-truncated", lambda c: SemanticBasis.load(c.root / "trunc" / "model.safetensors"),
         "semantic basis file .* is truncated"),
        ("check-safetensors-empty", lambda c: check_safetensors(c.root / "zero" / "model.safetensors"), "truncated"),
        # plain HF models where hooked ones are expected
        ("pair-hf-models", lambda c: ModelPair(c.hf[0], c.hf[1]), "teacher is a " + hf),
        ("pair-hf-student", lambda c: ModelPair(c.pair.teacher, c.hf[1]), "student is a " + hf),
        ("pair-none", lambda c: ModelPair(None, c.pair.student), "must be a model source"),
        ("pair-teacher-shallower", lambda c: ModelPair(c.pair.student, c.pair.teacher), "3 blocks but .* has 6"),
        ("capture-hf", lambda c: activations.capture(c.hf[0], batch(c), [0]), hf),
        ("capture-string", lambda c: activations.capture("tiny", batch(c), [0]), "load_model\\('tiny'\\)"),
        ("residual-states-layer-out-of-range", lambda c: residual_states(c.hf[0], batch(c).tokens, [6]),
         "layer index 6 is out of range for 6-layer model LlamaForCausalLM; valid layers are 0..5"),
        ("describe-hf", lambda c: describe(c.hf[0]), hf),
        ("residual-norms-hf", lambda c: residual_norms(c.hf[0], batch(c)), hf),
        ("rank-layers-hf", lambda c: attribution.rank_layers(c.hf[0], pairs(c), methods=["grad_x_act"]), hf),
        ("grad-x-act-hf", lambda c: attribution.grad_x_activation(c.hf[0], pairs(c)), hf),
        ("patching-hf", lambda c: attribution.activation_patching(c.hf[0], pairs(c)), hf),
        ("seeking-hf", lambda c: attribution.parameter_sensitivity(c.hf[0], pairs(c)), hf),
        ("basis-hf", lambda c: SemanticBasis.from_model(c.hf[0]), hf),
        ("pairing-check-hf", lambda c: pairing.pair_proportional(6, 3).check_models(c.hf[0], c.hf[1]), hf),
        ("report-hf", lambda c: pairing_report(c.hf[0], c.pair.student, out_path=c.root / "api.html"), hf),
        ("trainer-hf", lambda c: Trainer(cfg(c), ModelPair(c.hf[0], c.pair.student), data=tokens(c)), hf),
        ("trainer-not-a-pair", lambda c: Trainer(cfg(c), c.pair.teacher, data=tokens(c)), "pair must be a ModelPair"),
        # capture / attribution / similarity arguments
        ("capture-layer-out-of-range", lambda c: activations.capture(c.pair.teacher, batch(c), [6]), "out of range"),
        ("capture-no-layers", lambda c: activations.capture(c.pair.teacher, batch(c), []), "no layers requested"),
        ("capture-batch-size-zero", lambda c: activations.capture(c.pair.teacher, batch(c), [0], batch_size=0),
         "batch_size must be a whole number >= 1"),
        ("capture-not-a-batch", lambda c: activations.capture(c.pair.teacher, ["text"], [0]), "needs a TokenBatch"),
        ("capture-ids-outside-vocab", lambda c: activations.capture(
            c.pair.teacher, TokenBatch(torch.tensor([[0, 5000]]), torch.ones(1, 2, dtype=torch.bool)), [0]),
         "outside the model's vocabulary of 384"),
        ("capture-shard-dir-is-file", lambda c: activations.capture(c.pair.teacher, batch(c), [0],
                                                                    shard_dir=c.root / "afile"), "existing file"),
        ("rank-unknown-method", lambda c: attribution.rank_layers(c.pair.teacher, pairs(c), methods=["magic"]),
         "unknown method"),
        ("rank-no-methods", lambda c: attribution.rank_layers(c.pair.teacher, pairs(c), methods=[]), "no methods given"),
        ("rank-n-boot-zero", lambda c: attribution.rank_layers(c.pair.teacher, pairs(c), methods=["grad_x_act"],
                                                               n_boot=0), "n_boot"),
        ("cka-empty", lambda c: similarity.cka_matrix([]), "holds no layers"),
        ("cka-one-token", lambda c: similarity.cka_matrix([torch.randn(1, 4)]), "at least 2 tokens"),
        ("cka-chunk-zero", lambda c: similarity.cka_matrix([torch.randn(8, 4)], chunk_size=0), "chunk_size"),
        ("cka-token-mismatch", lambda c: similarity.cka_matrix([torch.randn(8, 4)], [torch.randn(7, 4)]),
         "same token batch"),
        ("basis-no-tokens", lambda c: SemanticBasis.from_model(c.pair.teacher, tokens=[]), "non-empty"),
        ("transfer-map-not-bases", lambda c: TransferMap("teacher", "student"), "needs SemanticBasis objects"),
        # pairing
        ("pairing-unknown-strategy", lambda c: pairing.make_pairing("random", 6, 3), "unknown pairing strategy"),
        ("pairing-zero-layers", lambda c: pairing.make_pairing("proportional", 0, 3), "positive integer"),
        ("pairing-negative-layers", lambda c: pairing.make_pairing("proportional", 6, -3), "positive integer"),
        ("pairing-student-layer-out-of-range", lambda c: pairing.make_pairing("proportional", 6, 3, student_layers=[5]),
         "student layer 5"),
        ("pairing-no-student-layers", lambda c: pairing.make_pairing("proportional", 6, 3, student_layers=[]),
         "student layer"),
        ("pairing-unknown-option", lambda c: pairing.make_pairing("proportional", 6, 3, depth=2),
         "unknown option.*'depth'.*interpolate"),
        ("pairing-file-not-utf8", lambda c: pairing.LayerPairing.load(c.root / "bad.txt"), "is not UTF-8"),
        # text, tasks, files
        ("tokenize-empty-list", lambda c: tokenize(c.tok, []), "empty prompt list"),
        ("tokenize-no-tokenizer", lambda c: tokenize(None, ["abc"]), "Hugging Face tokenizer"),
        ("tokenize-none", lambda c: tokenize(c.tok, None), "list of strings"),
        ("tokenize-not-strings", lambda c: tokenize(c.tok, [1, 2]), "text #0 is a int"),
        ("tokenize-max-len-zero", lambda c: tokenize(c.tok, ["abc"], max_len=0), "max_len"),
        ("task-not-utf8", lambda c: load_task(c.root / "badtask.jsonl"), "badtask.jsonl is not UTF-8"),
        ("task-missing", lambda c: load_task(c.root / "nope.jsonl"), "neither a built-in task"),
        ("task-wrong-suffix", lambda c: load_task(c.root / "task.txt"), "must end in .json or .jsonl"),
        ("task-zero-pairs", lambda c: load_task("facts", n=0), "at least 1"),
        ("task-empty", lambda c: load_task(c.root / "emptytask.jsonl"), "has no prompt pairs"),
        ("output-file-is-dir", lambda c: check_output_file(c.root / "demo", "--out", (".html",)), "is a directory"),
        ("read-utf8-dir", lambda c: read_utf8(c.root / "empty"), "is a directory"),
        ("pairing-save-to-dir", lambda c: pairing.pair_proportional(6, 3).save(c.root / "empty"), "is a directory"),
        ("task-save-under-file", lambda c: load_task("facts", n=2).save(c.root / "afile" / "t.jsonl"),
         "afile is a file"),
        ("token-batch-lists", lambda c: TokenBatch([[1, 2]], [[True, True]]), "TokenBatch needs tensors"),
        ("architecture-table-empty", lambda c: architecture_table(), "at least one model"),
        ("output-dir-under-file", lambda c: check_output_dir(c.root / "afile" / "out"), "afile is a file"),
        # runs, reports, the demo
        ("trainer-run-dir-is-file", lambda c: Trainer(cfg(c, run_dir=str(c.root / "afile")), c.pair, data=tokens(c)), "existing file"),
        ("trainer-teacher-shallower", lambda c: Trainer(cfg(c), ModelPair(c.pair.student, c.pair.teacher),
                                                        data=tokens(c)), "at least as deep"),
        ("trainer-data-not-utf8", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "bad.txt")}),
                                                    c.pair),
         "bad.txt is not UTF-8"),
        ("trainer-data-text-not-string", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "textnum.jsonl")}),
                                                           c.pair),
         "'text' must be a string"),
        ("trainer-transfer-kind", lambda c: Trainer(cfg(c, **{"transfer.kind": "magic"}), c.pair), "transfer.kind must be one of"),
        ("trainer-config-dict", lambda c: Trainer({"teacher": "tiny"}), "config must be an AlignConfig"),
        ("align-stop-after-negative", lambda c: align(cfg(c), stop_after_steps=-1), "stop_after_steps"),
        ("trainer-data-jsonl-not-utf8", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "bad.jsonl")}), c.pair),
         "bad.jsonl is not UTF-8"),
        ("trainer-data-jsonl-not-json", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "notjson.jsonl")}), c.pair),
         "line 2 is not a JSON object"),
        ("trainer-data-empty", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "empty.txt")}), c.pair),
         "holds no text"),
        ("trainer-data-wrong-suffix", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "data.json")}), c.pair),
         "is a .json file"),
        ("trainer-data-missing", lambda c: Trainer(cfg(c, **{"data.source": str(c.root / "nope")}), c.pair),
         "is neither 'code-transfer'"),
        ("trainer-pairs-out-of-range", lambda c: Trainer(cfg(c, **{"pairing.pairs": [[0, 9, 9, 0.0]]}), c.pair),
         "teacher layer 9"),
        ("trainer-pairing-file-missing", lambda c: Trainer(cfg(c, **{"pairing.path": str(c.root / "nope.json")}), c.pair),
         "does not exist"),
        ("trainer-transfer-file-missing", lambda c: Trainer(cfg(c, **{"transfer.path": str(c.root / "nope.safetensors")}), c.pair),
         "transfer.path .* does not exist"),
        ("trainer-vocab-size", lambda c: Trainer(cfg(c, student=str(c.root / "othervocab")), data=tokens(c)),
         "vocabularies differ in size.*384.*400"),
        ("export-run-dir-missing", lambda c: export_student(c.root / "nope", c.root / "exp"), "not a directory"),
        ("report-unknown-strategy", lambda c: pairing_report(c.pair.teacher, c.pair.student, strategy="random",
                                                             out_path=c.root / "r.html"), "unknown pairing strategy"),
        ("report-student-truncated", lambda c: pairing_report(c.pair.teacher, c.root / "trunc",
                                                              out_path=c.root / "r.html"), "truncated"),
        ("report-out-not-html", lambda c: pairing_report(c.pair.teacher, c.pair.student, out_path=c.root / "r.txt"),
         "must end in .html"),
        ("report-one-prompt", lambda c: pairing_report(c.pair.teacher, c.pair.student, n_prompts=1,
                                                       out_path=c.root / "r.html"), "n_prompts"),
        ("report-unknown-metric", lambda c: pairing_report(c.pair.teacher, c.pair.student, metric="acc",
                                                           out_path=c.root / "r.html"), "unknown metric"),
        ("report-knn-k-above-tokens", lambda c: pairing_report(c.pair.teacher, c.pair.student, knn_k=2000,
                                                               out_path=c.root / "r.html"),
         "knn_k = 2000 neighbours needs fewer than knn_tokens"),
        ("report-cka-alone", lambda c: pairing_report(c.pair.teacher, c.pair.student, measures=["cka", "cka_debiased"],
                                                      out_path=c.root / "r.html"), "CKA alone"),
        ("report-unknown-measure", lambda c: pairing_report(c.pair.teacher, c.pair.student, measures=["cca"],
                                                            out_path=c.root / "r.html"), "unknown similarity measures"),
        ("report-stitch-without-stitching", lambda c: pairing_report(c.pair.teacher, c.pair.student, strategy="stitch",
                                                                     out_path=c.root / "r.html"), "stitching=True"),
        ("inspect-stitching-without-map", lambda c: inspect_pairing(c.pair, "facts", InspectionSettings(stitching=True)),
         "needs the stitching map"),
        ("states-file-missing", lambda c: load_states(c.root / "nope.npy"), "states file .*nope.npy does not exist"),
        ("states-file-corrupt", lambda c: load_states(c.root / "garbage" / "model.safetensors"),
         "states file .* is (truncated|corrupt)"),
        ("states-file-wrong-suffix", lambda c: load_states(c.root / "garbage" / "config.json"), "must end in"),
        ("demo-out-is-file", lambda c: run_demo("tiny", out_dir=c.root / "afile", progress=False), "existing file"),
        ("demo-unknown-override", lambda c: run_demo("tiny", out_dir=c.root / "d", progress=False, steps=3),
         "unknown demo profile field"),
    ]


API_CASES = _api_cases()


@pytest.fixture(scope="module")
def ctx(env, tiny_pair, tiny_hf):
    return SimpleNamespace(**vars(env), pair=tiny_pair, hf=tiny_hf)


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_semalign_error(case, ctx):
    _, call, match = case
    before = _snapshot(ctx.root, content=False)
    with pytest.raises(SemalignError, match=match) as err:
        call(ctx)
    assert "\n" not in str(err.value)
    assert _snapshot(ctx.root, content=False) == before  # refused before anything was written


def test_multi_line_messages_print_as_one_line():
    assert one_line("3 malformed record(s) in f; fix them:\n  a: x\n  b: y") == \
        "3 malformed record(s) in f; fix them: a: x; b: y"
    assert one_line("one line") == "one line"
