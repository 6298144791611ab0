"""Layer rankers: which blocks of a model matter for a task, by five families of evidence.

Every ranker takes a hooked model (teacher or student; any TransformerBridge) in eval mode and a `PairBatch`
(`semalign_lens.data.tasks`), and returns one long-form DataFrame with one row per (method, layer):

    method, model, layer, score, ci_low, ci_high, n, rank, p_top, metric, unit

`score` is oriented so that **higher = more important**; `ci_low/ci_high` are seeded percentile-bootstrap
95% intervals over prompts; `rank` 1 is the top layer; `p_top` is the fraction of bootstrap resamples in
which that layer ranks first (rank stability). What is scored is the **block write** (resid_post −
resid_pre), never resid_post, whose norm grows with depth and would bias rankings toward deep layers.

Methods (M = the task metric, by default the teacher-forced answer log-prob of the clean answer):

- `grad_x_act` (paper, SemAlign v1 §2.1: Captum-style layer gradient × activation, aggregated over tokens
  and channels): Σ_{t,i} w_ti ∂M/∂w_ti on the clean run — the first-order estimate of M(w) − M(0).
  `grad_x_act_abs` (inference: v1 does not say signed or absolute): Σ_t |Σ_i w_ti ∂M/∂w_ti|, which does not
  let tokens cancel.
- `patch_denoise`: the clean block write patched into the corrupted run, [M(patched) − M(corr)] /
  [M(clean) − M(corr)] (sufficiency); `patch_noise`: the corrupted write patched into the clean run,
  [M(clean) − M(patched)] / [M(clean) − M(corr)] (necessity). Both normalised by the mean gap (ratio of
  means, resampled jointly in the bootstrap; per-prompt ratios explode when a gap is near 0).
- `ablate_zero` / `ablate_mean` / `ablate_resample`: the block write replaced by 0, by its mean over the
  task's clean prompts at that position, or by another prompt's write (a derangement within the batch; the
  mean where that prompt is shorter); score = M(clean) − M(ablated), in the metric's units.
- `seeking` (Seeking, Zhong et al. 2024): Σ_{θ ∈ block} |θ · ∂L/∂θ| with L = −M, per prompt (one backward
  per prompt, as in Seeking's per-sample sum).
- `laten` (LaTen's static log-prob increase, Tan et al. 2025; **adapted**): LaTen scores a module's output
  o against the residual r before it as log p(y|r+o) − log p(y|r), read through the final norm with the
  *final* residual's scale and the LM head (the "frozen" logit lens, TransformerLens's `apply_ln_to_stack`;
  `models.readout.logit_lens`), at the last position for the last answer token. Here the module
  is the whole block (o = block write, r = resid_pre), and the increase is summed over every answer token at
  the position that predicts it (teacher-forced, like the other methods).

Patching and ablation share one engine: the runs before block l are the unpatched ones, so a patched run
restarts at block l (`start_at_layer`) with block l's output overwritten by resid_pre_l + new write, and
all interventions at one layer go through the model as one batch; the forward stops before the final norm
and the LM head is applied only at the positions the metric reads (checked against the model's own logits
on the clean run, with a fallback to full logits for heads the logit-lens readout does not reproduce).
`engine="transformer_lens"` runs `transformer_lens.patching.generic_activation_patch` (full forwards, one
per layer and intervention) on the `blocks.{l}.hook_resid_post` alias with an additive patch setter; the
tests check that both engines agree. A model that cannot restart at a block (Gemma-4 rebuilds its per-layer
embeddings from the token ids, which a restart from the residual does not have) takes that engine too.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from ..core.checks import require_hooked, require_int
from ..core.errors import SemalignError
from ..data.tasks.batch import PairBatch
from ..data.tasks.metrics import check_metric, metric_fn
from ..models.load import model_name, vocab_rows
from ..models.plain import model_device
from ..models.residuals import ResidualStates, residual_states
from .capture import hook_name

PATCH_METHODS = ("patch_denoise", "patch_noise")
ABLATION_METHODS = ("ablate_zero", "ablate_mean", "ablate_resample")
METHODS = ("grad_x_act", "grad_x_act_abs", *PATCH_METHODS, *ABLATION_METHODS, "seeking", "laten")
COLUMNS = ["method", "model", "layer", "score", "ci_low", "ci_high", "n", "rank", "p_top", "metric", "unit"]
ENGINES = ("fast", "transformer_lens")


# ---------------------------------------------------------------------------------------------- checks


def require_eval(model, what: str) -> None:
    """Refuse what is not a hooked model, and a model in training mode (dropout would make every score
    random): the first check of every ranker."""
    require_hooked(model)
    training = [name or "<root>" for name, m in model.named_modules() if m.training]
    if training:
        raise SemalignError(f"{what} needs the model in eval mode, but {model_name(model)} has {len(training)} "
                            f"module(s) in training mode (first: {training[0]}); call model.eval() first")


def _check_batch(model, batch: PairBatch, metric: str) -> None:
    if not isinstance(batch, PairBatch):
        raise SemalignError(f"expected a PairBatch (semalign_lens.data.tasks.tokenize_pairs), got {type(batch).__name__}")
    if len(batch) < 2:
        raise SemalignError(f"layer ranking needs at least 2 prompt pairs (bootstrap, resample ablation), got "
                            f"{len(batch)}; add pairs to the task")
    check_metric(metric, batch)
    vocab = model.cfg.d_vocab
    top = int(max(batch.clean.tokens.max(), batch.corrupted.tokens.max()))
    if top >= vocab:
        raise SemalignError(f"token id {top} is outside {model_name(model)}'s vocabulary of {vocab}; tokenise the "
                            "task with this model's tokenizer")


# ------------------------------------------------------------------------------------------ statistics


def summarise(method: str, model: str, values: np.ndarray, *, denom: np.ndarray | None = None,
              n_boot: int = 1000, seed: int = 0, metric: str = "logprob", unit: str = "") -> pd.DataFrame:
    """Rows (one per layer) from per-prompt scores `values` [n_prompts, n_layers].

    score = mean over prompts (or mean(values) / mean(denom) when `denom` is given); the bootstrap resamples
    prompts with one seeded generator, so every method sees the same resamples.
    """
    require_int("n_boot", n_boot)
    values = np.asarray(values, dtype=np.float64)
    n, n_layers = values.shape
    den = None if denom is None else np.asarray(denom, dtype=np.float64)
    score = values.mean(0) / (den.mean() if den is not None else 1.0)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = values[idx].mean(1)
    if den is not None:
        with np.errstate(invalid="ignore", divide="ignore"):  # a resample whose denominator is 0: NaN, left out
            boot = boot / den[idx].mean(1)[:, None]
    with np.errstate(invalid="ignore"):
        lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    p_top = np.bincount(np.nanargmax(np.where(np.isnan(boot), -np.inf, boot), axis=1), minlength=n_layers) / n_boot
    rank = np.empty(n_layers, dtype=int)
    rank[np.argsort(-score, kind="stable")] = np.arange(1, n_layers + 1)
    return pd.DataFrame({"method": method, "model": model, "layer": np.arange(n_layers), "score": score,
                         "ci_low": lo, "ci_high": hi, "n": n, "rank": rank, "p_top": p_top, "metric": metric,
                         "unit": unit})


def rank_agreement(df: pd.DataFrame, *, with_pvalues: bool = False) -> pd.DataFrame:
    """Kendall tau-b between the methods' layer scores: a square method × method table.

    With `with_pvalues`, a long table (method_a, method_b, tau, pvalue) instead. A method whose scores are
    all equal has no ranking, and its taus are NaN.
    """
    from scipy.stats import kendalltau

    wide = df.pivot_table(index="layer", columns="method", values="score", sort=False)
    methods = list(dict.fromkeys(df["method"]))
    rows = []
    for a in methods:
        for b in methods:
            x, y = wide[a].to_numpy(), wide[b].to_numpy()
            if np.ptp(x) == 0 or np.ptp(y) == 0:
                tau, p = np.nan, np.nan
            else:
                tau, p = kendalltau(x, y)
            rows.append({"method_a": a, "method_b": b, "tau": float(tau), "pvalue": float(p)})
    long = pd.DataFrame(rows)
    if with_pvalues:
        return long
    table = long.pivot(index="method_a", columns="method_b", values="tau").loc[methods, methods]
    table.index.name, table.columns.name = None, None
    return table


def top_layers(df: pd.DataFrame, method: str, k: int = 1) -> list[int]:
    """The `k` best layers by `method` (rank order)."""
    rows = df[df["method"] == method]
    if rows.empty:
        raise SemalignError(f"method {method!r} is not in the table; present: {sorted(df['method'].unique())}")
    return rows.sort_values("rank")["layer"].head(k).astype(int).tolist()


# ----------------------------------------------------------------------------------------- the stream


def _run(model, tokens: torch.Tensor, *, grad: bool = False) -> ResidualStates:
    """Every block's input and output and the logits of one forward (`models.residuals.residual_states`; its
    `stream()` is [resid_pre of block 0, resid_post of each block]), on the model's device. With `grad` the
    stream starts at a leaf (`leaf_embed`), so gradients reach every block output whether or not the weights
    require grad, and no weight gradients are needed."""
    return residual_states(model, tokens, range(model.cfg.n_layers), embed=True, logits=True, keep_graph=grad,
                           leaf_embed=grad)


def _subs(batch: PairBatch, batch_size: int) -> list[PairBatch]:
    if batch_size < 1:
        raise SemalignError(f"batch_size must be >= 1, got {batch_size}")
    return batch.split(max(batch_size, 2), min_size=2)


def _progress(items, desc: str, progress: bool, total: int | None = None):
    return tqdm(items, desc=desc, disable=not progress, leave=False, total=total)


# ------------------------------------------------------------------------------ gradient x activation


def grad_x_activation(model, batch: PairBatch, *, metric: str = "logprob", batch_size: int = 8,
                      n_boot: int = 1000, seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """`grad_x_act` (signed, the paper's) and `grad_x_act_abs` rows, on the clean run."""
    require_eval(model, "gradient x activation")
    _check_batch(model, batch, metric)
    fn = metric_fn(metric, vocab_rows(model))
    signed, absolute = [], []
    for sub in _progress(_subs(batch, batch_size), "grad x act", progress):
        run = _run(model, sub.clean.tokens, grad=True)
        logits, stream = run.logits, run.stream()
        grads = torch.autograd.grad(fn(logits, sub).sum(), stream[1:])
        mask = sub.clean.mask.to(logits.device)
        s_rows, a_rows = [], []
        for layer, g in enumerate(grads):
            per_token = ((stream[layer + 1] - stream[layer]).detach() * g).float().sum(-1) * mask  # [b, pos]
            s_rows.append(per_token.sum(-1))
            a_rows.append(per_token.abs().sum(-1))
        signed.append(torch.stack(s_rows, 1).cpu())
        absolute.append(torch.stack(a_rows, 1).cpu())
    name, unit = model_name(model), f"d{metric} (first order)"
    return pd.concat([
        summarise("grad_x_act", name, torch.cat(signed).numpy(), n_boot=n_boot, seed=seed, metric=metric, unit=unit),
        summarise("grad_x_act_abs", name, torch.cat(absolute).numpy(), n_boot=n_boot, seed=seed, metric=metric,
                  unit=unit),
    ], ignore_index=True)


# ------------------------------------------------------------------------------- patching and ablation


def _mean_writes(model, subs: list[PairBatch], width: int, progress: bool) -> Float[torch.Tensor, "layer pos d"]:
    """Per-position mean block write over the clean prompts (global mean where no prompt reaches), on the
    model's device."""
    total, count = None, torch.zeros(width, device=model_device(model))
    for sub in _progress(subs, "mean writes", progress):
        stream = _run(model, sub.clean.tokens).stream()
        writes = torch.stack([b - a for a, b in zip(stream[:-1], stream[1:], strict=True)]).float()
        mask = sub.clean.mask.to(count.device).float()
        if total is None:
            total = writes.new_zeros(writes.shape[0], width, writes.shape[-1])
        total[:, : mask.shape[1]] += (writes * mask[None, :, :, None]).sum(1)
        count[: mask.shape[1]] += mask.sum(0)
    mean = total / count.clamp(min=1)[None, :, None]
    overall = total.sum(1) / count.sum()
    mean[:, count == 0] = overall[:, None, :]
    return mean


def _derangement(n: int) -> torch.Tensor:
    return torch.roll(torch.arange(n), 1)


def _interventions(kinds, layer, clean, corrupt, mean, sub) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(kind, resid_pre of `layer` in the run being patched, its new resid_post) for each intervention.

    `clean`/`corrupt` are the unpatched streams; a patched run equals its unpatched run before block l.
    """
    pre_c, w_c = clean[layer], clean[layer + 1] - clean[layer]
    out = []
    for kind in kinds:
        if kind == "patch_denoise":
            out.append((kind, corrupt[layer], corrupt[layer] + w_c))
        elif kind == "patch_noise":
            out.append((kind, pre_c, pre_c + (corrupt[layer + 1] - corrupt[layer])))
        elif kind == "ablate_zero":
            out.append((kind, pre_c, pre_c))
        elif kind == "ablate_mean":
            out.append((kind, pre_c, pre_c + mean[layer, : pre_c.shape[1]].to(pre_c)))
        elif kind == "ablate_resample":
            perm = _derangement(pre_c.shape[0])
            missing = (~sub.clean.mask[perm]).to(pre_c.device)[..., None]
            out.append((kind, pre_c, pre_c + torch.where(missing, mean[layer, : pre_c.shape[1]].to(pre_c), w_c[perm])))
    return out


def _compact(batch: PairBatch) -> tuple[torch.Tensor, PairBatch]:
    """(positions [batch, k], batch re-indexed into them): the only positions a metric reads."""
    n_ans = batch.answer_pos.shape[1]
    positions = torch.cat([batch.answer_pos, batch.diverge_pos[:, None]], 1)
    index = torch.arange(n_ans).expand(len(batch), n_ans)
    return positions, dataclasses.replace(batch, answer_pos=index, diverge_pos=torch.full((len(batch),), n_ans))


def _stop(x, hook):
    from transformer_lens.model_bridge.exceptions import StopAtLayerException

    raise StopAtLayerException(x)  # the bridge returns x: the residual entering the final norm


def _head_at(model, head, final: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` only: the LM head is a quarter of SmolLM2's forward, and a metric reads 1-2 rows."""
    rows = torch.arange(final.shape[0], device=final.device)[:, None]
    return head(final[rows, positions.to(final.device)])


def _scan_fast(model, sub, kinds, mean, fn, progress) -> dict[str, torch.Tensor]:
    from ..models.readout import Readout

    n = model.cfg.n_layers
    positions, compact = _compact(sub)
    head = Readout.from_model(model)
    with torch.no_grad():
        clean_run, corrupt_run = _run(model, sub.clean.tokens), _run(model, sub.corrupted.tokens)
        clean, corrupt = clean_run.stream(), corrupt_run.stream()
        out = {"clean": fn(clean_run.logits, sub).cpu(), "corrupted": fn(corrupt_run.logits, sub).cpu()}
        # The logit-lens head reproduces the model's logits for standard heads; if this model's head does more
        # (e.g. soft-capping), read full logits instead.
        exact = "ln_final.hook_in" in model.hook_dict and torch.allclose(fn(_head_at(model, head, clean[-1], positions), compact).cpu(), out["clean"],
                               rtol=1e-4, atol=1e-4)
        per_kind = {k: torch.zeros(len(sub), n) for k in kinds}
        for layer in _progress(range(n), "patch/ablate layers", progress):
            todo = _interventions(kinds, layer, clean, corrupt, mean, sub)
            new_post = torch.cat([post for _, _, post in todo])
            # Restart at block l from the unpatched resid_pre and overwrite its output: block l is recomputed
            # for nothing, but the final block needs no special case (start_at_layer must be < n_layers).
            hooks = [(hook_name("resid_post", layer), lambda x, hook, new=new_post: new)]
            if exact:
                hooks.append(("ln_final.hook_in", _stop))
            result = model.run_with_hooks(torch.cat([pre for _, pre, _ in todo]), start_at_layer=layer,
                                          fwd_hooks=hooks)
            for (kind, _, _), chunk in zip(todo, result.split(len(sub)), strict=True):
                value = fn(_head_at(model, head, chunk, positions), compact) if exact else fn(chunk, sub)
                per_kind[kind][:, layer] = value.cpu()
    out.update(per_kind)
    return out


def restarts_at_layer(model) -> bool:
    """Whether the bridge runs from a block's input (`start_at_layer`, the fast engine's restart), probed on
    one 2-token forward: a family whose forward needs the token ids beyond the embedding (Gemma-4's per-layer
    inputs) raises there, whatever the error."""
    weight = next(model.parameters())
    x = torch.randn(1, 2, model.cfg.d_model, generator=torch.Generator().manual_seed(0))  # no token's embedding
    x = x.to(weight.device, weight.dtype)
    try:
        with torch.no_grad():
            model.run_with_hooks(x, start_at_layer=0, fwd_hooks=[])
    except Exception:  # noqa: BLE001 - any failure of the restart means: use full forwards
        return False
    return True


def _scan_transformer_lens(model, sub, kinds, mean, fn, progress) -> dict[str, torch.Tensor]:
    from transformer_lens.patching import generic_activation_patch

    n = model.cfg.n_layers
    with torch.no_grad():
        clean_run, corrupt_run = _run(model, sub.clean.tokens), _run(model, sub.corrupted.tokens)
        clean, corrupt = clean_run.stream(), corrupt_run.stream()
        out = {"clean": fn(clean_run.logits, sub).cpu(), "corrupted": fn(corrupt_run.logits, sub).cpu()}
        for kind in kinds:
            deltas = {}
            for layer in range(n):
                (_, _, new), = _interventions([kind], layer, clean, corrupt, mean, sub)
                old = (corrupt if kind == "patch_denoise" else clean)[layer + 1]
                deltas[f"blocks.{layer}.hook_resid_post"] = new - old
            tokens = sub.corrupted.tokens if kind == "patch_denoise" else sub.clean.tokens
            result = generic_activation_patch(model, tokens.to(model_device(model)), deltas,
                                              lambda logits: fn(logits, sub),
                                              lambda act, index, delta: act + delta, "resid_post",
                                              index_axis_names=["layer"], reduce="none")
            out[kind] = result.values.T.cpu()  # [layer, batch] -> [batch, layer]
    return out


def intervention_scan(model, batch: PairBatch, *, methods: Sequence[str] = PATCH_METHODS + ABLATION_METHODS,
                      metric: str = "logprob", batch_size: int = 8, engine: str = "fast", n_boot: int = 1000,
                      seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Activation patching (denoise/noise) and block-write ablation (zero/mean/resample), per layer."""
    methods = list(methods)
    bad = [m for m in methods if m not in PATCH_METHODS + ABLATION_METHODS]
    if bad or not methods:
        raise SemalignError(f"unknown patching/ablation method(s) {bad}; valid: {PATCH_METHODS + ABLATION_METHODS}")
    if engine not in ENGINES:
        raise SemalignError(f"engine must be one of {ENGINES}, got {engine!r}")
    require_eval(model, "activation patching and ablation")
    _check_batch(model, batch, metric)
    fn = metric_fn(metric, vocab_rows(model))
    subs = _subs(batch, batch_size)
    mean = None
    if {"ablate_mean", "ablate_resample"} & set(methods):
        mean = _mean_writes(model, subs, batch.clean.tokens.shape[1], progress)
    scan = _scan_fast if engine == "fast" and restarts_at_layer(model) else _scan_transformer_lens
    parts = [scan(model, sub, methods, mean, fn, progress) for sub in _progress(subs, "patch/ablate", progress)]
    got = {k: torch.cat([p[k] for p in parts]).double().numpy() for k in parts[0]}
    clean, corrupted = got["clean"], got["corrupted"]
    gap = clean - corrupted
    name, frames = model_name(model), []
    for method in methods:
        if method in PATCH_METHODS:
            if abs(gap.mean()) < 1e-6:
                raise SemalignError(f"the corruption does not change the metric on {model_name(model)} (mean "
                                    f"clean - corrupted {metric} = {gap.mean():.2e}), so patching effects are "
                                    "undefined; use a task whose corruption changes the answer")
            values = got[method] - corrupted[:, None] if method == "patch_denoise" else clean[:, None] - got[method]
            frame = summarise(method, name, values, denom=gap, n_boot=n_boot, seed=seed, metric=metric,
                              unit="fraction of clean-corrupted gap")
        else:
            frame = summarise(method, name, clean[:, None] - got[method], n_boot=n_boot, seed=seed, metric=metric,
                              unit=f"{metric} drop")
        frame["gap"] = gap.mean()
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def activation_patching(model, batch: PairBatch, *, directions: Sequence[str] = ("denoise", "noise"),
                        **kwargs) -> pd.DataFrame:
    """Block-write activation patching per layer; directions 'denoise' (clean→corrupted) and/or 'noise'."""
    bad = [d for d in directions if d not in ("denoise", "noise")]
    if bad or not directions:
        raise SemalignError(f"directions must be a non-empty subset of ('denoise', 'noise'), got {list(directions)}")
    return intervention_scan(model, batch, methods=[f"patch_{d}" for d in directions], **kwargs)


def ablation(model, batch: PairBatch, *, kinds: Sequence[str] = ("zero", "mean", "resample"),
             **kwargs) -> pd.DataFrame:
    """Block-write ablation per layer on the clean run; kinds 'zero', 'mean', 'resample'."""
    bad = [k for k in kinds if k not in ("zero", "mean", "resample")]
    if bad or not kinds:
        raise SemalignError(f"kinds must be a non-empty subset of ('zero', 'mean', 'resample'), got {list(kinds)}")
    return intervention_scan(model, batch, methods=[f"ablate_{k}" for k in kinds], **kwargs)


# ------------------------------------------------------------------------------ parameter sensitivity


@contextlib.contextmanager
def _weights_require_grad(params: list[torch.nn.Parameter]):
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)


def parameter_sensitivity(model, batch: PairBatch, *, metric: str = "logprob", n_boot: int = 1000, seed: int = 0,
                          progress: bool = True) -> pd.DataFrame:
    """`seeking` rows: Σ_{θ in block l} |θ · ∂L/∂θ| per prompt, L = −metric (Seeking's layer sensitivity).

    The same formula as `baselines.seeking.sensitivity`, at another granularity: here per prompt and task
    metric on the bridge, to rank layers; there per weight and LM loss on an HF copy, to initialise LoRA.
    """
    require_eval(model, "parameter sensitivity")
    _check_batch(model, batch, metric)
    fn = metric_fn(metric, vocab_rows(model))
    blocks = [list(block.parameters()) for block in model.blocks]
    if any(not p for p in blocks):
        raise SemalignError(f"{model_name(model)} exposes no parameters under model.blocks[l]; parameter "
                            "sensitivity needs per-block weights")
    flat = [p for ps in blocks for p in ps]
    rows = []
    with _weights_require_grad(flat):
        for i in _progress(range(len(batch)), "seeking (per prompt)", progress):
            one = batch.select([i])
            loss = -fn(model(one.clean.tokens.to(model_device(model))), one).sum()
            # allow_unused: a bridge over fused weights (GPT-2's c_attn, NeoX and Phi-3's qkv) lists both the fused
            # parameter and its split q/k/v aliases, and the forward uses only one of the two; the unused one has
            # no gradient and adds nothing, so each weight is counted once
            grads = torch.autograd.grad(loss, flat, allow_unused=True)
            it = iter(grads)
            rows.append([sum(float((p.detach() * g).abs().sum()) for p in ps if (g := next(it)) is not None)
                         for ps in blocks])
    return summarise("seeking", model_name(model), np.array(rows), n_boot=n_boot, seed=seed, metric=metric,
                     unit="sum |theta x grad|")


# ------------------------------------------------------------------------------- LaTen log-prob increase


def logprob_increase(model, batch: PairBatch, *, batch_size: int = 8, n_boot: int = 1000, seed: int = 0,
                     progress: bool = True) -> pd.DataFrame:
    """`laten` rows: Σ over answer tokens of log p(y | resid_post_l) − log p(y | resid_pre_l), read by the
    "frozen" logit lens (`models.readout.logit_lens` with the final residual's norm scale, TransformerLens's
    `apply_ln_to_stack`): affine in the state, so a block's increase is not distorted by its own norm."""
    from ..models.readout import Readout

    require_eval(model, "log-prob increase")
    _check_batch(model, batch, "logprob")
    head = Readout.from_model(model)
    rows = []
    for sub in _progress(_subs(batch, batch_size), "laten", progress):
        stream = _run(model, sub.clean.tokens).stream()
        pos = sub.answer_pos.to(stream[0].device)
        b_idx = torch.arange(len(sub), device=pos.device)[:, None]
        at = torch.stack([s[b_idx, pos] for s in stream])  # [layer+1, batch, ans, d]
        with torch.no_grad():
            tok = sub.answer_tokens.to(pos.device)[None, ..., None].expand(at.shape[0], -1, -1, 1)
            logp = head(at, final=at[-1]).log_softmax(-1).gather(-1, tok)[..., 0]  # [layer+1, batch, ans]
        inc = (logp[1:] - logp[:-1]) * sub.answer_mask.to(logp.device)
        rows.append(inc.sum(-1).T.cpu())
    return summarise("laten", model_name(model), torch.cat(rows).double().numpy(), n_boot=n_boot, seed=seed,
                     metric="logprob", unit="log-prob increase (cached logit lens)")


# ------------------------------------------------------------------------------------------- all of them


def rank_layers(model, batch: PairBatch, *, methods: Sequence[str] = METHODS, metric: str = "logprob",
                batch_size: int = 8, engine: str = "fast", n_boot: int = 1000, seed: int = 0,
                progress: bool = True) -> pd.DataFrame:
    """Every requested ranker on one model and task, as one long-form DataFrame (see module docstring)."""
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SemalignError(f"unknown method(s) {bad}; valid methods: {METHODS}" if bad else
                            f"no methods given; choose at least one of {METHODS}")
    require_eval(model, "layer ranking")
    _check_batch(model, batch, metric)
    require_int("n_boot", n_boot)
    common = dict(n_boot=n_boot, seed=seed, progress=progress)
    frames = []
    if {"grad_x_act", "grad_x_act_abs"} & set(methods):
        frames.append(grad_x_activation(model, batch, metric=metric, batch_size=batch_size, **common))
    scan = [m for m in methods if m in PATCH_METHODS + ABLATION_METHODS]
    if scan:
        frames.append(intervention_scan(model, batch, methods=scan, metric=metric, batch_size=batch_size,
                                        engine=engine, **common))
    if "seeking" in methods:
        frames.append(parameter_sensitivity(model, batch, metric=metric, **common))
    if "laten" in methods:
        frames.append(logprob_increase(model, batch, batch_size=batch_size, **common))
    out = pd.concat(frames, ignore_index=True)
    out = out[out["method"].isin(methods)]
    order = {m: i for i, m in enumerate(methods)}
    return out.sort_values(["method", "layer"], key=lambda s: s.map(order) if s.name == "method" else s,
                           kind="stable").reset_index(drop=True)
