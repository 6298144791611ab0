"""Train a byte-level BPE tokenizer on the student's corpus: the vocabulary of the cross-tokenizer student.

Why: SemAlign needs teacher and student to share a vocabulary, and real pairs rarely do. The second embedded
student (`stdlib-student-8k`) gets its own ~8k-token vocabulary, learned with Hugging Face `tokenizers` on the
same standard-library training files as `stdlib-student` (the validation files stay unseen), so the toolkit
has an offline pair with different tokenizers.

Choices (ours): the pre-tokenizer is GPT-2's byte-level regex with single digits split off, which is how
SmolLM2's tokenizer pre-tokenizes too; the merges and the vocabulary are learned afresh, so the two
vocabularies share only the strings both BPE runs happened to produce. One special token, `<|endoftext|>`,
separates documents exactly as in the first student's corpus.
"""

from __future__ import annotations

from pathlib import Path

from ..core.checks import check_output_dir
from ..core.errors import SemalignError
from ..data import corpus


def train_bpe(files: list[Path], vocab_size: int, out_dir: str | Path, min_frequency: int = 2) -> Path:
    """Learn a byte-level BPE with `vocab_size` entries from `files`; save it as a HF tokenizer directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 258:
        raise SemalignError(f"vocab_size {vocab_size} is below the 256 byte symbols plus one special token; "
                            "use at least 258 (the embedded student uses 8192)")
    if not files:
        raise SemalignError("no corpus files to learn a tokenizer from")
    out_dir = check_output_dir(out_dir, "--out (the tokenizer directory)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=[corpus.DOC_SEPARATOR],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((corpus.read_text(p) for p in files), trainer=trainer, length=len(files))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=corpus.DOC_SEPARATOR,
                                   eos_token=corpus.DOC_SEPARATOR, unk_token=corpus.DOC_SEPARATOR,
                                   pad_token=corpus.DOC_SEPARATOR)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return out_dir


def train_corpus_bpe(vocab_size: int, out_dir: str | Path, root: Path | None = None,
                     val_fraction: float = 0.02) -> Path:
    """`train_bpe` on the training split of the student corpus (the files `zoo pretrain-student` trains on)."""
    root = Path(root) if root else corpus.stdlib_root()
    train_files, _ = corpus.split_files(corpus.stdlib_files(root), root, val_fraction)
    return train_bpe(train_files, vocab_size, out_dir)
