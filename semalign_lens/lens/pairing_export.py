"""A layer pairing written as the layer maps other distillation tools read, and read back from them.

Ours (the conversion); the formats are the tools' own:

- **DistillKit** (Arcee AI, github.com/arcee-ai/DistillKit; `DistillationRunConfig.layer_mapping` in
  `distillkit/configuration.py`): a list of `(student_layer_idx, teacher_layer_idx)` pairs that index the HF
  `outputs.hidden_states` tuple (`distillkit/lossfuncs/hidden_state.py`), where index 0 is the embeddings and
  index i the output of block i − 1: our layer b is index b + 1. In transformers' Llama-family models the last
  index (L) holds the state *after* the final norm, so a pair on a model's last block is matched there on the
  normed state.
- **ModelOpt** (NVIDIA Model Optimizer, `modelopt.torch.distill.KDLossConfig.criterion`): a dict
  `{(student_layer_name, teacher_layer_name): loss_module}` over module names as `named_modules()` gives
  them; the loss sees each module's output, so our layer b is the decoder block itself, `model.layers.b` in
  the Llama family (`architectures.ARCHITECTURES` names other families' blocks). A JSON file cannot key a
  dict by a tuple, so the file lists the name pairs and `modelopt_criterion` builds the dict. TRL's trainers
  have no layer map of their own; a TRL `compute_loss` over `output_hidden_states` reads DistillKit's indices.

Both take one teacher layer per pair: an interpolated pair (1 − w)·h[low] + w·h[high] is exported as its
nearest teacher layer (`pairing.nearest_layer`, the package's one rounding rule), and the file lists what was
rounded. **Caveat:** those tools then train the pairs with their own losses (DistillKit: `hs_mse` /
`hs_cosine` through a learned linear projection where widths differ; ModelOpt: whichever loss module each
pair is given), not with SemAlign's semantic-basis mapping (paper §2.2): the export carries which layers to
pair, nothing of how SemAlign trains them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.checks import check_output_file, read_json, read_utf8, require_choices
from ..core.errors import SemalignError, writing
from .pairing import LayerPair, LayerPairing

EXPORT_FORMATS = ("distillkit", "modelopt")
SUFFIXES = {"distillkit": ".distillkit.yaml", "modelopt": ".modelopt.json"}
LLAMA_BLOCKS = "model.layers"
CAVEAT = ("the tool trains these pairs with its own loss, not SemAlign's semantic-basis mapping: the export "
          "carries which layers to pair, nothing of how SemAlign trains them")


def rounded_pairs(pairs: Iterable[LayerPair]) -> list[str]:
    """One line per interpolated pair that a one-teacher-layer format rounds to its nearest teacher layer."""
    return [f"student layer {p.student_layer} <- {p.target_label()} exported as teacher layer {p.nearest_teacher_layer}"
            for p in pairs if p.interpolated]


def distillkit_layer_mapping(pairs: Iterable[LayerPair]) -> list[list[int]]:
    """DistillKit's `layer_mapping`: [student, teacher] indices into `outputs.hidden_states` (block b -> b + 1)."""
    return [[p.student_layer + 1, p.nearest_teacher_layer + 1] for p in pairs]


def modelopt_layer_pairs(pairs: Iterable[LayerPair], student_blocks: str = LLAMA_BLOCKS,
                         teacher_blocks: str = LLAMA_BLOCKS) -> list[list[str]]:
    """The (student_layer_name, teacher_layer_name) keys of ModelOpt's `criterion`: decoder block module names."""
    return [[f"{student_blocks}.{p.student_layer}", f"{teacher_blocks}.{p.nearest_teacher_layer}"] for p in pairs]


def modelopt_criterion(layers: str | os.PathLike | Sequence[Sequence[str]], loss: Callable[[], Any]) -> dict:
    """ModelOpt's `KDLossConfig.criterion` dict from an exported file (or its name pairs): each pair gets its
    own `loss()` module, e.g. `modelopt_criterion("pairing.modelopt.json", torch.nn.MSELoss)`; several pairs
    need a loss balancer in the ModelOpt config (`mtd.StaticLossBalancer()`)."""
    if isinstance(layers, (str, os.PathLike)):
        layers = _read_modelopt(Path(layers))["criterion_layers"]
    return {(str(s), str(t)): loss() for s, t in layers}


def block_path(model_or_config: Any) -> str:
    """The dotted path of the decoder blocks in the plain HF model (`model.layers` for Llama, `transformer.h` for
    GPT-2): from a model (a bridge counts as its plain copy), an HF config (dict or object) or a model_type."""
    from torch import nn

    from ..models.architectures import ARCHITECTURES, LLAMA, architecture
    from ..models.plain import underlying_hf

    if isinstance(model_or_config, nn.Module):
        arch = architecture(underlying_hf(model_or_config))
    else:
        config = model_or_config.to_dict() if hasattr(model_or_config, "to_dict") else model_or_config
        family = config.get("model_type") if isinstance(config, Mapping) else config
        arch = ARCHITECTURES.get(family, LLAMA)
    return ".".join(filter(None, (arch.trunk, arch.layers)))


def load_pairs(source: str | os.PathLike) -> list[LayerPair]:
    """The pairs of a saved `LayerPairing` (`LayerPairing.save`), or of the pairing a `semalign align` run trained
    with (its directory, or its `pairing.json`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "pairing.json"
        if not path.is_file():
            raise SemalignError(f"{source} holds no pairing.json; pass a pairing file written by LayerPairing.save or "
                                "the directory of a semalign align run")
    if not path.is_file():
        raise SemalignError(f"pairing file {path} does not exist; pass a file written by LayerPairing.save or the "
                            "directory of a semalign align run")
    data = read_json(path, "pairing file", "pass a file written by LayerPairing.save")
    if isinstance(data, list):  # a run's record of its pairs (`LayerPair.record`)
        try:
            return [LayerPair(**record) for record in data]
        except TypeError as err:
            raise SemalignError(f"{path} is not a run's pairing record ({err}); pass a file written by "
                                "LayerPairing.save or the directory of a semalign align run") from None
    return LayerPairing.from_dict(data).pairs


def export_pairing(pairing: LayerPairing | Iterable[LayerPair], to: str, out: str | os.PathLike, *,
                   student_blocks: str = LLAMA_BLOCKS, teacher_blocks: str = LLAMA_BLOCKS) -> Path:
    """Write `pairing` for DistillKit (`to="distillkit"`: a YAML fragment with `layer_mapping`, to paste into
    its config) or ModelOpt (`to="modelopt"`: JSON with the criterion's name pairs, `modelopt_criterion`).
    `student_blocks` / `teacher_blocks`: the block paths ModelOpt names (`block_path`)."""
    require_choices("export format", [to], EXPORT_FORMATS)
    pairs = list(pairing)
    if not pairs:
        raise SemalignError("the pairing has no pairs to export; build one with semalign_lens.make_pairing")
    out = check_output_file(out, f"{to} export", (".yaml", ".yml") if to == "distillkit" else (".json",))
    out.parent.mkdir(parents=True, exist_ok=True)
    rounded = rounded_pairs(pairs)
    if to == "distillkit":
        import yaml

        header = ["DistillKit layer_mapping exported by semalign_lens (paste into a DistillKit config).",
                  "[student, teacher] index outputs.hidden_states: 0 = embeddings, i = output of block i - 1;",
                  "in Llama-family HF models the last index (a model's last block) is after the final norm.",
                  f"Caveat: {CAVEAT}.", *(f"Rounded: {line}." for line in rounded)]
        text = "".join(f"# {line}\n" for line in header)
        text += yaml.safe_dump({"layer_mapping": distillkit_layer_mapping(pairs)}, default_flow_style=None,
                               sort_keys=False)
    else:
        text = json.dumps({"criterion_layers": modelopt_layer_pairs(pairs, student_blocks, teacher_blocks),
                           "student_blocks": student_blocks, "teacher_blocks": teacher_blocks,
                           "key": "(student_layer_name, teacher_layer_name) of modelopt.torch.distill "
                                  "KDLossConfig.criterion; semalign_lens.lens.pairing_export.modelopt_criterion(path, "
                                  "loss) builds the dict",
                           "caveat": CAVEAT, "rounded": rounded}, indent=2) + "\n"
    with writing(out):
        out.write_text(text, encoding="utf-8")
    return out


def pairing_from_distillkit(mapping: str | os.PathLike | Sequence[Sequence[int]], n_teacher_layers: int,
                            n_student_layers: int) -> LayerPairing:
    """A `LayerPairing` from DistillKit's `layer_mapping` (a config file holding it, or the list itself): exact
    pairs, hidden_states index i -> block i − 1. Index 0 (the embeddings) is never paired here."""
    if isinstance(mapping, (str, os.PathLike)):
        import yaml

        path = Path(mapping).expanduser()
        try:
            config = yaml.safe_load(read_utf8(path, "DistillKit config"))
        except yaml.YAMLError as err:
            raise SemalignError(f"{path} is not valid YAML ({str(err).splitlines()[0]}); pass a DistillKit config "
                                "file") from None
        mapping = config.get("layer_mapping") if isinstance(config, dict) else None
        if mapping is None or mapping == "all":
            raise SemalignError(f"{path} has no explicit layer_mapping list (DistillKit's 'all' pairs layer i with "
                                "layer i); give [student, teacher] pairs")
    pairs = []
    for entry in mapping:
        student, teacher = _two(entry, int, "DistillKit layer_mapping")
        if min(student, teacher) < 1:
            raise SemalignError(f"DistillKit pair {list(entry)} names hidden_states index 0 (the embeddings), which a "
                                "semalign pairing never pairs; pair block outputs (index >= 1)")
        pairs.append(LayerPair(student - 1, teacher - 1, teacher - 1, 0.0, "imported from DistillKit layer_mapping",
                               "distillkit"))
    return LayerPairing(pairs, n_teacher_layers, n_student_layers, "distillkit")


def pairing_from_modelopt(layers: str | os.PathLike | Sequence[Sequence[str]], n_teacher_layers: int,
                          n_student_layers: int) -> LayerPairing:
    """A `LayerPairing` from ModelOpt criterion name pairs (an exported file, or the pairs): `<blocks>.b` -> b."""
    if isinstance(layers, (str, os.PathLike)):
        layers = _read_modelopt(Path(layers).expanduser())["criterion_layers"]
    pairs = []
    for entry in layers:
        student, teacher = (_block_index(name) for name in _two(entry, str, "ModelOpt criterion layer pair"))
        pairs.append(LayerPair(student, teacher, teacher, 0.0, "imported from ModelOpt criterion layers", "modelopt"))
    return LayerPairing(pairs, n_teacher_layers, n_student_layers, "modelopt")


def _two(entry: Any, kind: type, what: str) -> tuple:
    if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2 \
            or not all(isinstance(v, kind) and not isinstance(v, bool) for v in entry):
        raise SemalignError(f"{what} entry {entry!r} is not a [student, teacher] pair of {kind.__name__}s")
    return tuple(entry)


def _block_index(name: str) -> int:
    last = name.rsplit(".", 1)[-1]
    if not last.isdigit():
        raise SemalignError(f"ModelOpt layer name {name!r} does not end in a block index (e.g. model.layers.3); "
                            "name decoder blocks")
    return int(last)


def _read_modelopt(path: Path) -> dict:
    data = read_json(path, "ModelOpt export", "pass a file written by export_pairing(..., 'modelopt', ...)")
    if not isinstance(data, dict) or not isinstance(data.get("criterion_layers"), list):
        raise SemalignError(f"{path} has no criterion_layers list; pass a file written by export_pairing(..., "
                            "'modelopt', ...)")
    return data
