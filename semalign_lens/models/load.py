"""Loading teachers and students as hooked models, saving them, and the facts every stage asks of one (name, mode,
vocabulary rows).

Every model is a TransformerLens 4.x `TransformerBridge`, in **raw mode** by default (logits equal HF's,
`W_U == lm_head.weight.T`), in eval mode, carrying a `Provenance` record at `model.provenance`.
Compatibility mode (`mode="compat"`) folds the final norm into `W_U`, centres it and changes the residual
stream; it is offered only on request and recorded, and a `models.pair.ModelPair` refuses to mix modes.

Sources accepted by `load_model`: a zoo name (`semalign_lens.models.zoo.ZOO_NAMES`), a local HF directory, a
`.gguf` file, an in-memory HF model (with `tokenizer=`), or a Hub name (only where the Hub or its local
cache can be reached; with `HF_HUB_OFFLINE=1` or no network it fails within seconds, naming the offline
alternatives).
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.checks import check_safetensors, is_hf_model, require_hooked, require_tokenizer
from ..core.errors import SemalignError
from ..core.hashing import safetensors_sha256
from .architectures import NATIVE_TYPE

MODES = ("raw", "compat")


MODEL_PACKAGES = ("semalign-lens", "transformer-lens", "transformers", "torch", "safetensors")


def package_versions(packages: tuple[str, ...] = MODEL_PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` ("not installed" where missing), for provenance records."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class Provenance:
    """Where a model came from and how it was loaded; written into every artefact."""

    source: str
    kind: str  # zoo | local | gguf | hub | memory | bridge (one the user built)
    path: str | None
    weights_sha256: str | None
    dtype: str
    mode: str
    versions: dict[str, str] = field(default_factory=package_versions)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _offline_alternatives() -> str:
    from .zoo import ZOO_NAMES

    return (f"use a zoo name ({', '.join(sorted(ZOO_NAMES))}), a local Hugging Face directory, or a .gguf file; "
            "or run where the Hub is reachable once so the model lands in the Hugging Face cache")


def _hub_dir(name: str, fetch: bool = True) -> Path | None:
    """Resolve a Hub name to a local snapshot, failing fast when it cannot be had (None: not cached and
    `fetch` is False)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception:  # not in the local cache
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise SemalignError(f"{name!r} is not a zoo name or local path, and HF_HUB_OFFLINE=1 forbids downloading "
                            f"it from the Hugging Face Hub; {_offline_alternatives()}")
    if not fetch:
        return None
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as err:
        raise SemalignError(f"could not fetch {name!r} from the Hugging Face Hub ({type(err).__name__}); "
                            f"{_offline_alternatives()}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")


def run_dir_kind(folder: Path) -> str | None:
    """'align' / 'pretrain' when `folder` is a semalign training run directory (by its config.json), else None."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(cfg, dict) and "model_type" not in cfg:
        if {"teacher", "student"} <= set(cfg):
            return "align"
        if "arch" in cfg or "total_tokens" in cfg:
            return "pretrain"
    return None


def _not_a_model(folder: Path) -> SemalignError | None:
    """A specific error for directories that hold semalign runs or checkpoints rather than a model."""
    run, parent = None, None
    if (folder / "state.json").is_file() and (folder / "optimizer.safetensors").is_file():
        parent = folder.parent.parent  # <run>/checkpoints/step-N
        run = run_dir_kind(parent) or "align"
        what = f"{folder} is a training checkpoint of the run in {parent} (weights and optimizer state only)"
    elif run_dir_kind(folder):
        run, parent = run_dir_kind(folder), folder
        what = f"{folder} is a `semalign {'align' if run == 'align' else 'zoo pretrain-student'}` run directory"
    if run is None:
        gguf = sorted(folder.glob("*.gguf"))
        if gguf and not (folder / "config.json").exists():
            return SemalignError(f"{folder} holds no Hugging Face model but GGUF file(s) ({gguf[0].name}); pass the "
                                 f".gguf file itself, e.g. {gguf[0]}")
        return None
    if run == "align":
        student = parent / "student"
        fix = (f"load its trained student instead: {student}" if (student / "config.json").exists() else
               f"its trained student is written to {student} when the run finishes (resume it with semalign align)")
    else:
        fix = f"export it first: semalign zoo export-student --run-dir {parent} --out DIR, then load DIR"
    return SemalignError(f"{what}, not a model; {fix}")


def check_model_dir(folder: Path, *, need_tokenizer: bool = True) -> dict[str, Any]:
    """Check a local Hugging Face model directory without loading it; return its config.json.

    Refuses, naming the file and the fix: a semalign run or checkpoint directory, a missing, non-JSON or
    non-model config.json, missing weights, a truncated or corrupt *.safetensors, missing tokenizer files.
    """
    problem = _not_a_model(folder)
    if problem is not None:
        raise problem
    config = folder / "config.json"
    if not config.is_file():
        raise SemalignError(f"{folder} is a directory without config.json; point at a Hugging Face model "
                            "directory (config.json + *.safetensors + tokenizer files)")
    try:
        cfg = json.loads(config.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise SemalignError(f"{config} is not valid JSON ({str(err).splitlines()[0]}); re-download or re-export "
                            "the model") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise SemalignError(f"{config} is not a Hugging Face model config (it has no model_type); point at a "
                            "model directory written by save_pretrained (config.json + *.safetensors + tokenizer)")
    weights = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
            raise SemalignError(f"{index} is corrupt (not a safetensors index); re-download or re-export the "
                                "model") from None
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise SemalignError(f"{folder} lacks weight shard(s) {missing[:3]} listed in {index.name}; the download "
                                "or export is incomplete: re-download or re-export the model")
        weights = [folder / name for name in shards]
    if not weights and not any(folder.glob("*.bin")):
        raise SemalignError(f"{folder} has config.json but no weights (*.safetensors); the download or export is "
                            "incomplete: re-download or re-export the model")
    for path in weights:
        check_safetensors(path)
    if need_tokenizer and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SemalignError(f"{folder} has no tokenizer files (one of {', '.join(TOKENIZER_FILES)}); save the "
                            "tokenizer there (tokenizer.save_pretrained(DIR), or copy the files of the model it "
                            "came from), or pass tokenizer= to load_model")
    return cfg


def _resolve_source(source: str | os.PathLike, *, fetch: bool = True,
                    need_tokenizer: bool = True) -> tuple[str, Path | None]:
    """Map a source string to (kind, checked local HF directory).

    With `fetch=False` nothing is converted or downloaded (the directory is None where that would be needed):
    the cheap look `inspect_source` takes before a run loads anything.
    """
    from .zoo import ZOO_NAMES, resolve
    from .zoo.gguf import converted_dir, converted_path

    text = str(source)
    if not text.strip():
        raise SemalignError("empty model source; pass a zoo name, a Hugging Face model directory, a .gguf file or "
                            "a Hub name")
    if text in ZOO_NAMES:
        kind, path = "zoo", None
        if text == "smollm2-135m" and not fetch:
            from .zoo import smollm2_gguf

            target, done = converted_path(smollm2_gguf(), text)
            path = target if done else None
        else:
            path = resolve(text)
    else:
        path = Path(text).expanduser()
        if path.is_dir():
            kind = "local"
        elif path.is_file() and (path.suffix in (".safetensors", ".bin") or path.name == "config.json"):
            raise SemalignError(f"{path} is one file of a model directory; pass the directory itself "
                                f"({path.parent}), which holds config.json, the weights and the tokenizer")
        elif path.is_file():
            kind = "gguf"
            if fetch:
                path = converted_dir(path, path.stem)
            else:
                target, done = converted_path(path, path.stem)
                path = target if done else None
        elif text.endswith(".gguf"):
            raise SemalignError(f"GGUF file {path} does not exist")
        else:
            hub_id = None if text.startswith((".", "/", "~")) else text if "/" in text else _official_name(text)
            if hub_id is None:
                raise SemalignError(f"{text!r} is neither a zoo name, an existing path, nor a Hub name (owner/name, "
                                    f"or a short name TransformerLens knows, e.g. gpt2, pythia-70m); valid zoo names: "
                                    f"{', '.join(sorted(ZOO_NAMES))}")
            kind, path = "hub", _hub_dir(hub_id, fetch=fetch)
    if path is not None:
        check_model_dir(path, need_tokenizer=need_tokenizer)
    return kind, path


def _official_name(short: str) -> str | None:
    """The Hub id TransformerLens resolves a short name to (`gpt2` → `gpt2`, `pythia-70m` →
    `EleutherAI/pythia-70m`), or None when TransformerLens knows no such model."""
    from transformer_lens.supported_models import get_official_model_name

    try:
        return get_official_model_name(short)
    except ValueError:
        return None


def inspect_source(source: Any) -> dict[str, Any] | None:
    """Check a model source without loading it, and return its HF config.json where that is cheap (a local or
    zoo directory, an already converted GGUF, a cached Hub model); None where it is not (a GGUF never converted,
    a Hub model not yet downloaded, an in-memory model). Raises what `load_model` would raise for a bad source."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    _, path = _resolve_source(source, fetch=False)
    return None if path is None else json.loads((path / "config.json").read_text(encoding="utf-8"))


def config_depth(config: dict[str, Any] | None) -> int | None:
    """The number of decoder blocks an HF config declares (None when unknown)."""
    if not config:
        return None
    cfg = config.get("text_config", config) if isinstance(config.get("text_config"), dict) else config
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return None


def depth_problem(n_teacher: int | None, n_student: int | None, teacher: str = "teacher",
                  student: str = "student") -> str | None:
    """A message when the teacher has fewer blocks than the student (SemAlign supervises each student layer
    with a teacher layer at the same relative depth or deeper, so it needs L_T >= L_S), else None."""
    if n_teacher is None or n_student is None or n_teacher >= n_student:
        return None
    return (f"teacher {teacher} has {n_teacher} blocks but student {student} has {n_student}: the teacher must be "
            "at least as deep as the student (SemAlign distils a deeper teacher into a shallower student); swap "
            "teacher and student, or choose a deeper teacher")


def _from_pretrained(loader, folder: Path, what: str, **kwargs):
    """`loader.from_pretrained(folder)`, with what transformers/safetensors raise on a bad directory (after
    `check_model_dir` passed) turned into one line naming the directory."""
    from safetensors import SafetensorError

    try:
        return loader.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:300]
        raise SemalignError(f"could not load the {what} in {folder} ({type(err).__name__}: {detail}); check that it "
                            "is a complete Hugging Face causal-LM directory (re-download or re-export it)") from None


def load_model(source: Any, *, tokenizer: Any = None, name: str | None = None, dtype: torch.dtype | None = None,
               device: str | torch.device | None = None, mode: str = "raw"):
    """Load `source` as a TransformerBridge in eval mode, raw mode by default, with `.provenance` set.

    `dtype` (default float32) and `device` (default TransformerLens's: CUDA where available, else the CPU) are
    where the weights are, for every source, and `bridge.cfg.device` names that device: every stage runs where
    the model is (`hf.model_device`), and TransformerLens moves string inputs and `generate` to `cfg.device`. A
    bridge passed in is moved (in place) only to a `dtype` or `device` that is given.

    A local source is checked before anything loads (`check_model_dir`: not a run or checkpoint directory,
    config.json, intact safetensors headers, tokenizer files); what transformers still refuses, and weights
    that do not fit the config, become one-line `SemalignError`s naming the directory."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if mode not in MODES:
        raise SemalignError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise SemalignError(f"dtype must be a torch.dtype (e.g. torch.float32), got {dtype!r}")
    if tokenizer is not None:
        require_tokenizer(tokenizer)
    if isinstance(source, TransformerBridge):  # built by the user: keep it, record where it came from
        if getattr(source, "tokenizer", None) is None and tokenizer is None:
            raise SemalignError("this TransformerBridge has no tokenizer; pass load_model(bridge, tokenizer=tok)")
        if tokenizer is not None:
            source.tokenizer = tokenizer
        if device is not None or dtype is not None:
            source.to(device=None if device is None else _target_device(device), dtype=dtype, print_details=False)
        held = str(next(source.parameters()).dtype).replace("torch.", "")
        provenance = getattr(source, "provenance", None)
        if provenance is not None:
            provenance.dtype = held
        else:
            hf = getattr(source, "original_model", None)
            label = (name or getattr(getattr(hf, "config", None), "name_or_path", None)
                     or getattr(source.cfg, "model_name", None) or "bridge")
            provenance = Provenance(source=label, kind="bridge", path=None, weights_sha256=None, dtype=held,
                                    mode=model_mode(source))
        check_bridge_runs(source.eval(), provenance.source)  # a provenance marks a bridge that runs
        source.provenance = provenance
        return source
    dtype = dtype or torch.float32
    device = _target_device(device)
    if is_hf_model(source):
        if tokenizer is None:
            raise SemalignError("an in-memory HF model needs its tokenizer: load_model(model, tokenizer=tok)")
        # The bridge rewires the HF modules it wraps, so wrap a copy and leave the caller's model intact.
        hf_model = copy.deepcopy(source).to(device=device, dtype=dtype)
        if not getattr(hf_model.config, "architectures", None):  # a model built from a config: the bridge
            hf_model.config.architectures = [type(hf_model).__name__]  # picks its adapter by this name
        kind, path, label = "memory", None, name or source.config.name_or_path or "memory"
        weights_hash = None
    elif isinstance(source, (str, os.PathLike)):
        kind, folder = _resolve_source(source, need_tokenizer=tokenizer is None)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tokenizer = tokenizer or _from_pretrained(AutoTokenizer, folder, "tokenizer")
        if config["model_type"].startswith(NATIVE_TYPE):  # a native model saved by the trainer (`native`)
            bridge = _load_native_dir(folder, config, tokenizer, dtype, device)
            return _finish(bridge, mode, Provenance(source=name or str(source), kind=kind, path=str(folder),
                                                    weights_sha256=safetensors_sha256(folder),
                                                    dtype=str(dtype).replace("torch.", ""), mode=mode))
        hf_model, info = _from_pretrained(AutoModelForCausalLM, folder, "model", dtype=dtype, output_loading_info=True)
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would go on with those weights randomly initialised
            raise SemalignError(f"the weights in {folder} do not fit its config.json: {len(missing)} parameter(s) of "
                                f"the {hf_model.config.model_type} model it describes are missing (first: "
                                f"{missing[0]}); the config and weights come from different models: re-download or "
                                "re-export the model")
        hf_model = hf_model.to(device)  # TransformerLens leaves a model it is handed where it is
        path, label, weights_hash = str(folder), name or str(source), safetensors_sha256(folder)
    else:
        raise SemalignError(f"cannot load a model from {type(source).__name__}; pass a zoo name, a path, a Hub "
                            "name, or an HF PreTrainedModel with tokenizer=")
    if getattr(hf_model, "config", None) is not None:  # nothing here generates; hybrid families (Jamba, Qwen3-Next,
        hf_model.config.use_cache = False  # RecurrentGemma) fail a bridge forward that builds a cache
    if not hasattr(hf_model, "get_output_embeddings") or hf_model.get_output_embeddings() is None:
        raise SemalignError(f"{label} has no LM head (unembedding); semalign_lens needs a causal LM")
    _name_architecture(hf_model, label)
    roles = _special_roles(tokenizer)
    bridge = TransformerBridge.boot_transformers(label, hf_model=hf_model, tokenizer=tokenizer, dtype=dtype,
                                                 device=device)
    _restore_special_roles(bridge.tokenizer, roles)
    return _finish(bridge, mode, Provenance(source=label, kind=kind, path=path, weights_sha256=weights_hash,
                                            dtype=str(dtype).replace("torch.", ""), mode=mode))


def _target_device(device: str | torch.device | None) -> torch.device:
    """`device` as a `torch.device` (None: TransformerLens's default, CUDA where available), refused in one line
    where this torch cannot place tensors (a CUDA device on a CPU-only build, a GPU index that does not exist)."""
    from transformer_lens.utilities import get_device

    try:
        target = torch.device(device if device is not None else get_device())
        torch.empty(0, device=target)
    except (RuntimeError, AssertionError, TypeError) as err:
        raise SemalignError(f"cannot load a model onto device {device!r}: {str(err).splitlines()[0][:200]}; pass "
                            "a device this torch has (e.g. 'cpu', 'cuda')") from None
    return target


def _name_architecture(hf_model, label: str) -> None:
    """Make `hf_model.config.architectures` name the TransformerLens adapter of its class, or refuse in one line.
    TransformerLens picks its adapter by that list or the model_type; a model built in memory (`from_config`)
    has no list, and transformers and TransformerLens may spell a class differently (PhimoeForCausalLM /
    PhiMoEForCausalLM), so the class name is matched without case."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config

    config = hf_model.config
    if not any(name in SUPPORTED_ARCHITECTURES for name in config.architectures or ()):
        by_case = {name.lower(): name for name in SUPPORTED_ARCHITECTURES}
        if (known := by_case.get(type(hf_model).__name__.lower())) is not None:
            config.architectures = [known]
    try:
        determine_architecture_from_hf_config(config)  # TransformerLens's own rule
    except ValueError:
        raise SemalignError(f"{label}: TransformerLens {package_versions(('transformer-lens',))['transformer-lens']} "
                            f"has no adapter for {type(hf_model).__name__} (model_type {config.model_type!r}), so it "
                            "cannot be bridged; use a family it supports (`semalign info` on a model of it says "
                            "which stages run)") from None


def _special_roles(tokenizer) -> dict[str, str | None]:
    return {key: getattr(tokenizer, key, None) for key in ("bos_token", "eos_token")}


def _restore_special_roles(tokenizer, roles: dict[str, str | None]) -> None:
    """TransformerLens fills a missing BOS/EOS with the EOS or `<|endoftext|>`; the document start
    (`data.tokens.document_start`) must be decided from the tokenizer the user brought, so its roles are put back."""
    for key, value in roles.items():
        if value is None and getattr(tokenizer, key, None) is not None:
            setattr(tokenizer, key, None)


def _finish(bridge, mode: str, provenance: Provenance):
    """A freshly booted bridge in the asked mode, in eval mode, with its provenance."""
    if mode == "compat":
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    bridge.provenance = provenance
    check_bridge_runs(bridge, provenance.source)
    return bridge


def check_bridge_runs(bridge, label: str) -> None:
    """Refuse, in one line, when it is loaded, a bridge whose forward fails or whose blocks do not carry one
    residual stream: every stage runs the one and reads the other, so such a model would otherwise fail in the
    middle of the first analysis (a TransformerLens adapter that does not fit the installed transformers;
    DeepSeek-V4's several parallel streams). One forward of 8 tokens."""
    from .architectures import model_type
    from .plain import model_device, probe_tokens

    family = model_type(getattr(bridge, "original_model", bridge)) or type(bridge).__name__
    tokens = probe_tokens(bridge.cfg.d_vocab, model_device(bridge))
    shapes = []
    handle = bridge.blocks[0].register_forward_hook(
        lambda module, args, out: shapes.append(tuple((out[0] if isinstance(out, tuple) else out).shape)))
    try:
        with torch.no_grad():
            bridge(tokens)
    except Exception as err:  # whatever the adapter raises, it is the same one problem for the user
        detail = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:200]
        dtype = next(bridge.parameters()).dtype
        if dtype in (torch.bfloat16, torch.float16) and "dtype" in str(err):  # OLMo's adapter upcasts its norms
            raise SemalignError(f"TransformerLens's bridge for {label} ({family}) fails on a forward pass in "
                                f"{str(dtype)[6:]} ({type(err).__name__}: {detail}): its adapter mixes float32 and "
                                f"{str(dtype)[6:]} tensors; load this model with dtype=torch.float32 (dtype = "
                                "'float32' in an align config)") from None
        raise SemalignError(f"TransformerLens's bridge for {label} ({family}) fails on a forward pass "
                            f"({type(err).__name__}: {detail}); its adapter does not run this model with the "
                            "installed transformers/transformer-lens versions: try another transformers version, or "
                            "another model family") from None
    finally:
        handle.remove()
    want = (1, 8, int(bridge.cfg.d_model))
    if shapes and shapes[0] != want:
        raise SemalignError(f"{label} ({family}): its blocks output {shapes[0]} for 8 tokens, not one residual "
                            f"stream [batch, pos, d_model] = {want}; semalign_lens reads one stream per layer "
                            "(capture, CKA, bases, SemAlign's layer targets)")


def _load_native_dir(folder: Path, config: dict[str, Any], tokenizer, dtype: torch.dtype, device):
    """The native bridge saved in `folder` (`native.NativeLM.save_pretrained`), with its weights."""
    from safetensors.torch import load_file
    from transformer_lens.model_bridge import TransformerBridge

    from .native import tl_config_from_dict
    from .plain import plain_name

    try:
        cfg = tl_config_from_dict(config["transformer_lens_config"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SemalignError(f"{folder}/config.json names a TransformerLens-native model but its "
                            f"transformer_lens_config is unreadable ({type(err).__name__}: {err}); re-save it with "
                            "semalign_lens.save_model(bridge, DIR)") from None
    cfg.init_weights = False  # the saved weights replace whatever an initialisation would draw
    roles = _special_roles(tokenizer)
    bridge = TransformerBridge.boot_native(cfg, tokenizer=tokenizer, dtype=dtype,
                                           model_name=config.get("name_or_path") or str(folder))
    _restore_special_roles(bridge.tokenizer, roles)
    saved = {}
    for path in sorted(folder.glob("*.safetensors")):
        saved.update(load_file(str(path)))
    target = bridge.original_model
    names = {plain_name(k): k for k in target.state_dict()}
    missing = sorted({plain_name(k) for k, _ in target.named_parameters()} - set(saved))
    extra = sorted(set(saved) - set(names))
    if missing or extra:
        raise SemalignError(f"the weights in {folder} do not fit its config.json ({len(missing)} parameter(s) "
                            f"missing, {len(extra)} unexpected; first: {(missing or extra)[0]}); the config and "
                            "weights come from different models: re-save it with semalign_lens.save_model(bridge, DIR)")
    with torch.no_grad():
        target.load_state_dict({names[k]: v.to(dtype) for k, v in saved.items()}, strict=False)
    return bridge.to(device, print_details=False)  # read on the host, then moved: `cfg.device` follows


def save_model(model, out: str | os.PathLike) -> Path:
    """Write a loaded model (any family, a native bridge included) as a directory `load_model` reads back:
    its plain copy (`hf.clean_copy`: the stock HF model, or `native.NativeLM`) and its tokenizer. What a
    bridge built in memory needs before the command line (`semalign align`, `semalign info`) can take it."""
    from .plain import clean_copy

    require_hooked(model)
    out = Path(out)
    clean_copy(model, share_weights=True).save_pretrained(str(out), safe_serialization=True)
    model.tokenizer.save_pretrained(str(out))
    return out


def model_name(model) -> str:
    prov = getattr(model, "provenance", None)
    return prov.source if prov is not None else str(getattr(getattr(model, "cfg", None), "model_name", "model"))


def model_mode(model) -> str:
    """"compat" or "raw", read from the bridge itself (a provenance record can be stale after
    `enable_compatibility_mode`)."""
    if hasattr(model, "compatibility_mode"):
        return "compat" if model.compatibility_mode else "raw"
    prov = getattr(model, "provenance", None)
    return prov.mode if prov is not None else "raw"


def head_rows(model) -> int:
    """The rows of `model`'s LM head (a bridge's `cfg.d_vocab`, an HF model's output embedding rows)."""
    cfg = getattr(model, "cfg", None)
    if isinstance(getattr(cfg, "d_vocab", None), int):
        return int(cfg.d_vocab)
    return int(model.get_output_embeddings().weight.shape[0])


def vocab_rows(model, tokenizer: Any = None) -> int:
    """The real vocabulary of `model`: head rows 0..n-1, n = len(tokenizer) (at most the head's rows).

    The one place that decides it (ours; the paper's pairs have unpadded heads). Hugging Face numbers a
    tokenizer's ids 0..len-1, added tokens after the base vocabulary; heads are often padded beyond that to a
    multiple of 64 or 128 (Qwen2.5-7B: 152,064 rows, 1.5B: 151,936, one tokenizer of 151,665), and a padded row
    is no token: no text encodes to it and none decodes from it. So semantic bases, readouts, the KL / CE terms,
    the teacher cache's logits and evaluation use these rows only, and two models pair when their tokenizers
    agree, whatever their heads' padding. A model without a tokenizer (the trainer's plain copies) counts every
    head row unless `tokenizer` is given.
    """
    rows = head_rows(model)
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    return rows if tokenizer is None else min(rows, len(tokenizer))
