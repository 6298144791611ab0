"""Teacher activations for the alignment losses: computed on the fly, or cached on disk once.

What the trainer needs from the teacher per batch, as a `models.residuals.ResidualStates`: the residual stream
after every teacher block named by the pairing, the embedding output (block 0's input, the predecessor of the
first pair's residual change) and — only for `kl` — the final logits. Raw teacher states are stored, not mapped
targets, so one cache serves any student basis and TransferMap.

Online: a forward under `no_grad` that stops after the deepest paired block (no head, no logits) unless
logits are needed.

Cached: safetensors shards of `shard_sequences` blocks each, fp16, under a directory whose `meta.json`
records what the states are: the teacher's weight fingerprint, its tokenizer's fingerprint, the layers, the
data fingerprint, the shapes, how logits are held. A cache is used only when all of these match the run (a
cache with more layers than needed, or logits nobody reads, is fine); anything else is refused before training
with the differing field named. Logits are held `dense` (fp16, vocabulary-sized) or `topk`: per token the
teacher's top-k ids (int32), their log-probabilities (fp16) and the log of the remaining mass (fp16), read
back as a `SparseLogits` (see `semalign_lens.sparse_logits`), with `tail_samples` also ids drawn from the
teacher's tail (int32) and their log-probabilities (fp16), drawn with a generator seeded by the shard
index, so a rebuilt cache holds the same draws. A shard names the states `embed` and `post.<layer>` on disk
(`_to_disk` / `_from_disk` convert between those names and the record, nowhere else). A top-k cache of a
run whose terms read the teacher's logit lens (`lens_kl`) also holds, per pair target ((1 − w)·h[low] +
w·h[high]), that lens's top-k in the same form (`lens_readout_keys`), so a step reads it instead of running
the teacher's final norm and head (ours). `meta.json`
is written last, so an interrupted build is never mistaken for a cache; it records each shard's size and
sha256, checked when the cache is opened, so a shard damaged since (truncated, overwritten, copied halfway)
is named in one line and the cache built again instead of trained on. A cache from before these records is
built again too. (The teacher is still loaded once at setup, to fingerprint it, build the TransferMap and
compute its diagnostic states; it is released before training. In a run of several processes only the main
one loads it and builds the cache, under the cache's lock; the others read the meta it sends them.)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core.errors import SemalignError
from ..core.hashing import record_hash
from ..core.paths import cache_dir
from ..core.progress import note
from ..core.runlock import run_lock
from ..core.shards import ShardFiles, remove_shards, shard_problems, write_index, write_shard
from ..lens.pairing import LayerPair
from ..models.readout import lens_fn
from ..models.residuals import ResidualStates, blocks_of, residual_states
from .config import logits_store
from .objectives.sparse_logits import SparseLogits

CACHE_FORMAT = 1
META = "meta.json"  # a cache's shard index (`core.shards`), written last
_FP16_MAX = 65504.0
LOGIT_KEYS = {"dense": ["logits"], "topk": ["topk_ids", "topk_logprobs", "tail_logmass"]}
SAMPLE_KEYS = ["tail_ids", "tail_logprobs"]  # with `tail_samples`
ID_KEYS = {"topk_ids", "tail_ids"}  # int32 in the shards; everything else fp16


def logit_keys(store: str | None, tail_samples: int = 0) -> list[str]:
    """The shard keys of a cache's logits: none, dense, or top-k (and the tail samples when there are any)."""
    return LOGIT_KEYS.get(store, []) + (SAMPLE_KEYS if store == "topk" and tail_samples else [])


def lens_target(pair: LayerPair) -> tuple[int, int, float]:
    """A pair's teacher target as (low, high, weight): what a cached logit-lens readout is keyed by."""
    return pair.teacher_low, pair.teacher_high, float(pair.weight)


def lens_readout_keys(target, tail_samples: int = 0) -> list[str]:
    """The shard keys of the teacher's cached logit-lens top-k at one pair target: `lens.{low}` (an exact pair)
    or `lens.{low}-{high}@{weight}`, then a top-k cache's own key names."""
    low, high, weight = target
    name = f"lens.{low}" if low == high else f"lens.{low}-{high}@{weight!r}"
    return [f"{name}:{key}" for key in logit_keys("topk", tail_samples)]


def _is_ids(key: str) -> bool:
    return key.split(":")[-1] in ID_KEYS


def _sparse_items(keys: list[str], sparse: SparseLogits) -> dict[str, torch.Tensor]:
    """A `SparseLogits` as shard items under `keys` (`logit_keys("topk", m)` or `lens_readout_keys`)."""
    return dict(zip(keys, (sparse.ids, sparse.logprobs, sparse.tail_logmass, sparse.tail_ids, sparse.tail_logprobs),
                    strict=False))


def _sparse_of(keys: list[str], items: dict[str, torch.Tensor]) -> SparseLogits:
    """`_sparse_items` read back (popped from `items`)."""
    return SparseLogits(*(items.pop(k) for k in keys))


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (token -> id) and the special tokens."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", []))
    return record_hash([vocab, special])


@dataclass(frozen=True)
class StateSet:
    """Which teacher states a read returns: block 0's input (`embed`) and the outputs of blocks `layers`."""

    embed: bool
    layers: tuple[int, ...]

    @classmethod
    def of(cls, layers, embed: bool = True) -> StateSet:
        return cls(embed, tuple(sorted({int(x) for x in layers})))

    def __len__(self) -> int:
        return int(self.embed) + len(self.layers)


_EMBED, _POST = "embed", "post"  # the names a cache's shards give the states (kept: caches built before stay valid)


def _disk_name(layer: int | None) -> str:
    """A state's tensor name in a cache shard: layer None is block 0's input."""
    return _EMBED if layer is None else f"{_POST}.{layer}"


def _disk_names(states: StateSet) -> list[str]:
    return ([_disk_name(None)] if states.embed else []) + [_disk_name(layer) for layer in states.layers]


def _to_disk(states: ResidualStates) -> dict[str, torch.Tensor]:
    """A record's states under their shard names."""
    return {_disk_name(None): states.embed, **{_disk_name(layer): x for layer, x in states.post.items()}}


def _from_disk(tensors: dict[str, torch.Tensor], states: StateSet) -> ResidualStates:
    """The `states` of a shard read (`tensors`, by shard name) as a record."""
    return ResidualStates({layer: tensors[_disk_name(layer)] for layer in states.layers},
                          tensors[_disk_name(None)] if states.embed else None)


def stage_states(stage_pairs: Sequence[LayerPair], pairs: Sequence[LayerPair]) -> StateSet:
    """The teacher states the layer terms of a stage training `stage_pairs` read (ours; the cache and the online
    forward serve only these): each pair's teacher layer(s), and where its residual change starts, the previous
    pair's (by student layer) or, for the first pair, the embedding. A frontier stage reads two to four states,
    not every paired layer."""
    order = sorted(pairs, key=lambda p: p.student_layer)
    firsts = [p.student_layer for p in order]
    layers: set[int] = set()
    embed = False
    for pair in stage_pairs:
        i = firsts.index(pair.student_layer)
        layers |= set(pair.teacher_layers)
        if i:
            layers |= set(order[i - 1].teacher_layers)
        else:
            embed = True
    return StateSet.of(layers, embed)


class NoTargets:
    """For objectives that read nothing of the teacher (the SFT control): no teacher pass at all, which
    otherwise costs more than the student's own step (the teacher is the larger model)."""

    mode = "none"

    def __call__(self, tokens: torch.Tensor, index: torch.Tensor | None = None,
                 states: StateSet | None = None) -> ResidualStates:
        return ResidualStates()


class OnlineTargets:
    """Teacher forward per batch under no_grad, truncated at the deepest needed block: of the run's paired
    layers, or of the stage's `states` (`stage_states`) when given."""

    mode = "online"

    def __init__(self, teacher, layers: list[int], logits: bool, autocast=None):
        self.teacher, self.layers, self.logits = teacher, sorted(set(layers)), logits
        self.autocast = autocast

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, index: torch.Tensor | None = None,
                 states: StateSet | None = None) -> ResidualStates:
        states = StateSet.of(self.layers) if states is None else states
        with self.autocast():
            got = residual_states(self.teacher, tokens, states.layers, embed=states.embed, logits=self.logits)
        got = got.map(torch.Tensor.float)
        got.logits = None if got.logits is None else got.logits.float()
        return got


def _to_fp16(name: str, t: torch.Tensor) -> torch.Tensor:
    peak = float(t.abs().max()) if t.numel() else 0.0
    if not peak < _FP16_MAX:
        raise SemalignError(f"teacher activation {name} reaches {peak:.3g}, beyond float16's range; use "
                            "targets.mode = 'online' for this teacher")
    return t.to(torch.float16).contiguous()


def cache_identity(teacher_hash: str, tokenizer_hash: str, layers: list[int], data_hash: str, n_sequences: int,
                   seq_len: int, d_teacher: int, logits: str | None, teacher_name: str,
                   top_k: int | None = None, tail_samples: int = 0,
                   lens: Sequence[tuple[int, int, float]] = ()) -> dict:
    """What a cache holds. `logits`: None, 'dense' or 'topk' (then with `top_k`, and `tail_samples` when
    there are any); without logits the key is `False`, as before logits had modes, so such caches keep their
    automatic paths (and a top-k cache without tail samples keeps its key). `lens`: the pair targets
    (`lens_target`) at which a top-k cache also holds the teacher's logit-lens top-k (a key only when there are
    any, so caches without them keep their paths)."""
    identity = {"format": CACHE_FORMAT, "teacher": teacher_name, "teacher_hash": teacher_hash,
                "tokenizer_hash": tokenizer_hash, "layers": sorted(set(layers)), "data_hash": data_hash,
                "n_sequences": n_sequences, "seq_len": seq_len, "d_teacher": d_teacher, "logits": logits or False}
    if logits == "topk":
        identity["top_k"] = top_k
        if tail_samples:
            identity["tail_samples"] = tail_samples
        if lens:
            identity["lens"] = [list(t) for t in sorted(set(map(tuple, lens)))]
    return identity


def default_cache_path(identity: dict) -> Path:
    key = record_hash({k: v for k, v in identity.items() if k != "teacher"}, sort_keys=True)
    return cache_dir("targets") / key[:20]


def check_cache(path: Path, identity: dict, notes: bool = True) -> dict | None:
    """The cache's meta when it serves `identity`; None when there is no complete, intact cache (a damaged or
    unchecked one is noted, with `notes`, and is to be built again); an error when it was built for other
    inputs."""
    meta_path = path / META
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError):
        return _rebuild(path, "its meta.json is damaged", notes)
    what = {"teacher_hash": "teacher weights", "tokenizer_hash": "tokenizer", "data_hash": "training data",
            "n_sequences": "number of sequences", "seq_len": "sequence length", "d_teacher": "teacher width",
            "format": "cache format"}
    for key, label in what.items():
        if meta.get(key) != identity[key]:
            raise SemalignError(
                f"target cache {path} was built for another {label} ({key}: cached {str(meta.get(key))[:16]!r}, "
                f"this run {str(identity[key])[:16]!r}; cached teacher {meta.get('teacher')!r}, this run "
                f"{identity['teacher']!r}); point targets.cache_dir at another directory (or leave it unset for "
                "an automatic one), or delete the stale cache")
    missing = sorted(set(identity["layers"]) - set(meta["layers"]))
    if missing:
        raise SemalignError(f"target cache {path} holds teacher layers {meta['layers']}, but this run's pairing needs "
                            f"{missing} too; use another targets.cache_dir (or leave it unset)")
    need, held = logits_store(identity["logits"]), logits_store(meta["logits"])
    if need and not held:
        raise SemalignError(f"target cache {path} has no teacher logits, but the objective needs them; set "
                            "targets.mode = 'online' or use another targets.cache_dir with cache_logits = 'topk'")
    if need and held != need:
        raise SemalignError(f"target cache {path} holds {held} teacher logits, but this run asks for {need} "
                            f"(targets.cache_logits); use another targets.cache_dir (or leave it unset)")
    if need == "topk" and meta.get("top_k") != identity["top_k"]:
        raise SemalignError(f"target cache {path} holds the teacher's top {meta.get('top_k')} tokens per position, "
                            f"but this run asks for targets.top_k = {identity['top_k']}; set top_k = "
                            f"{meta.get('top_k')}, or use another targets.cache_dir (or leave it unset)")
    if need == "topk" and meta.get("tail_samples", 0) != identity.get("tail_samples", 0):
        raise SemalignError(f"target cache {path} holds {meta.get('tail_samples', 0)} tail samples per position, but "
                            f"this run asks for targets.tail_samples = {identity.get('tail_samples', 0)}; set "
                            "tail_samples to match, or use another targets.cache_dir (or leave it unset)")
    if missing := sorted(set(map(tuple, identity.get("lens", []))) - set(map(tuple, meta.get("lens", [])))):
        raise SemalignError(f"target cache {path} holds no top-k logit-lens readout of the teacher at pair target(s) "
                            f"{[list(t) for t in missing]} ([low, high, weight]), which this run's lens term reads "
                            "(a cache built before it held them, or for another pairing); delete it to build it "
                            "again, or use another targets.cache_dir (or leave it unset)")
    if "files" not in meta:
        return _rebuild(path, "it records no shard checksums (built by an older version)", notes)
    for shard, problem in shard_problems(path, meta):
        return _rebuild(path, f"shard {shard.name} is damaged ({problem})", notes)
    return meta


def _rebuild(path: Path, why: str, notes: bool) -> None:
    if notes:
        note(f"target cache {path}: {why}; building it again")
    return None


@torch.no_grad()
def build_cache(path: Path, identity: dict, teacher, tokens: torch.Tensor, shard_sequences: int, batch_size: int,
                autocast, progress: bool = True) -> dict:
    """Run the teacher once over `tokens` and write fp16 shards (top-k ids: int32), then `meta.json` with each
    shard's size and sha256. Only the cache's own files are replaced; a write the disk refuses removes the
    shards written so far (freeing their space) and is one line naming the shard.

    One builder at a time: the build holds the cache directory's lock (`runlock`), and a process that waited for
    it finds the cache another one has just built complete and returns its meta, building nothing (several
    runs, or processes, asking for one cache at once would otherwise delete and rewrite each other's shards)."""
    with run_lock(path, "target cache", wait=True):
        if (meta := check_cache(path, identity, notes=False)) is not None:
            return meta
        try:
            return _build_cache(path, identity, teacher, tokens, shard_sequences, batch_size, autocast, progress)
        except BaseException:
            remove_shards(path, META)
            raise


def unshared_cache(path: Path, meta: dict) -> str | None:
    """Where this process cannot read the cache the main process built and checked (every shard present at its
    recorded size; the checksums are not read again), one line naming the fix; else None. The processes of one
    run read one cache directory, so on several machines it must be on a filesystem they share."""
    for shard, problem in shard_problems(path, meta, checksum=False):
        return (f"target cache shard {shard} is {problem} for this process, though the main process built "
                    "it; the processes of a run must share the cache directory: set targets.cache_dir (or "
                    "SEMALIGN_CACHE) to a path on a filesystem every machine mounts")
    return None


def _build_cache(path: Path, identity: dict, teacher, tokens: torch.Tensor, shard_sequences: int, batch_size: int,
                 autocast, progress: bool) -> dict:
    remove_shards(path, META)
    layers = identity["layers"]
    mode = identity["logits"] or None
    samples = identity.get("tail_samples", 0)
    lens_targets = [tuple(t) for t in identity.get("lens", [])]
    lens = lens_fn(teacher, identity.get("vocab_rows")) if lens_targets else None
    n = tokens.shape[0]
    shards = list(range(0, n, shard_sequences))
    for i, start in enumerate(tqdm(shards, desc="caching teacher targets", disable=not progress, leave=False)):
        out: dict[str, list[torch.Tensor]] = {}
        block = tokens[start: start + shard_sequences]
        # tail samples: the same draws on a rebuild, on the device the teacher runs on
        draws = torch.Generator(device=tokens.device).manual_seed(i) if samples else None
        for j in range(0, len(block), batch_size):
            with autocast():
                states = residual_states(teacher, block[j: j + batch_size], layers, embed=True,
                                         logits=mode is not None)
            store, logits = _to_disk(states), states.logits
            if logits is not None and identity.get("vocab_rows"):  # a padded head's rows are no tokens (the
                logits = logits[..., : identity["vocab_rows"]]  # teacher's and tokenizer's hashes fix this count)
            if mode == "dense":
                store["logits"] = logits
            elif mode == "topk":
                store.update(_sparse_items(logit_keys("topk", samples),
                                           SparseLogits.from_logits(logits, identity["top_k"], samples, draws)))
                for target in lens_targets:  # what `lens_kl` reads: the lens on the pair's target, as online
                    with autocast():
                        z = lens(_target_state(states, target))
                    store.update(_sparse_items(lens_readout_keys(target, samples),
                                               SparseLogits.from_logits(z, identity["top_k"], samples, draws)))
            for key, value in store.items():
                out.setdefault(key, []).append(value.cpu() if _is_ids(key) else value.float().cpu())
        write_shard(path, i, {k: torch.cat(v) if _is_ids(k) else _to_fp16(k, torch.cat(v)) for k, v in out.items()},
                    "then rerun the same command, which builds the cache again (targets.cache_dir or SEMALIGN_CACHE "
                    "put it elsewhere)")
    return write_index(path, META, len(shards), {**identity, "shard_sequences": shard_sequences, "dtype": "float16",
                                                 "keys": _disk_names(StateSet.of(layers)) + logit_keys(mode, samples)
                                                 + [k for t in lens_targets for k in lens_readout_keys(t, samples)]})


def _target_state(states: ResidualStates, target) -> torch.Tensor:
    """(1 − w)·h[low] + w·h[high] of a teacher forward's states, in float32 as the online targets hand it over."""
    low, high, weight = target
    return LayerPair(0, low, high, weight).target({b: states.post[b].float() for b in {low, high}})


@torch.no_grad()
def diagnostic_states(teacher, tokens: torch.Tensor, autocast) -> ResidualStates:
    """Every teacher block's resid_post on the diagnostic batch (float32, on the CPU) and the embedding."""
    with autocast():
        states = residual_states(teacher, tokens, range(len(blocks_of(teacher))), embed=True)
    return states.map(lambda v: v.float().cpu().contiguous())


@torch.no_grad()
def lens_top1(teacher, states: ResidualStates, layers, autocast, rows: int | None = None) -> dict[int, torch.Tensor]:
    """{layer: the teacher's logit-lens top-1 ids} for `layers` only: a vocabulary-sized readout per layer, so
    all 30 of SmolLM2's cost more than the rest of a short run's diagnostics. `rows`: the real vocabulary rows
    (`models.load.vocab_rows`; None: the whole head)."""
    lens = lens_fn(teacher, rows)
    out = {}
    for layer in sorted(set(layers)):
        with autocast():
            out[layer] = lens(states.post[layer]).argmax(-1).contiguous()
    return out


class CachedTargets:
    """Reads teacher activations of dataset blocks from the shards (memory-mapped, row by row), only the states
    asked for: a stage's (`stage_states`), else every state the cache holds."""

    mode = "cached"

    def __init__(self, path: Path, meta: dict, logits: str | None, device: torch.device | str = "cpu"):
        self.path, self.meta, self.logits, self.device = path, meta, logits, device
        self.states = StateSet.of(meta["layers"])
        self._files = ShardFiles(path)

    def _file(self, shard: int):
        return self._files[shard]

    def __call__(self, tokens: torch.Tensor, index: torch.Tensor | None = None,
                 states: StateSet | None = None, lens: Sequence[tuple[int, int, float]] = ()) -> ResidualStates:
        """`lens`: the pair targets whose cached logit-lens top-k to read too (the record's `lens`)."""
        if index is None:
            raise SemalignError("cached targets are looked up by dataset index; pass the batch indices")
        per, samples = self.meta["shard_sequences"], self.meta.get("tail_samples", 0)
        states = self.states if states is None else states
        readout_keys = {tuple(t): lens_readout_keys(t, samples) for t in lens}
        keys = (_disk_names(states) + logit_keys(self.logits, samples)
                + [k for ks in readout_keys.values() for k in ks])
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for i in index.tolist():
            f = self._file(i // per)
            for key in keys:
                rows[key].append(f.get_slice(key)[i % per: i % per + 1])
        out = {k: torch.cat(v).to(self.device) if _is_ids(k) else torch.cat(v).to(self.device, torch.float32)
               for k, v in rows.items()}
        got = _from_disk(out, states)
        got.logits = out.get("logits")
        if self.logits == "topk":
            got.logits = _sparse_of(logit_keys("topk", samples), out)
            got.lens = {t: _sparse_of(ks, out) for t, ks in readout_keys.items()}
        return got
