"""`semalign eval` on lm-evaluation-harness, offline, on YAML tasks over local JSONL files written here: the
harness's loglikelihoods equal the package's own answer scoring (`answer_scores` on `prompt_answer_batch`), its
generations equal the package's greedy decoding, its metrics and standard errors equal ones computed here from
those, its own convention (`document_start="harness"`) equals the stock harness loading the directory itself,
and the command line prints and writes a teacher and a student side by side.

Like-for-like: the package starts every sequence with the tokenizer's document start (`data.document_start`);
the default `document_start="package"` makes the harness do the same, and the test checks the token ids of both
sides are identical before comparing numbers. For the stdlib student the harness's own convention gives other
numbers (its BOS is the chat marker `<|im_start|>`, its document start `<|endoftext|>`).
"""

from __future__ import annotations

import json
import math
import os
import statistics

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from semalign_lens.cli import main  # noqa: E402
from semalign_lens.core.errors import SemalignError  # noqa: E402
from semalign_lens.data.tokens import prompt_answer_batch  # noqa: E402
from semalign_lens.evaluation.harness import eval_source, harness_eval, harness_model  # noqa: E402
from semalign_lens.evaluation.humaneval import greedy_generate  # noqa: E402
from semalign_lens.evaluation.knowledge import answer_scores  # noqa: E402
from semalign_lens.models.likelihood import plain_model  # noqa: E402
from semalign_lens.models.load import load_model  # noqa: E402
from semalign_lens.models.zoo import STUDENT_DIR  # noqa: E402

pytestmark = pytest.mark.xdist_group("harness-eval")

MC_ITEMS = [  # choices carry their own leading space (target_delimiter ""): the token boundary is clean
    {"question": "import os\npath = os.path.", "choices": ["join", "banana", "zzz"], "label": 0},
    {"question": "def f(x):\n    return", "choices": [" x", " elephant", " 7q"], "label": 0},
    {"question": "for i in", "choices": [" range", " apple", " )"], "label": 0},
    {"question": "class Foo(", "choices": ["object", "while", "@@"], "label": 1},
    {"question": "with open(path) as", "choices": [" f", " import", " 3"], "label": 0},
]
MC_YAML = """task: semalign_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
GEN_PROMPTS = ["import os\nimport sys\nimport", "def main():\n    ", "class Foo:\n    def __init__(self",
               "for key, value in", "if __name__ =="]
GEN_TOKENS = 12
GEN_YAML = """task: semalign_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def student():
    return load_model("stdlib-student")


def _greedy_line(model, prompt: str) -> str:
    """The package's greedy continuation, cut where the task's `until` ("\\n") cuts the harness's."""
    return greedy_generate(plain_model(model), prompt, GEN_TOKENS, tokenizer=model.tokenizer).split("\n")[0]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, student):
    """The two tasks; the generation targets are the student's own greedy lines for items 0 and 2 (computed
    here by the package) and a string it does not produce for the others: exact match 2/5."""
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    (folder / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in MC_ITEMS))
    (folder / "mc.yaml").write_text(MC_YAML.format(data=folder / "mc.jsonl"))
    answers = [_greedy_line(student, p) if i in (0, 2) else " no such answer" for i, p in enumerate(GEN_PROMPTS)]
    (folder / "gen.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n"
                                              for p, a in zip(GEN_PROMPTS, answers, strict=True)))
    (folder / "gen.yaml").write_text(GEN_YAML.format(data=folder / "gen.jsonl", tokens=GEN_TOKENS))
    return folder


def _requests(run, task: str) -> list[tuple[str, str, float, bool]]:
    """(context, continuation, loglikelihood, is_greedy) of every request of `task`, in document order."""
    out = []
    for sample in sorted(run["samples"][task], key=lambda s: s["doc_id"]):
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            out.append((context, continuation, float(resp[0][0]), bool(resp[0][1])))
    return out


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    """The harness's aggregate of a per-document metric: the mean, and the sample standard deviation / sqrt(n)."""
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def test_harness_tokens_and_loglikelihoods_equal_the_packages_answer_scoring(student, task_dir):
    result = harness_eval({"student": student}, ["semalign_mc"], include_path=task_dir, builtin_tasks=False,
                          log_samples=True)
    requests = _requests(result.runs["student"], "semalign_mc")
    contexts, continuations = [r[0] for r in requests], [r[1] for r in requests]
    batch, score = prompt_answer_batch(student.tokenizer, contexts, continuations)

    lm = harness_model(student)
    for i, (context, continuation) in enumerate(zip(contexts, continuations, strict=True)):
        context_ids, continuation_ids = lm._encode_pair(context, continuation)
        row = batch.tokens[i][batch.mask[i]].tolist()
        assert context_ids + continuation_ids == row  # the same tokens, document start first
        assert len(continuation_ids) == int(score[i].sum())  # the same tokens scored

    logprob, exact = answer_scores(student, batch, score)
    got = [r[2] for r in requests]
    assert max(abs(a - b) for a, b in zip(got, logprob.tolist(), strict=True)) < 1e-4
    assert [r[3] for r in requests] == exact.tolist()

    # acc / acc_norm and their standard errors, from the package's scores
    acc, acc_norm, at = [], [], 0
    for item in MC_ITEMS:
        scores = logprob[at: at + len(item["choices"])].tolist()
        at += len(item["choices"])
        acc.append(float(max(range(len(scores)), key=scores.__getitem__) == item["label"]))
        normed = [s / len(c) for s, c in zip(scores, item["choices"], strict=True)]
        acc_norm.append(float(max(range(len(normed)), key=normed.__getitem__) == item["label"]))
    metrics = result.runs["student"]["results"]["semalign_mc"]
    for name, values in (("acc", acc), ("acc_norm", acc_norm)):
        mean, stderr = _mean_and_stderr(values)
        assert metrics[f"{name},none"] == pytest.approx(mean)
        assert metrics[f"{name}_stderr,none"] == pytest.approx(stderr)
    table = result.table()
    assert table.loc[("semalign_mc", "none", 0, "acc"), "student"] == pytest.approx(statistics.fmean(acc))
    assert 0 < statistics.fmean(acc) < 1  # the items separate right from wrong: the check above can fail


def test_the_harness_convention_is_the_stock_harness_on_the_directory(student, task_dir):
    ours = harness_eval({"student": student}, ["semalign_mc"], include_path=task_dir, builtin_tasks=False,
                        log_samples=True, document_start="harness").runs["student"]
    manager = lm_eval.tasks.TaskManager(include_path=str(task_dir), include_defaults=False)
    stock = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(STUDENT_DIR), "device": "cpu",
                                                            "dtype": "float32"},
                                    tasks=["semalign_mc"], task_manager=manager, log_samples=True, batch_size=8)
    mine, theirs = _requests(ours, "semalign_mc"), _requests(stock, "semalign_mc")
    assert max(abs(a[2] - b[2]) for a, b in zip(mine, theirs, strict=True)) < 1e-4
    package = harness_eval({"student": student}, ["semalign_mc"], include_path=task_dir, builtin_tasks=False,
                           log_samples=True).runs["student"]
    # the stdlib student's BOS (<|im_start|>) is not its document start (<|endoftext|>): the option matters
    assert max(abs(a[2] - b[2]) for a, b in zip(mine, _requests(package, "semalign_mc"), strict=True)) > 0.05


def test_harness_generations_equal_the_packages_greedy_decoding(student, task_dir):
    result = harness_eval([student], ["semalign_gen"], include_path=task_dir, builtin_tasks=False, log_samples=True,
                          batch_size=4)  # 5 prompts of different lengths: a left-padded batch and a single one
    name = result.names[0]
    samples = sorted(result.runs[name]["samples"]["semalign_gen"], key=lambda s: s["doc_id"])
    assert [s["resps"][0][0] for s in samples] == [_greedy_line(student, p) for p in GEN_PROMPTS]
    metrics = result.runs[name]["results"]["semalign_gen"]
    mean, stderr = _mean_and_stderr([1.0, 0.0, 1.0, 0.0, 0.0])
    assert metrics["exact_match,none"] == pytest.approx(mean)
    assert metrics["exact_match_stderr,none"] == pytest.approx(stderr)


def _save_tiny(folder, hf, tok):
    hf.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def test_cli_prints_and_writes_teacher_and_student_side_by_side(tmp_path, task_dir, capsys):
    from semalign_lens.models.tiny import tiny_hf_pair

    teacher_hf, student_hf, tok = tiny_hf_pair(seed=0)
    teacher = _save_tiny(tmp_path / "teacher", teacher_hf, tok)
    run = tmp_path / "run"  # a `semalign align` run directory: evaluated as its trained student
    _save_tiny(run / "student", student_hf, tok)
    (run / "config.json").write_text(json.dumps({"teacher": str(teacher), "student": "stdlib-student"}))
    assert eval_source(run) == run / "student"
    out = tmp_path / "results.json"
    code = main(["eval", str(teacher), str(run), "--tasks", "semalign_mc", "--include-path", str(task_dir),
                 "--local-tasks-only", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    header = printed.splitlines()[0].split()
    assert header[:4] == ["task", "filter", "n-shot", "metric"] and header[4:] == [str(teacher), str(run)]
    written = json.loads(out.read_text())
    assert list(written["models"]) == [str(teacher), str(run)]
    assert written["models"][str(run)]["source"] == str(run / "student")
    for name, hf in ((str(teacher), teacher_hf), (str(run), student_hf)):  # acc from the package's own scores
        batch, score = prompt_answer_batch(tok, [i["question"] for i in MC_ITEMS for _ in i["choices"]],
                                           [c for i in MC_ITEMS for c in i["choices"]])
        logprob = answer_scores(hf, batch, score)[0].tolist()
        at, acc = 0, []
        for item in MC_ITEMS:
            scores = logprob[at: at + len(item["choices"])]
            at += len(item["choices"])
            acc.append(float(max(range(len(scores)), key=scores.__getitem__) == item["label"]))
        mean, stderr = _mean_and_stderr(acc)
        row = next(r for r in written["table"] if r["metric"] == "acc")
        assert row[name] == pytest.approx(mean) and row[f"{name} ±"] == pytest.approx(stderr)
        assert written["models"][name]["results"]["semalign_mc"]["acc,none"] == pytest.approx(mean)
        assert f"{mean:.4f} ± {stderr:.4f}" in printed


def test_cli_without_lm_eval_names_the_extra(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` now raises ImportError
    assert main(["eval", "stdlib-student", "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "semalign-lens[eval]" in err


def test_cli_refuses_an_unknown_task_before_loading(tmp_path, task_dir, capsys):
    assert main(["eval", "stdlib-student", "--tasks", "semalign_nope", "--include-path", str(task_dir),
                 "--local-tasks-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'semalign_nope'" in err and "--include-path" in err


def test_a_task_whose_data_is_on_the_hub_is_one_line_offline(student, tmp_path):
    """Offline (HF_HUB_OFFLINE=1, the suite's setting), a task over a Hub dataset fails in one line naming both
    ways out, not in a datasets traceback."""
    (tmp_path / "hub.yaml").write_text("task: semalign_hub\ndataset_path: semalign-test/no-such-dataset\n"
                                       "output_type: loglikelihood\ntest_split: test\ndoc_to_text: '{{q}}'\n"
                                       "doc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n")
    with pytest.raises(SemalignError, match="Hugging Face Hub.*--include-path"):
        harness_eval({"student": student}, ["semalign_hub"], include_path=tmp_path, builtin_tasks=False)
