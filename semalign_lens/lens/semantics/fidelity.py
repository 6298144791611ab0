"""Logit-lens readout and fidelity diagnostics (long-form DataFrames) for bases and transfer maps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...core.errors import SemalignError
from ...models.readout import Readout
from .basis import (
    KINDS,
    SemanticBasis,
    _check_kind,
    _row_chunks,
    _states,
)
from .maps import TransferMap, decompose, roundtrip

# ------------------------------------------------------------------------------------------ fidelity
FIDELITY_METRICS: tuple[str, ...] = ("cosine", "cosine_min", "top1", "top10", "kl")
OPTIONAL_METRICS: tuple[str, ...] = ("coef_top1",)


def _layers(states) -> dict[Any, Tensor]:
    if isinstance(states, Tensor):
        return {-1: states}
    if isinstance(states, Mapping):
        return dict(states)
    raise SemalignError("states must be a [n_tokens, d] tensor or a dict layer -> [n_tokens, d] tensor")


def _bases(bases) -> dict[str, SemanticBasis]:
    if isinstance(bases, SemanticBasis):
        return {bases.source: bases}
    if isinstance(bases, Mapping):
        return dict(bases)
    out = {}
    for b in bases:
        out[b.source if b.source not in out else f"{b.source}{len(out)}"] = b
    return out


class _ReadoutStats:
    """Top-1 / top-k agreement and KL(p_ref ‖ p_other) of readouts, accumulated over chunks.

    KL = Σ p_ref log p_ref − Σ p_ref log p_other, float32 (resolution ~1e-5 nats; enough to tell 0 from
    the paper kind's several nats, and 3x cheaper than float64 on 2 cores).
    """

    def __init__(self, top_k: int):
        self.k, self.n, self.top1, self.topk, self.kl = top_k, 0, 0.0, 0.0, 0.0
        self.coef_n, self.coef_top1 = 0, 0.0

    def add(self, ref: dict[str, Tensor], logits: Tensor) -> None:
        top = logits.topk(self.k, dim=-1).indices
        self.n += logits.shape[0]
        self.top1 += float((top[:, 0] == ref["top"][:, 0]).sum())
        self.topk += float((ref["top"][:, :, None] == top[:, None, :]).any(-1).sum()) / self.k
        logp = torch.log_softmax(logits.float(), -1)  # fp32 even for a half-precision Readout built by hand
        self.kl += float((ref["neg_entropy"] - torch.linalg.vecdot(ref["p"], logp)).sum())

    def add_coefficients(self, ref: dict[str, Tensor], coefficients: Tensor) -> None:
        self.coef_n += coefficients.shape[0]
        self.coef_top1 += float((coefficients.argmax(-1) == ref["top"][:, 0]).sum())

    def values(self) -> dict[str, float]:
        out = {"coef_top1": self.coef_top1 / self.coef_n} if self.coef_n else {}
        if self.n:
            out.update({"top1": self.top1 / self.n, f"top{self.k}": self.topk / self.n, "kl": self.kl / self.n})
        return out


def _reference(logits: Tensor, top_k: int) -> dict[str, Tensor]:
    logp = torch.log_softmax(logits.float(), -1)
    p = logp.exp()
    return {"p": p, "neg_entropy": torch.linalg.vecdot(p, logp), "top": logits.topk(top_k, dim=-1).indices}


COLUMNS = ["model", "layer", "basis", "kind", "metric", "value", "n", "readout"]


def _rows(out: list, common: dict, values: dict[str, float], metrics: Iterable[str], n: int) -> None:
    for metric, value in values.items():
        if metric in metrics:  # every readout here is "recompute": states of any layer, read as the final one
            readout = None if metric.startswith("cosine") else "recompute"
            out.append({**common, "metric": metric, "value": value, "n": n, "readout": readout})


def fidelity(states, bases, readout=None, kinds: Sequence[str] = KINDS, *,
             metrics: Sequence[str] = FIDELITY_METRICS, model: str | None = None, chunk_size: int = 128,
             top_k: int = 10, progress: bool = True):
    """How much of each state survives decompose -> recompose, per layer, as a long-form DataFrame.

    `states`: [n_tokens, d] or {layer: [n_tokens, d]} (padding removed; any capture code). `bases`: one
    `SemanticBasis`, a list, or {label: basis}. `readout`: a model or `Readout`, needed for the readout
    metrics. Metrics (r = recompose(decompose(h)), computed as `roundtrip`):
    cosine / cosine_min — mean / min of cos(h, r); top1 — the logit-lens readouts of h and r have the same
    argmax; top{k} — mean overlap of their top-k sets, / k; kl — mean KL(readout(h) ‖ readout(r)) in nats;
    coef_top1 (optional) — the argmax of the coefficients themselves is the readout's argmax.
    Columns: model, layer, basis, kind, metric, value, n, readout — the logit lens of the row's metric
    ("recompute", `READOUTS`: a state has no final residual of its own; None for the cosines, which read none).
    """
    import pandas as pd

    layers, bases = _layers(states), _bases(bases)
    kinds = [_check_kind(k) for k in kinds]
    metrics = [m.replace("top10", f"top{top_k}") for m in metrics]
    unknown = set(metrics) - set(FIDELITY_METRICS) - set(OPTIONAL_METRICS) - {f"top{top_k}"}
    if unknown:
        raise SemalignError(f"unknown fidelity metric(s) {sorted(unknown)}; choose from "
                            f"{FIDELITY_METRICS + OPTIONAL_METRICS}")
    readout_metrics = {"top1", f"top{top_k}", "kl"} & set(metrics)
    if (readout_metrics or "coef_top1" in metrics) and readout is None:
        raise SemalignError("top1/top-k/kl/coef_top1 metrics need the model's readout: pass readout=model (or a "
                            "Readout), or metrics=('cosine', 'cosine_min')")
    if readout is not None and not isinstance(readout, Readout):
        readout = Readout.from_model(readout)
    name = model or (readout.name if readout is not None else "") or next(iter(bases.values())).model
    out: list[dict] = []
    for layer, H in tqdm(layers.items(), desc="fidelity", disable=not progress or len(layers) < 2, leave=False):
        H = _states(H, next(iter(bases.values())).d_model).float()
        common = {"model": name, "layer": layer}
        if {"cosine", "cosine_min"} & set(metrics):
            # cos(T h, h) is scale-invariant and T linear, so every kind can run on unit states: one d x d
            # product per (basis, kind), float32 (error ~1e-7 on the cosine)
            unit = H / torch.linalg.vector_norm(H, dim=-1, keepdim=True)
            for label, basis in bases.items():
                for kind in kinds:
                    r = unit @ basis.roundtrip_operator(kind).float().T
                    cos = (r * unit).sum(-1) / torch.linalg.vector_norm(r, dim=-1).clamp_min(1e-30)
                    _rows(out, {**common, "basis": label, "kind": kind},
                          {"cosine": float(cos.mean()), "cosine_min": float(cos.min())}, metrics, H.shape[0])
        if readout is None or not (readout_metrics or "coef_top1" in metrics):
            continue
        stats = {(label, kind): _ReadoutStats(top_k) for label in bases for kind in kinds}
        for rows in _row_chunks(H.shape[0], chunk_size):
            ref = _reference(readout(H[rows]), top_k)
            for (label, kind), st in stats.items():
                if readout_metrics:
                    st.add(ref, readout(roundtrip(H[rows], bases[label], kind)))
                if "coef_top1" in metrics:
                    st.add_coefficients(ref, decompose(H[rows], bases[label], kind))
        for (label, kind), st in stats.items():
            _rows(out, {**common, "basis": label, "kind": kind}, st.values(), metrics, H.shape[0])
    return pd.DataFrame(out, columns=COLUMNS)


def transfer_fidelity(teacher_states, maps, teacher_readout, student_readout, *, student_states=None,
                      model: str | None = None, chunk_size: int = 256, top_k: int = 10, progress: bool = True):
    """How well the student's readout of mapped teacher states agrees with the teacher's own readout.

    For each layer and map: top1 / top{k} agreement and KL(teacher readout(h_T) ‖ student readout(M h_T)).
    With `student_states` ({layer: [n, d_S]}, the paired student layer on the same tokens) two baselines are
    added: kind "student" (the student's own readout against the teacher's) and metric `cosine_to_student`
    (cos between the mapped target and the actual student state). Same long-form columns as `fidelity`
    (readout "recompute").
    """
    import pandas as pd

    layers = _layers(teacher_states)
    maps = [maps] if isinstance(maps, TransferMap) else list(maps.values() if isinstance(maps, Mapping) else maps)
    t_read = teacher_readout if isinstance(teacher_readout, Readout) else Readout.from_model(teacher_readout)
    s_read = student_readout if isinstance(student_readout, Readout) else Readout.from_model(student_readout)
    name = model or f"{t_read.name}->{s_read.name}"
    student_states = _layers(student_states) if student_states is not None else {}
    bad = [m for m in maps if tuple(m.matrix.shape) != (s_read.d_model, t_read.d_model)]
    if bad:
        raise SemalignError(f"a transfer map has shape {tuple(bad[0].matrix.shape)}, but the readouts need "
                            f"({s_read.d_model}, {t_read.d_model}) (student d, teacher d); build it from these "
                            "models' bases")
    labels = [m.kind for m in maps]  # norm options do not change readouts (the final norm rescales anyway)
    labels = [lab if labels.count(lab) == 1 else f"{lab}#{i}" for i, lab in enumerate(labels)]
    out: list[dict] = []
    for layer, H in tqdm(layers.items(), desc="transfer fidelity", disable=not progress or len(layers) < 2,
                         leave=False):
        H = _states(H, t_read.d_model, "teacher states").float()
        HS = student_states.get(layer)
        if HS is not None:
            HS = _states(HS, s_read.d_model, "student states").float()
            if HS.shape[0] != H.shape[0]:
                raise SemalignError(f"layer {layer}: {H.shape[0]} teacher states but {HS.shape[0]} student states; "
                                    "pass both models' states on the same tokens")
        stats = [_ReadoutStats(top_k) for _ in maps]
        own = _ReadoutStats(top_k)
        cos: list[list[Tensor]] = [[] for _ in maps]
        for rows in _row_chunks(H.shape[0], chunk_size):
            ref = _reference(t_read(H[rows]), top_k)
            for m, st, c in zip(maps, stats, cos, strict=True):
                target = m(H[rows])
                st.add(ref, s_read(target))
                if HS is not None:
                    c.append(torch.nn.functional.cosine_similarity(target, HS[rows], dim=-1))
            if HS is not None:
                own.add(ref, s_read(HS[rows]))
        common = {"model": name, "layer": layer, "basis": "output"}
        wanted = ["top1", f"top{top_k}", "kl", "cosine_to_student"]
        for label, st, c in zip(labels, stats, cos, strict=True):
            values = st.values()
            if HS is not None:
                values["cosine_to_student"] = float(torch.cat(c).mean())
            _rows(out, {**common, "kind": label}, values, wanted, H.shape[0])
        if HS is not None:
            _rows(out, {**common, "kind": "student"}, own.values(), wanted, H.shape[0])
    return pd.DataFrame(out, columns=COLUMNS)


