"""Narrow capture of residual streams: only the hooks asked for, only as deep as needed.

Points, for block `l` (0-based, TransformerLens numbering):
- `resid_pre`  — the residual entering block l (`blocks.{l}.hook_in`, alias `hook_resid_pre`);
- `resid_post` — the residual leaving block l (`blocks.{l}.hook_out`, alias `hook_resid_post`);
- `block_write` — what block l adds to the stream, resid_post − resid_pre (what attribution should score);
- `attn_out` / `mlp_out` — the attention write and the MLP write of block l (`blocks.{l}.attn.hook_out` /
  `blocks.{l}.mlp.hook_out`, aliases `hook_attn_out` / `hook_mlp_out`): block_write = attn_out + mlp_out.

`Capture` is the TransformerLens-shaped view of these points over many sequences, over one `ResidualStates`
record from the package's one capture engine, `models.residuals.residual_states` (resid_pre of block l is block
l − 1's output, block 0's input for l = 0; block_write is derived), and the sub-layer writes, read from the
bridge's hooks in the same forward. `accumulated_resid`, `sublayer_writes` and `token_states` take the same
forwards flattened to the real tokens (the pairing inspection's states). `attention_patterns` reads the heads'
attention patterns (`blocks.{l}.attn.hook_pattern`) the same narrow way.

Why narrow: a full `run_with_cache` on SmolLM2 keeps ~3.6 MB per token (1333 tensors, logits-sized ones
included); resid_post at 30 layers is 66 KB per token. The forward also stops after the deepest block
needed, so no final norm, unembedding or logits are computed. Results are float32 on the
CPU. When they would not fit in memory, pass `shard_dir` and each batch goes to a safetensors shard.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Bool, Float
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..core.checks import check_output_dir, require_hooked, require_int
from ..core.errors import SemalignError
from ..core.shards import read_index, shard_name, shard_problems, write_index, write_shard
from ..data.tokens import TokenBatch
from ..models.plain import model_device
from ..models.residuals import ResidualStates, Sink, blocks_of, residual_states

INDEX = "index.json"  # a capture's shard index (`core.shards`)

Point = Literal["resid_pre", "resid_post", "block_write", "attn_out", "mlp_out"]
POINTS: tuple[str, ...] = ("resid_pre", "resid_post", "block_write", "attn_out", "mlp_out")
SUBLAYER_POINTS: tuple[str, ...] = ("attn_out", "mlp_out")  # the two writes of a block
_HOOK_OF = {"resid_pre": "hook_in", "resid_post": "hook_out", "attn_out": "attn.hook_out", "mlp_out": "mlp.hook_out"}


_HOOK_POINTS = {"hook_resid_pre": "resid_pre", "hook_in": "resid_pre", "hook_resid_post": "resid_post",
                "hook_out": "resid_post", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out"}


def parse_hook_name(name: str) -> tuple[str, int]:
    """(point, layer) of a residual or block-write hook name, in TransformerLens's form
    (`blocks.3.hook_resid_post`, what `transformer_lens.utilities.get_act_name("resid_post", 3)` returns;
    `blocks.3.hook_attn_out`) or the bridge's (`blocks.3.hook_out`, `blocks.3.attn.hook_out`)."""
    match = re.fullmatch(r"blocks\.(\d+)\.((?:attn\.|mlp\.)?hook_\w+)", name)
    point = None if match is None else _HOOK_POINTS.get(match[2].replace("attn.hook_out", "hook_attn_out")
                                                         .replace("mlp.hook_out", "hook_mlp_out"))
    if point is None:
        raise SemalignError(f"{name!r} is not a residual hook name; use blocks.L.hook_resid_pre / hook_resid_post "
                            "(TransformerLens's get_act_name) or blocks.L.hook_in / hook_out (the bridge's), or a "
                            "block write: blocks.L.hook_attn_out / hook_mlp_out")
    return point, int(match[1])


def hook_name(point: str, layer: int) -> str:
    """Canonical TransformerBridge hook name of a residual point or block write (block_write is derived, not
    hooked)."""
    if point not in _HOOK_OF:
        raise SemalignError(f"point {point!r} has no single hook; hookable points: {sorted(_HOOK_OF)}")
    return f"blocks.{layer}.{_HOOK_OF[point]}"


def check_layers(model, layers: Iterable[int]) -> list[int]:
    require_hooked(model)
    n = model.cfg.n_layers
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        raise SemalignError("no layers requested; pass at least one block index")
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise SemalignError(f"layer index {bad[0]} is out of range for {n}-layer model "
                            f"{getattr(model.cfg, 'model_name', '')!s}; valid layers are 0..{n - 1}")
    return layers


def check_points(points: Iterable[str]) -> tuple[str, ...]:
    points = tuple(points)
    bad = [p for p in points if p not in POINTS]
    if bad or not points:
        raise SemalignError(f"unknown capture point(s) {bad}; valid points: {POINTS}")
    return points


def _engine_request(points: Sequence[str], layers: Sequence[int]) -> tuple[list[int], bool]:
    """(block outputs, whether block 0's input) of the residual record that residual `points` at `layers` read:
    resid_pre of block l is block l − 1's output (block 0's input for l = 0); a block write needs both ends."""
    outputs, embed = set(), False
    for point in points:
        for layer in layers:
            if point in ("resid_pre", "block_write"):
                embed |= layer == 0
                outputs |= {layer - 1} if layer else set()
            if point in ("resid_post", "block_write"):
                outputs.add(layer)
    return sorted(outputs), embed


def _forward(model, tokens: torch.Tensor, outputs: Sequence[int], embed: bool, writes: Sequence[tuple[str, int]],
             sink: Sink, take_write: Callable[[tuple[str, int], torch.Tensor], None]) -> None:
    """One forward, no gradients, through the one engine (`models.residuals.residual_states`), stopping after the
    deepest block needed: block `outputs` (and block 0's input with `embed`) go to `sink` as the forward makes
    them, the sub-layer `writes` ((point, layer) pairs, read from the bridge's `blocks.{l}.attn.hook_out` /
    `mlp.hook_out`) to `take_write` in the same forward."""
    named = [(hook_name(p, layer), (p, layer)) for p, layer in writes]
    _require_hooks(model, [name for name, _ in named])

    def hooked(key):
        def hook(tensor, hook):
            take_write(key, tensor)
            return tensor
        return hook

    wanted = set(outputs)  # a write's block runs, but its output is not kept unless asked for
    kept: Sink = lambda layer, state: sink(layer, state) if layer is None or layer in wanted else None  # noqa: E731
    with model.hooks(fwd_hooks=[(name, hooked(key)) for name, key in named]) if named else nullcontext():
        residual_states(model, tokens, wanted | {layer for _, layer in writes}, embed=embed, sink=kept)


@dataclass
class Capture:
    """Captured points over many sequences, TransformerLens-shaped: `get(point, layer)` is float32
    [n_seq, pos, d] on the CPU, padding kept, `mask` marks real tokens.

    A view, not a store: the residual points are read from one `ResidualStates` record (`states`, float32 [n_seq,
    pos, d] states on the CPU, its `mask` the real tokens) as `residual_states` defines them, so resid_post of
    block l is `states.post[l]`, resid_pre of block l is block l − 1's output (`states.embed` for l = 0; the same
    tensor as resid_post of block l − 1, as in TransformerLens they are the same values) and block_write is
    resid_post − resid_pre, derived on each read. The attention and MLP writes, which are not residual states,
    are `writes[(point, layer)]`. `captured` is the (point, layer) pairs this capture answers for."""

    states: ResidualStates
    captured: frozenset[tuple[str, int]]
    writes: dict[tuple[str, int], Float[torch.Tensor, "seq pos d"]] = field(default_factory=dict)
    model: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def mask(self) -> Bool[torch.Tensor, "seq pos"]:
        return self.states.mask

    def get(self, point: str, layer: int) -> Float[torch.Tensor, "seq pos d"]:
        if (point, layer) not in self.captured:
            raise SemalignError(f"({point!r}, {layer}) was not captured; captured: {sorted(self.captured)}")
        if point in SUBLAYER_POINTS:
            return self.writes[(point, layer)]
        if point == "resid_post":
            return self.states.post[layer]
        pre = self.states.embed if layer == 0 else self.states.post[layer - 1]
        return pre if point == "resid_pre" else self.states.post[layer] - pre

    def tokens_of(self, point: str, layer: int) -> Float[torch.Tensor, "n d"]:
        """The real (unpadded) positions of one point as a [n_tokens, d] matrix."""
        return self.get(point, layer)[self.mask]

    @property
    def layers(self) -> list[int]:
        return sorted({layer for _, layer in self.captured})

    @property
    def points(self) -> list[str]:
        return sorted({p for p, _ in self.captured})

    def _layers_of(self, point: str, below: int | None = None) -> list[int]:
        layers = [layer for layer in self.layers if (point, layer) in self.captured and (below is None or layer < below)]
        if not layers:
            raise SemalignError(f"no {point!r} layer{'' if below is None else f' below {below}'} was captured; "
                                f"captured: {sorted(self.captured)}")
        return layers

    def stack_activation(self, point: str, layer: int | None = -1) -> Float[torch.Tensor, "layer seq pos d"]:
        """The captured layers of `point` below `layer` (-1 or None: all) as [layer, seq, pos, d], padding kept:
        TransformerLens's `ActivationCache.stack_activation`. Row i is the i-th such layer of `self.layers`, so
        layer i when every layer was captured."""
        below = None if layer is None or layer == -1 else layer
        return torch.stack([self.get(point, x) for x in self._layers_of(point, below)])

    def flat_stack(self, point: str) -> Float[torch.Tensor, "layer n d"]:
        """`stack_activation` over real tokens only, [layer, n_tokens, d]: the rows of a CKA map or a fit."""
        return torch.stack([self.tokens_of(point, x) for x in self._layers_of(point)])

    def __getitem__(self, key: tuple[str, int] | str) -> Float[torch.Tensor, "seq pos d"]:
        """`cap["resid_post", 3]`, or a hook name in TransformerLens's or the bridge's form
        (`cap["blocks.3.hook_resid_post"]`, `cap["blocks.3.hook_out"]`): [seq, pos, d], padding kept."""
        point, layer = parse_hook_name(key) if isinstance(key, str) else key
        return self.get(point, int(layer))

    def to_activation_cache(self, model):
        """A TransformerLens `ActivationCache` over the same tensors, keyed by TL hook names
        (`blocks.{l}.hook_resid_pre` / `hook_resid_post`; `block_write` has no TL hook and is left out)."""
        from transformer_lens import ActivationCache

        tl_name = {"resid_pre": "hook_resid_pre", "resid_post": "hook_resid_post", "attn_out": "hook_attn_out",
                   "mlp_out": "hook_mlp_out"}
        return ActivationCache({f"blocks.{layer}.{tl_name[point]}": self.get(point, layer)
                                for point, layer in sorted(self.captured) if point in tl_name}, model)

    @classmethod
    def from_activation_cache(cls, cache, mask: Bool[torch.Tensor, "seq pos"] | None = None, model: str = ""
                              ) -> Capture:
        """The residual entries of a TransformerLens `ActivationCache` (or any dict keyed by hook names, e.g.
        a bridge's `run_with_cache`) as a float32 `Capture`; `mask` defaults to every position real. resid_pre of
        block l and resid_post of block l − 1 are one state: the first of the two names in the cache gives it."""
        states: dict[int | None, torch.Tensor] = {}  # None: block 0's input
        writes: dict[tuple[str, int], torch.Tensor] = {}
        captured = set()
        for name in cache.keys():
            try:
                point, layer = parse_hook_name(name)
            except SemalignError:
                continue
            captured.add((point, layer))
            store, key = (writes, (point, layer)) if point in SUBLAYER_POINTS else \
                (states, layer if point == "resid_post" else layer - 1 if layer else None)
            if key not in store:
                store[key] = cache[name].detach().float().cpu()
        if not captured:
            raise SemalignError("the cache holds no residual hook (blocks.L.hook_resid_pre / hook_resid_post); run "
                                "it with those hooks cached")
        first = next(iter([*states.values(), *writes.values()]))
        mask = torch.ones(first.shape[:2], dtype=torch.bool) if mask is None else mask
        return cls(_record(states, mask), frozenset(captured), writes, model=model)


def _record(states: dict[int | None, torch.Tensor], mask: Bool[torch.Tensor, "seq pos"]) -> ResidualStates:
    """The record of states keyed as a `residual_states` sink gives them (None: block 0's input)."""
    return ResidualStates({layer: x for layer, x in states.items() if layer is not None}, states.get(None), mask=mask)


def capture(model, batch: TokenBatch, layers: Iterable[int], points: Sequence[str] = ("resid_post",),
            batch_size: int = 1, shard_dir: str | Path | None = None, progress: bool = True):
    """Capture residual `points` at `layers` for every sequence of `batch`.

    Returns a `Capture` in host memory (float32; the forwards run on the model's device), or — with `shard_dir`
    — writes one safetensors shard per batch and returns a `ShardedCapture` that loads layers on demand.
    `batch_size` sequences go through each forward: 1 (the default) keeps peak memory at the result plus one
    sequence's forward, and on a CPU costs little speed (benchmarks/RESULTS.md); raise it on a GPU.
    The result keeps each residual state once (resid_pre of block l is resid_post of block l − 1), so a block
    write asked for alone keeps both of its ends.
    """
    require_hooked(model)
    if not isinstance(batch, TokenBatch):
        raise SemalignError(f"capture needs a TokenBatch (semalign_lens.data.tokens.tokenize(tokenizer, texts)), got "
                            f"{type(batch).__name__}")
    if len(batch) == 0:
        raise SemalignError("empty batch: pass at least one sequence")
    require_int("batch_size", batch_size)
    vocab = getattr(model.cfg, "d_vocab", None)
    if vocab and batch.tokens.numel() and not 0 <= int(batch.tokens.min()) <= int(batch.tokens.max()) < vocab:
        raise SemalignError(f"token ids {int(batch.tokens.min())}..{int(batch.tokens.max())} fall outside the model's "
                            f"vocabulary of {vocab}; tokenise with this model's tokenizer")
    layers = check_layers(model, layers)
    points = check_points(points)
    if model.training:
        raise SemalignError("capture needs the model in eval mode (dropout would make activations random); "
                            "call model.eval() first")
    if shard_dir is not None:
        shard_dir = check_output_dir(shard_dir, "shard_dir")
        shard_dir.mkdir(parents=True, exist_ok=True)
    captured = frozenset((p, layer) for p in points for layer in layers)
    outputs, embed = _engine_request(points, layers)
    writes = sorted(key for key in captured if key[0] in SUBLAYER_POINTS)
    # The record's states and the writes are preallocated and filled from inside the forward (the engine's sink
    # and the hooks copy each one in as it is made): no list of chunks, no final concatenation, no sub-batch's
    # worth of kept layers, so peak memory is the result plus one sub-batch's forward. With shard_dir, the
    # buffers are one sub-batch's, written out as one shard.
    states: dict[int | None, torch.Tensor] = {}
    taken: dict[tuple[str, int], torch.Tensor] = {}
    parts = list(batch.split(batch_size))
    rows, shape = slice(0, 0), (len(batch), batch.tokens.shape[1])  # where the sub-batch goes; the buffers' shape

    def put(store: dict, key, value: torch.Tensor) -> None:
        if key not in store:
            store[key] = torch.zeros((*shape, value.shape[-1]), dtype=torch.float32)
        store[key][rows, : value.shape[1]] = value

    def take_state(layer: int | None, state: torch.Tensor) -> None:
        put(states, layer, state)

    def take_write(key: tuple[str, int], write: torch.Tensor) -> None:
        put(taken, key, write)

    row = 0
    for i, part in enumerate(tqdm(parts, desc=f"capture {getattr(model.cfg, 'model_name', '')}",
                                  disable=not progress or len(parts) < 2, leave=False)):
        if shard_dir is None:
            rows = slice(row, row + len(part))
        else:
            rows, shape = slice(None), tuple(part.tokens.shape)
        _forward(model, part.tokens, outputs, embed, writes, take_state, take_write)
        row += len(part)
        if shard_dir is not None:
            view = Capture(_record(states, part.mask), captured, taken)
            write_shard(shard_dir, i, {**{f"{p}.{layer}": view.get(p, layer).contiguous()
                                          for p, layer in sorted(captured)},
                                       "mask": part.mask.contiguous()}, "then capture again")
            states.clear()
            taken.clear()
    name = getattr(model.cfg, "model_name", "")
    if shard_dir is not None:
        write_index(shard_dir, INDEX, len(parts), {"model": str(name), "points": list(points), "layers": layers})
        return ShardedCapture(shard_dir)
    return Capture(_record(states, batch.mask.clone()), captured, taken, model=str(name))


class ShardedCapture:
    """A capture on disk (one safetensors file per batch); loads one (point, layer) at a time.

    `index.json` records each shard's size and sha256: sizes are checked on opening, each shard's checksum
    before it is first read, so a damaged shard is one error naming it, never garbage. (A capture written
    before these records is read unchecked.)"""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.index = read_index(self.folder, INDEX)
        if self.index is None:
            raise SemalignError(f"{self.folder} has no {INDEX}; it is not a semalign_lens capture directory")
        self.files = [self.folder / shard_name(i) for i in range(self.index["shards"])]
        self._check(checksum=False)
        self._checked: set[Path] = set()

    def _check(self, only: Path | None = None, checksum: bool = True) -> None:
        index = self.index if only is None else {"files": {k: v for k, v in self.index.get("files", {}).items()
                                                           if k == only.name}}
        for path, problem in shard_problems(self.folder, index, checksum):
            raise SemalignError(f"capture shard {path} is damaged ({problem}); capture again into an empty "
                                "shard_dir")

    @property
    def layers(self) -> list[int]:
        return list(self.index["layers"])

    def tokens_of(self, point: str, layer: int) -> Float[torch.Tensor, "n d"]:
        """Real positions of one point over all shards, [n_tokens, d]."""
        key = f"{point}.{layer}"
        out = []
        for f in self.files:
            if f not in self._checked:  # each shard's checksum once, before it is first read
                self._check(f)
                self._checked.add(f)
            shard = load_file(str(f))
            if key not in shard:
                raise SemalignError(f"({point!r}, {layer}) was not captured in {self.folder}")
            out.append(shard[key][shard["mask"]])
        return torch.cat(out)

    def flat_stack(self, point: str) -> Float[torch.Tensor, "layer n d"]:
        """Every layer of `point` as [layer, n_tokens, d] (`Capture.flat_stack`)."""
        return torch.stack([self.tokens_of(point, layer) for layer in self.layers])


def _real_token_states(model, batch: TokenBatch, *, depth: int | None, writes: Sequence[str], drop_first: bool,
                       batch_size: int, progress: bool, caller: str, noun: str
                       ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward per `batch_size` sequences of `batch` (`_forward`; dropout off, the model's mode restored), each
    state copied out at the real tokens the moment it is made, float32 on the CPU, each result allocated once
    (no per-chunk copies, and padding never costs memory): the residual stream entering blocks 0..depth in
    `ResidualStates.stream` order, [depth + 1, n_tokens, d] (None for depth None), and the `writes` of every
    block, {point: [block, n_tokens, d]}. Row j of every tensor is the same token; `drop_first` leaves each
    sequence's first token out. `caller` and `noun` name the request in its errors."""
    if not isinstance(batch, TokenBatch):
        raise SemalignError(f"{caller} needs a TokenBatch (semalign_lens.data.tokens.tokenize), got "
                            f"{type(batch).__name__}")
    if writes:
        require_hooked(model)
        bad = [p for p in check_points(writes) if p not in SUBLAYER_POINTS]
        if bad:
            raise SemalignError(f"{caller} reads {SUBLAYER_POINTS}, got {bad}; residual points come from "
                                "accumulated_resid or token_states")
    keep = batch.mask.clone()
    if drop_first:
        keep[:, 0] = False  # right padding: position 0 is every sequence's first token
    if not keep.any():
        raise SemalignError(f"the batch has no real token to take {noun} of (drop_first leaves none)")
    n_blocks, total = len(blocks_of(model)), int(keep.sum())
    stream: torch.Tensor | None = None
    out: dict[str, torch.Tensor] = {}
    row, n, real = 0, 0, keep  # the chunk's first row in the result, its real tokens' count and mask

    def take_state(layer: int | None, state: torch.Tensor) -> None:
        nonlocal stream
        if stream is None:
            stream = torch.empty(depth + 1, total, state.shape[-1])
        stream[0 if layer is None else layer + 1, row: row + n] = state[real].float().cpu()

    def take_write(key: tuple[str, int], write: torch.Tensor) -> None:
        if key[0] not in out:
            out[key[0]] = torch.empty(n_blocks, total, write.shape[-1])
        out[key[0]][key[1], row: row + n] = write[real].float().cpu()

    chunks = list(TokenBatch(batch.tokens, keep).split(batch_size))
    was_training = model.training
    model.eval()  # dropout off: these are measurements (a trainer's student is in train mode)
    try:
        for part in tqdm(chunks, desc=noun, disable=not progress or len(chunks) < 2, leave=False):
            n, real = int(part.mask.sum()), part.mask.to(model_device(model))
            if n:
                _forward(model, part.tokens, range(depth or 0), depth is not None,
                         [(p, layer) for p in writes for layer in range(n_blocks)], take_state, take_write)
                row += n
    finally:
        model.train(was_training)
    return stream, {p: out[p] for p in writes}


def accumulated_resid(model, batch: TokenBatch, *, layer: int | None = None, return_labels: bool = False,
                      drop_first: bool = False, batch_size: int = 16, progress: bool = False
                      ) -> Float[torch.Tensor, "point n_tokens d"] | tuple[Float[torch.Tensor, "point n_tokens d"],
                                                                             list[str]]:
    """TransformerLens's `ActivationCache.accumulated_resid` at the real tokens of `batch`: one float32 CPU
    tensor whose row i is the residual entering block i (row 0 the embeddings, row b + 1 the output of block b,
    i.e. the package's layer b), for blocks up to `layer`; with `layer` None / -1 / n_layers the last row is
    the final residual. `return_labels` adds TL's labels ("0_pre", ..., "final_post").

    Unlike TL's [point, batch, pos, d], tokens are flattened ([point, n_tokens, d], row j of every point the
    same token), so padding never costs memory (HumanEval prompts vary from 50 to 400 tokens). `drop_first`
    leaves out each sequence's first token (the document start), whose outlier state dominates linear CKA.
    TL's `apply_ln` is `models.readout.logit_lens` here (norm and head); resid_mid is not captured (no `incl_mid`).
    Runs on a TransformerBridge and on a plain HF causal LM (the trainer's copies) through the one capture engine,
    `models.residuals.residual_states`, without gradients: the one residual stack the pairing report, the
    trainer, the analyses and notebooks read (`token_states` is the same stack as a `ResidualStates`).
    """
    n_layers = len(blocks_of(model))
    layer = n_layers if layer is None or layer == -1 else layer
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n_layers:
        raise SemalignError(f"layer must be a block index in 0..{n_layers} (or None / -1: every block), got {layer!r}")
    out, _ = _real_token_states(model, batch, depth=layer, writes=(), drop_first=drop_first, batch_size=batch_size,
                                progress=progress, caller="accumulated_resid", noun="residual states")
    labels = [f"{i}_pre" for i in range(layer + 1)]
    if layer == n_layers:
        labels[-1] = "final_post"
    return (out, labels) if return_labels else out


def sublayer_writes(model, batch: TokenBatch, *, points: Sequence[str] = SUBLAYER_POINTS, drop_first: bool = False,
                    batch_size: int = 16, progress: bool = False) -> dict[str, Float[torch.Tensor, "layer n_tokens d"]]:
    """The attention write and the MLP write of every block at the real tokens of `batch` (`points` of
    `SUBLAYER_POINTS`), flattened as `accumulated_resid` flattens residuals: {point: [layer, n_tokens, d]}, row b
    block b's write, row j of every layer the same token (`drop_first` leaves each sequence's first token out).
    `token_states` reads them in the same forwards as the residual states."""
    require_hooked(model)
    return _real_token_states(model, batch, depth=None, writes=points, drop_first=drop_first, batch_size=batch_size,
                              progress=progress, caller="sublayer_writes", noun="the block writes")[1]


def token_states(model, batch: TokenBatch, *, writes: Sequence[str] = (), drop_first: bool = False,
                 batch_size: int = 16, progress: bool = False
                 ) -> tuple[ResidualStates, dict[str, Float[torch.Tensor, "layer n_tokens d"]]]:
    """One model's states for comparing it with another on the same tokens, from one forward per `batch_size`
    sequences: the `ResidualStates` record of every block at the real tokens of `batch`, each state [n_tokens, d]
    (float32 on the CPU, row j of every state the same token, so the record has no mask; `stream()` is
    `accumulated_resid`), and from the same forwards the block writes named in `writes` (of `SUBLAYER_POINTS`),
    as `sublayer_writes` gives them. What the pairing inspection's measures, fidelity and sub-layer view read."""
    stream, out = _real_token_states(model, batch, depth=len(blocks_of(model)), writes=writes, drop_first=drop_first,
                                     batch_size=batch_size, progress=progress, caller="token_states",
                                     noun="residual states")
    return ResidualStates.from_stream(stream), out


def require_sublayer_writes(model) -> None:
    """Refuse, in one line and before any forward, a model whose blocks lack an attention or an MLP write (a
    recurrent or state-space block has no attention, an attention-only block no MLP)."""
    require_hooked(model)
    _require_hooks(model, [hook_name(p, layer) for p in SUBLAYER_POINTS for layer in range(len(blocks_of(model)))])


def _require_hooks(model, names: Sequence[str]) -> None:
    """Refuse, in one line, a hook this model's blocks do not have (a recurrent or state-space block has no
    attention; an attention-only block no MLP), before any forward runs."""
    known = getattr(model, "hook_dict", None)
    missing = [n for n in names if known is not None and n not in known]
    if missing:
        raise SemalignError(f"{getattr(model.cfg, 'model_name', 'the model')} has no hook {missing[0]}: that block "
                            "has no such sub-layer (a recurrent or state-space block has no attention, an "
                            "attention-only block no MLP)")


@torch.no_grad()
def attention_patterns(model, tokens: torch.Tensor, layers: Iterable[int]) -> dict[int, Float[torch.Tensor,
                                                                                             "batch head q k"]]:
    """One forward over `tokens` (stopping after the deepest of `layers`): each layer's attention pattern, the
    softmax weights of every head over the keys (TransformerLens's `blocks.{l}.attn.hook_pattern`), float32 on
    the CPU, {layer: [batch, head, query, key]}."""
    layers = check_layers(model, layers)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    _require_hooks(model, names)
    store: dict[int, torch.Tensor] = {}

    def save(pattern, hook):
        store[int(hook.name.split(".")[1])] = pattern.detach().float().cpu()
        return pattern

    model.run_with_hooks(tokens.to(model_device(model)), return_type=None, stop_at_layer=max(layers) + 1,
                         fwd_hooks=[(name, save) for name in names])
    missing = [layer for layer in layers if layer not in store]
    if missing:
        raise SemalignError(f"block {missing[0]}'s attention fired no hook_pattern (its attention kernel hides the "
                            "weights); load the model with eager attention to read its heads")
    return store
