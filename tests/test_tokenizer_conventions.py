"""Every stage on a researcher's own pair, with the tokenizer conventions real families use.

Tiny random Llama pairs (teacher 4 x d64, student 2 x d32) saved to disk as a user would save them
(`save_pretrained` of model and tokenizer), sharing one tokenizer built offline with `tokenizers` in the way
its family builds the real one (`zoo.tiny.TOKENIZER_CONVENTIONS`: Llama-3, Llama-2/Mistral SentencePiece-style,
Gemma, OPT, ChatML, GPT-2). References are independent of the package: the tokenizer's own encoding (with its
post-processor's BOS) and the HF model's own loss on those tokens.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import semalign_lens as sl
from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import DOCUMENT_START_KEY, document_start, tokenize
from semalign_lens.models.load import load_model
from semalign_lens.models.pair import ModelPair
from semalign_lens.models.readiness import stage_readiness
from semalign_lens.models.tiny import (
    MATRIX_STUDENT,
    MATRIX_TEACHER,
    TOKENIZER_CONVENTIONS,
    convention_tokenizer_dir,
    write_convention_pair,
)
from semalign_lens.training import load_align_config
from semalign_lens.training.loop import Trainer

TEACHER, STUDENT = MATRIX_TEACHER, MATRIX_STUDENT
CONVENTIONS = list(TOKENIZER_CONVENTIONS)
TEXTS = ["def area(r):\n    return 3.14159 * r ** 2\n", "import json\n\nprint(json.dumps({'ü': [1, 2]}))\n"]
# the document start each family's own tokenizer implies (its BOS where it has one, else its EOS)
EXPECTED_START = {"llama3": "<|begin_of_text|>", "llama2": "<s>", "gemma": "<bos>", "opt": "</s>",
                  "chatml": "<|im_end|>", "gpt2": "<|endoftext|>"}


def _tokenizer(convention):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(convention_tokenizer_dir(convention)))


def _write_pair(root, convention, ids_override=None):
    """Teacher and student directories as a user saves them; returns their paths and the tokenizer."""
    t_dir, s_dir = write_convention_pair(root, convention, TEACHER, STUDENT, ids=ids_override)
    return t_dir, s_dir, _tokenizer(convention)


def _text_dir(root):
    text = root / "text"
    text.mkdir()
    import textwrap

    (text / "a.py").write_text(open(textwrap.__file__).read())
    return text


@pytest.fixture(scope="module", params=CONVENTIONS)
def user_pair(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    t_dir, s_dir, tok = _write_pair(root, request.param)
    return request.param, root, t_dir, s_dir, ModelPair(load_model(t_dir), load_model(s_dir))


def test_tokenize_follows_the_tokenizers_own_boundaries(user_pair):
    convention, *_, pair = user_pair
    tok = pair.student.tokenizer
    start = tok.convert_tokens_to_ids(EXPECTED_START[convention])
    assert document_start(tok) == start
    batch = tokenize(tok, TEXTS)
    users = _tokenizer(convention)  # as the user loads it (TransformerLens reloads the bridge's to add BOS)
    for row, mask, text in zip(batch.tokens, batch.mask, TEXTS, strict=True):
        own = users(text)["input_ids"]  # its own encoding, with its post-processor's BOS where it adds one
        want = own if TOKENIZER_CONVENTIONS[convention].adds_bos else [start, *own]
        assert row[mask].tolist() == want  # the start once, never twice
        assert tok.decode(row[mask][1:]) == text  # SentencePiece byte fallback and metaspace round-trip


def test_info_says_every_stage_runs(user_pair):
    *_, pair = user_pair
    assert stage_readiness(pair.teacher, pair.student) == dict.fromkeys(stage_readiness(pair.teacher, pair.student))


def test_evaluation_equals_the_hf_models_own_loss(user_pair):
    convention, _, t_dir, _, pair = user_pair
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(t_dir)).eval()
    batch = tokenize(pair.teacher.tokenizer, TEXTS)
    nll, n = 0.0, 0
    with torch.no_grad():
        for row, mask in zip(batch.tokens, batch.mask, strict=True):
            ids = row[mask][None]
            nll += hf(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    assert ev.cross_entropy(pair.teacher, TEXTS, precision="fp32") == pytest.approx(nll / n, rel=1e-5)


def test_capture_pairing_report_and_answers(user_pair, tmp_path):
    convention, *_, pair = user_pair
    from semalign_lens.reports.pairing import pairing_report

    batch = tokenize(pair.teacher.tokenizer, TEXTS)
    cap = sl.capture(pair.teacher, batch, range(TEACHER.n_layers), progress=False)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(user_pair[2])).eval()
    with torch.no_grad():  # HF's hidden state after block 1 (index 0 is the embedding), on the same tokens
        want = hf(input_ids=batch.tokens, output_hidden_states=True).hidden_states[2]
    assert torch.allclose(cap.get("resid_post", 1)[batch.mask], want[batch.mask], atol=1e-4)
    # answers scored as continuations: the answer tokens decode to the answer, for SentencePiece '▁' pieces too
    batch, score = sl.data.tokens.prompt_answer_batch(pair.teacher.tokenizer, ["import json\n\nprint(json."],
                                               ["dumps"])
    assert pair.teacher.tokenizer.decode(batch.tokens[0][score[0]]).strip() == "dumps"
    out = pairing_report(pair.teacher, pair.student, "facts", tmp_path / "p.html", n_prompts=4,
                         methods=["grad_x_act"], cka_prompts=4, cka_tokens=64, fidelity_tokens=32, n_boot=10,
                         progress=False)
    rows = out.pairing.to_frame()
    assert (tmp_path / "p.html").exists() and len(rows) and rows["student_layer"].between(0, STUDENT.n_layers - 1).all()


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_align_from_text_trains_and_reloads(user_pair, tmp_path, adapter):
    convention, root, t_dir, s_dir, pair = user_pair
    text = root / "text" if (root / "text").exists() else _text_dir(root)
    cfg = load_align_config(None, {
        "teacher": str(t_dir), "student": str(s_dir), "run_dir": str(tmp_path / "run"), "progress": False,
        "report": False, "figures": False, "data.source": str(text), "data.seq_len": 24, "data.n_sequences": 8,
        "data.batch_size": 4, "data.diag_sequences": 2, "schedule.stage_steps": 2, "schedule.lr": 1e-2,
        "schedule.adapter": adapter, "schedule.lora_rank": 2, "objective.terms": {"relation": 1.0, "kl": 1.0}})
    trainer = Trainer(cfg)
    start = document_start(pair.student.tokenizer)
    assert (trainer.data.tokens == start).any()  # documents are separated by the family's own start token
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    result = trainer.run()
    assert any(not torch.equal(before[k], v) for k, v in result.student.state_dict().items())
    reloaded = load_model(result.student_path)
    assert document_start(reloaded.tokenizer) == start
    x = tokenize(reloaded.tokenizer, TEXTS).tokens
    with torch.no_grad():
        assert torch.allclose(ev.forward_logits(reloaded, x), result.student.eval()(input_ids=x).logits, atol=1e-4)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "semalign_lens", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, timeout=300)


@pytest.mark.parametrize("convention", ["llama2", "chatml"])
def test_command_line_info_and_align_agree(tmp_path, convention):
    """info's verdict held against running the stage: 'pairable: yes' and `semalign align` finishes."""
    t_dir, s_dir, _ = _write_pair(tmp_path, convention)
    info = _cli("info", str(t_dir), str(s_dir))
    assert info.returncode == 0 and "pairable: yes, every stage" in info.stdout, info.stderr
    config = tmp_path / "run.json"
    config.write_text(json.dumps({
        "teacher": str(t_dir), "student": str(s_dir), "run_dir": str(tmp_path / "run"), "progress": False,
        "report": False, "figures": False, "data": {"source": str(_text_dir(tmp_path)), "seq_len": 24,
                                                    "n_sequences": 8, "batch_size": 4, "diag_sequences": 2},
        "schedule": {"stage_steps": 1}, "objective": {"terms": {"kl": 1.0}}}))
    done = _cli("align", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "student" / "config.json").exists()


# ------------------------------------------------------------------------------------------- bad input

def _refusal(tmp_path, convention, ids=None, strip=None, declared=None):
    t_dir, s_dir, _ = _write_pair(tmp_path, convention, ids)
    for folder in (t_dir, s_dir):
        path = folder / "tokenizer_config.json"
        cfg = json.loads(path.read_text())
        for key in strip or ():
            cfg.pop(key, None)
        if declared is not None:
            cfg[DOCUMENT_START_KEY] = declared
        path.write_text(json.dumps(cfg))
    return t_dir, s_dir


@pytest.mark.parametrize("case,match", [
    ({"convention": "chatml", "strip": ["eos_token"]}, "no BOS and no EOS token"),
    ({"convention": "llama2", "ids": {"bos_token_id": 999}}, "bos_token_id = 999, outside its vocabulary"),
    ({"convention": "llama2", "ids": {"bos_token_id": 2}}, "has BOS '<s>' \\(id 1\\) but its config.json says "
                                                          "bos_token_id = 2"),
    ({"convention": "gpt2", "declared": "<|nope|>"}, "'<\\|nope\\|>' is not one of its tokens"),
], ids=["no-bos-no-eos", "id-outside-vocab", "tokenizer-disagrees-with-config", "declared-start-unknown"])
def test_bad_tokenizers_are_refused_in_one_line_naming_the_fix(tmp_path, case, match):
    t_dir, s_dir = _refusal(tmp_path, **case)
    with pytest.raises(SemalignError, match=match):
        ModelPair(load_model(t_dir), load_model(s_dir))
    info = stage_readiness(load_model(t_dir), load_model(s_dir))
    assert all(problem is not None for problem in info.values())  # info says no, for every stage


def test_bad_tokenizer_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    t_dir, s_dir = _refusal(tmp_path, "chatml", strip=["eos_token"])
    run_dir = tmp_path / "run"
    done = _cli("align", "--set", f"teacher={t_dir}", "--set", f"student={s_dir}", "--set", f"run_dir={run_dir}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "data.document_start" in done.stderr
    assert not run_dir.exists()


def test_declaring_the_separator_in_the_config_fixes_a_tokenizer_without_one(tmp_path):
    t_dir, s_dir = _refusal(tmp_path, "chatml", strip=["eos_token"])
    cfg = load_align_config(None, {"teacher": str(t_dir), "student": str(s_dir), "run_dir": str(tmp_path / "run"),
                                   "progress": False, "report": False,
                                   "figures": False, "data.source": str(_text_dir(tmp_path)), "data.seq_len": 24,
                                   "data.n_sequences": 8, "data.batch_size": 4, "data.diag_sequences": 2,
                                   "data.document_start": "<|endoftext|>", "schedule.stage_steps": 1,
                                   "objective.terms": {"kl": 1.0}})
    result = Trainer(cfg).run()
    sep = load_model(s_dir).tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert document_start(load_model(result.student_path).tokenizer) == sep  # the saved student keeps it


def test_a_document_start_the_model_has_no_row_for_is_refused(tmp_path):
    """A separator added to the tokenizer after the model was built has no embedding row: refused, not indexed."""
    t_dir, s_dir, tok = _write_pair(tmp_path, "gpt2")
    teacher, student = load_model(t_dir), load_model(s_dir)
    for model in (teacher, student):
        model.tokenizer.add_special_tokens({"additional_special_tokens": ["<doc>"]})
        sl.data.tokens.set_document_start(model.tokenizer, "<doc>")
    with pytest.raises(SemalignError, match=r"document start '<doc>' has id 384, outside its vocabulary of 384 rows"):
        ModelPair(teacher, student)
