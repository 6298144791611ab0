"""The checks a run passes before anything loads or is written (`preflight`, the first thing `Trainer` does).

Everything that can be checked from the config and the file system alone is checked here (the config itself
first), so a refused `semalign align` prints its one-line error first and last (no loading bars, no warnings
before it) and an existing run directory is left exactly as it was: the run directory (a directory, writable,
not another tool's, a resumable checkpoint whose config matches), the data source (exists, text files, UTF-8,
JSONL records), saved pairing / transfer files, both model sources (`models.load.inspect_source`: config,
weights headers, tokenizer files, without loading), and, where the sources' configs say so cheaply, both depths
(the teacher at least as deep as the student), the vocabulary sizes and the pairing against both depths.
What needs the loaded models (vocabulary contents, weight identity of a resumed run) is checked by
`Trainer` right after loading, still before any output is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.checks import check_output_dir
from ..core.errors import SemalignError
from .config import AlignConfig, config_diff

# The files and folders a run writes into its run_dir.
RUN_FILES = ("config.json", "identity.json", "provenance.json", "pairing.json", "transfer.safetensors",
             "transfer.json", "metrics.jsonl", "final.json", "latest.json", "checkpoints", "student", "figures",
             "diagnostics", "report.html", "adapters")


def check_run_dir(run_dir: Path, cfg: AlignConfig) -> None:
    """A writable directory that is new, empty, or holds a run this config may resume."""
    from ..core.checks import check_safetensors
    from ..models.load import run_dir_kind
    from .checkpoint import latest_checkpoint

    check_output_dir(run_dir, "run_dir")
    if not run_dir.is_dir():
        return
    ours = (run_dir / "identity.json").exists() or (run_dir / "latest.json").exists() or \
        run_dir_kind(run_dir) == "align"
    clash = [name for name in RUN_FILES if (run_dir / name).exists()]
    if clash and not ours:
        raise SemalignError(f"run_dir {run_dir} already holds {', '.join(clash[:3])} but no semalign align run (a "
                            "model or another tool's directory?); the run would overwrite them: choose a new or "
                            "empty run_dir")
    try:
        ckpt = latest_checkpoint(run_dir)
    except (ValueError, KeyError, TypeError, OSError):
        raise SemalignError(f"{run_dir / 'latest.json'} is corrupt; restore it, or choose a new run_dir to start "
                            "over") from None
    if ckpt is None:
        return
    for name in ("state.json", "model.safetensors"):
        if not (ckpt / name).is_file():
            raise SemalignError(f"the latest checkpoint {ckpt} of run_dir {run_dir} has no {name}; point "
                                f"latest.json at an intact checkpoint, or choose a new run_dir")
    try:
        json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
        check_safetensors(ckpt / "model.safetensors")
    except (ValueError, UnicodeDecodeError) as err:
        raise SemalignError(f"the latest checkpoint {ckpt} of run_dir {run_dir} is damaged "
                            f"({str(err).splitlines()[0][:200]}); point latest.json at an intact checkpoint, or "
                            "choose a new run_dir") from None
    saved = run_dir / "config.json"
    if saved.exists():
        try:
            diff = config_diff(json.loads(saved.read_text(encoding="utf-8")), cfg.to_dict())
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise SemalignError(f"{saved} is corrupt; restore it, or choose a new run_dir") from None
        if diff:
            raise SemalignError(f"run directory {run_dir} holds a run with other inputs "
                                f"({', '.join('config.' + k for k in diff)}); resume with the same config and "
                                "models, or choose a new run_dir")


def preflight(config: AlignConfig | None, run_dir: str | Path | None, *, pair: Any = None, data: Any = None,
              pairing: Any = None, transfer: Any = None) -> AlignConfig:
    """Refuse a run whose inputs are wrong before any model loads or any file is written (module docstring);
    returns the checked config (`config`, or the defaults). A given `pair` was checked where it was built
    (`models.pair.ModelPair`): only its kind of vocabulary is held against the config's."""
    from ..lens.pairing import LayerPairing
    from ..lens.semantics.basis import KINDS
    from ..models.load import model_name
    from ..models.pair import ModelPair, check_pair_sources
    from .dataset import check_source
    from .setup import check_pairs, resolve_pairing

    if config is not None and not isinstance(config, AlignConfig):
        raise SemalignError(f"config must be an AlignConfig (AlignConfig(...) or load_align_config(path)), got "
                            f"{type(config).__name__}")
    cfg = config or AlignConfig()
    cfg.validate()
    if pair is not None and not isinstance(pair, ModelPair):  # before anything else: the commonest API slip
        raise SemalignError(f"pair must be a ModelPair (ModelPair(teacher, student) of models from load_model, or "
                            f"ModelPair.load(teacher_source, student_source)), got {type(pair).__name__}")
    if pair is not None and pair.vocab != cfg.vocab:
        raise SemalignError(f"the pair was built with vocab={pair.vocab!r} but the config trains vocab = "
                            f"{cfg.vocab!r}; set vocab = {pair.vocab!r} in the config, or build the pair with "
                            f"ModelPair(teacher, student, vocab={cfg.vocab!r})")
    check_run_dir(Path(run_dir or cfg.run_dir).expanduser(), cfg)
    if cfg.targets.mode == "cached" and cfg.targets.cache_dir:
        check_output_dir(cfg.targets.cache_dir, "targets.cache_dir")
    if data is None:
        check_source(cfg.data)
    if pairing is None and cfg.pairing.pairs is None and cfg.pairing.path:
        LayerPairing.load(cfg.pairing.path)
    if transfer is None and not cfg.transfer.path and cfg.transfer.kind not in KINDS:
        raise SemalignError(f"transfer.kind must be one of {KINDS}, got {cfg.transfer.kind!r}")
    if transfer is None and cfg.transfer.path and not Path(cfg.transfer.path).exists():
        raise SemalignError(f"transfer.path {cfg.transfer.path} does not exist; point it at a saved TransferMap "
                            "(TransferMap.save), or remove it to build the map from both models")
    if pair is None:
        (n_t, n_s), t_name, s_name = check_pair_sources(cfg.teacher, cfg.student, vocab=cfg.vocab), cfg.teacher, \
            cfg.student
    else:
        n_t, n_s = pair.teacher.cfg.n_layers, pair.student.cfg.n_layers
        t_name, s_name = model_name(pair.teacher), model_name(pair.student)
    if n_t is None or n_s is None:
        return cfg
    pc = cfg.pairing
    if pc.student_layers is not None:
        bad = [s for s in pc.student_layers if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < n_s]
        if bad or not pc.student_layers:
            raise SemalignError(f"pairing.student_layers {pc.student_layers} must be block indices of student "
                                f"{s_name}, which has {n_s} blocks (valid 0..{n_s - 1})")
    if pairing is None and not (pc.pairs is None and not pc.path and pc.strategy == "cka"):
        check_pairs(resolve_pairing(cfg, None, n_t, n_s), n_t, n_s, t_name, s_name)
    return cfg
