"""Devices follow the model: every stage runs where the model's weights are and creates its tensors there.

CUDA's device rules, checked on a CPU-only machine (`VirtualGPU`): the models are moved to the `meta` device,
which plays the GPU, while data is made on the CPU, which plays the host. The mode refuses every op that
mixes the two the way CUDA refuses it (a CPU tensor other than a 0-dim scalar meeting a meta one; a CPU
generator drawing meta numbers), and gives each meta tensor a CPU twin that holds its values, so a stage runs
to the end with real numbers and its results can be compared with the same stage on the CPU. Meta alone is
not enough: its kernels let a CPU matmul operand, a CPU embedding index or the CPU source of an in-place op
through, and hold no values to branch on. `host_copies` records the shape of every device -> host copy
(evaluation reduces on the device: no vocabulary-wide logits come back).
"""

from __future__ import annotations

import json
import math
import weakref

import pytest
import torch
from accelerate import Accelerator
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from semalign_lens import evaluation as ev
from semalign_lens.core.errors import SemalignError
from semalign_lens.data.tokens import tokenize
from semalign_lens.evaluation import code_transfer_batch
from semalign_lens.models.load import load_model, save_model
from semalign_lens.models.pair import ModelPair
from semalign_lens.models.plain import clean_copy, model_device
from semalign_lens.models.tiny import TinyArch, tiny_hf_pair, tiny_native_bridge
from semalign_lens.training import load_align_config
from semalign_lens.training.loop import Trainer
from semalign_lens.training.methods import fitnets, laten, seeking

aten = torch.ops.aten
META = torch.device("meta")
# indexing takes CPU indices into a GPU tensor (they are moved): only these arguments must be on one device
INDEXED = {aten.index.Tensor: (0,), aten.index_put_.default: (0, 2), aten.index_put.default: (0, 2),
           aten._index_put_impl_.default: (0, 2), aten._unsafe_index_put.default: (0, 2)}


class VirtualGPU(TorchDispatchMode):
    """`meta` as a GPU with CUDA's cross-device rules; each meta storage has a CPU twin holding its values."""

    # meta storage -> (CPU storage, byte shift), shared (a model moved to the virtual GPU under one mode runs
    # under the next); an entry goes with its meta storage
    twins: dict[int, tuple[torch.UntypedStorage, int]] = {}

    def __init__(self):
        super().__init__()
        self.host_copies: list[tuple[int, ...]] = []
        self.constructors = _Constructors()

    def __enter__(self):
        self.constructors.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.constructors.__exit__(*exc)

    def twin(self, t: torch.Tensor) -> torch.Tensor:
        """The CPU tensor holding the values of meta tensor `t` (a view of its twin storage: writes go through)."""
        try:
            storage, shift = self.twins[t.untyped_storage()._cdata]
        except KeyError:
            raise RuntimeError("a meta tensor made outside VirtualGPU has no values") from None
        offset = (t.storage_offset() * t.element_size() + shift) // t.element_size()
        return torch.empty(0, dtype=t.dtype).set_(storage, offset, t.shape, t.stride())

    def on_meta(self, cpu: torch.Tensor, meta: torch.Tensor | None = None) -> torch.Tensor:
        """A meta tensor whose twin is `cpu`. `meta`: the meta op's own output, kept for its view relations (a
        view of a storage that has a twin reads the same view of that twin)."""
        if meta is None:
            meta = torch.empty_strided(cpu.shape, cpu.stride(), dtype=cpu.dtype, device=META)
        storage = meta.untyped_storage()
        if storage._cdata not in self.twins:
            shift = (cpu.storage_offset() - meta.storage_offset()) * cpu.element_size()
            self.twins[storage._cdata] = (cpu.untyped_storage(), shift)
            weakref.finalize(storage, self.twins.pop, storage._cdata, None)  # a storage's Python object lives
        return meta  # as long as the storage (PyObject preservation), views and `.data` aliases included

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        device = kwargs.get("device")
        if not any(isinstance(x, torch.Tensor) and x.is_meta for x in flat) and \
                (device is None or torch.device(device) != META):
            return func(*args, **kwargs)  # the host's own work
        if func is aten._local_scalar_dense.default:  # .item(), bool(), int(): a device -> host sync
            return self.twin(args[0]).item()
        if func in (aten._to_copy.default, aten.copy_.default):
            return self._copy(func, args, kwargs)
        checked = [args[i] for i in INDEXED[func]] if func in INDEXED else flat
        devices = {x.device for x in tree_flatten(checked)[0] if isinstance(x, torch.Tensor)
                   and not (x.device.type == "cpu" and x.dim() == 0)}
        if len(devices) > 1:
            raise RuntimeError(f"device rule: {func} mixes tensors on {sorted(map(str, devices))}")
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type != "meta":
            raise RuntimeError(f"device rule: {func} draws device numbers from a {generator.device} generator")
        twins = [self.twin(x) if isinstance(x, torch.Tensor) and x.is_meta else x for x in flat]
        t_args, t_kwargs = tree_unflatten(twins, spec)
        if device is not None:
            t_kwargs["device"] = torch.device("cpu")
        out = func(*t_args, **t_kwargs)
        passed = {id(t): x for t, x in zip(twins, flat, strict=True) if isinstance(x, torch.Tensor) and x.is_meta}
        try:
            meta_out = func(*args, **kwargs)  # the meta op itself: the outputs' shapes and view relations
        except (NotImplementedError, RuntimeError):  # data-dependent shapes (nonzero, masked_select): the twin's
            meta_out = tree_map(lambda _: None, out)
        return tree_map_pairs(lambda c, m: passed[id(c)] if id(c) in passed else self.on_meta(c, m), out, meta_out)

    def _copy(self, func, args, kwargs):
        if func is aten._to_copy.default:
            src, dst = args[0], torch.device(kwargs.get("device") or args[0].device)
            value = (self.twin(src) if src.is_meta else src).to(dtype=kwargs.get("dtype") or src.dtype, copy=True)
            if dst == META:
                return self.on_meta(value)
            self.host_copies.append(tuple(src.shape))
            return value
        dst, src = args[0], args[1]
        value = self.twin(src) if src.is_meta else src
        if src.is_meta and not dst.is_meta:
            self.host_copies.append(tuple(src.shape))
        (self.twin(dst) if dst.is_meta else dst).copy_(value)
        return dst


class _Constructors(TorchFunctionMode):
    """`torch.tensor(data, device=meta)` fills its values below the dispatcher, where `VirtualGPU` cannot see
    them: build the tensor on the host and move it (what the call means)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor, torch.Tensor.new_tensor):
            device = kwargs.get("device", args[0].device if func is torch.Tensor.new_tensor else None)
            if device is not None and torch.device(device) == META:
                return func(*args, **{**kwargs, "device": "cpu"}).to(META)
        return func(*args, **kwargs)


def tree_map_pairs(fn, cpu, meta):
    """`fn(cpu_tensor, meta_tensor_or_None)` over two outputs of one op (a tensor, or tuples/lists of them)."""
    if isinstance(cpu, torch.Tensor):
        return fn(cpu, meta if isinstance(meta, torch.Tensor) else None)
    if isinstance(cpu, (tuple, list)):
        metas = meta if isinstance(meta, (tuple, list)) else [None] * len(cpu)
        return type(cpu)(tree_map_pairs(fn, c, m) for c, m in zip(cpu, metas, strict=True))
    return cpu


# ---------------------------------------------------------------------------------------------- the rules

def test_the_rules_refuse_what_cuda_refuses_and_keep_the_values():
    """The mixes CUDA refuses (the three the baselines made, among them) raise; what CUDA accepts runs, with the
    numbers a CPU run gives."""
    x, w = torch.randn(4, 3), torch.randn(3, 3)
    with VirtualGPU() as gpu:
        xd, wd = x.to(META), w.to(META)
        refused = {
            "scalar x host matrix (FitNets' ridge)": lambda: (wd.sum() * 1e-3) * torch.eye(3),
            "host source of an in-place op (Seeking's W -= BA)": lambda: wd.sub_(torch.ones(3, 3)),
            "host source of index_add (LaTen's delta)": lambda: wd.index_add(0, torch.tensor([0]).to(META),
                                                                            torch.ones(1, 3)),
            "host matmul operand": lambda: xd @ w,
            "host token ids into an embedding": lambda: torch.nn.functional.embedding(torch.tensor([1]), wd),
            "host generator drawing device numbers": lambda: torch.randn(3, generator=torch.Generator(),
                                                                         device=META),
        }
        for what, op in refused.items():
            with pytest.raises(RuntimeError, match="device rule"):
                op()
                pytest.fail(what)
        got = (xd @ wd * torch.tensor(2.0))[torch.tensor([0, 2])]  # a host 0-dim scalar, host indices: accepted
        assert torch.equal(got.cpu(), (x @ w * 2)[[0, 2]]) and got.device == META
        assert float(xd.sum()) == pytest.approx(float(x.sum()))
    assert gpu.host_copies == [(2, 3)]


# ---------------------------------------------------------------------------------------------- loading

VOCAB = 384
TEXTS = ["def add(a, b):\n    return a + b\n", "import os\nprint(os.sep)\n", "x = [i * i for i in range(9)]\n",
         "class A:\n    pass\n"]


def _placed(model) -> set:
    return {t.device for t in [*model.parameters(), *model.buffers()]} | {torch.device(model.cfg.device)}


@pytest.fixture(scope="module")
def hf_pair():
    return tiny_hf_pair(0)


def _sources(kind, hf_pair, tmp_path):
    """The source of each kind `load_model` reads, and the loading kwargs it needs."""
    t_hf, s_hf, tok = hf_pair
    if kind == "memory":
        return s_hf, {"tokenizer": tok}
    if kind == "bridge":
        return load_model(s_hf, tokenizer=tok, device="cpu"), {}
    if kind == "directory":
        return save_model(load_model(s_hf, tokenizer=tok, device="cpu"), tmp_path / "hf"), {}
    if kind == "native":
        return save_model(tiny_native_bridge("native", TinyArch(2, 32, 2, 1, 64), tok, 0), tmp_path / "native"), {}
    return "smollm2-135m", {}  # a zoo name: the converted GGUF


@pytest.mark.parametrize("kind", ["memory", "bridge", "directory", "native",
                                  pytest.param("gguf", marks=pytest.mark.slow)])
def test_load_model_puts_the_weights_where_cfg_device_says(kind, hf_pair, tmp_path):
    """Every source lands on the device and dtype asked (TransformerLens records `cfg.device` but leaves a model
    it is handed where it is), and a default load agrees with itself."""
    source, kwargs = _sources(kind, hf_pair, tmp_path)
    with VirtualGPU():
        model = load_model(source, device="meta", dtype=torch.bfloat16, **kwargs)
    assert _placed(model) == {META}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.provenance.dtype == "bfloat16"
    if kind != "bridge":
        default = load_model(source, **kwargs)
        assert _placed(default) == {model_device(default)} and next(default.parameters()).dtype == torch.float32


def test_a_device_this_torch_lacks_is_refused_in_one_line(hf_pair):
    _, s_hf, tok = hf_pair
    if torch.cuda.is_available():
        pytest.skip("this torch has CUDA")
    with pytest.raises(SemalignError, match=r"cannot load a model onto device 'cuda': Torch not compiled with CUDA"):
        load_model(s_hf, tokenizer=tok, device="cuda")


# ---------------------------------------------------------------------------------------------- analysis

@pytest.fixture(scope="module")
def gpu_pair(hf_pair):
    """The tiny pair on the virtual GPU (`tiny_pair`, the same weights, is the CPU run to compare with)."""
    t_hf, s_hf, tok = hf_pair
    with VirtualGPU():
        return ModelPair(load_model(t_hf, tokenizer=tok, name="tiny-teacher", device=META),
                         load_model(s_hf, tokenizer=tok, name="tiny-student", device=META))


def _capture(pair):
    from semalign_lens.lens.capture import capture

    c = capture(pair.teacher, tokenize(pair.tokenizer, TEXTS), [0, 2], points=("resid_post", "block_write"),
                progress=False)
    return [c.get(p, layer) for p in c.points for layer in c.layers]


def _cka(pair):
    from semalign_lens.lens.capture import accumulated_resid
    from semalign_lens.lens.similarity import cka_matrix

    batch = tokenize(pair.tokenizer, TEXTS)
    stacks = [accumulated_resid(m, batch, drop_first=True) for m in (pair.teacher, pair.student)]
    return [cka_matrix(*stacks), cka_matrix(*stacks, device=model_device(pair.teacher), debiased=True)]


def _prompts(pair):
    from semalign_lens.data.tasks import fact_task, tokenize_pairs

    return tokenize_pairs(pair.tokenizer, fact_task(tokenizer=pair.tokenizer, n=6, seed=0), align="left_pad")


def _rankers(pair):
    from semalign_lens.lens.attribution import METHODS, rank_layers

    return [rank_layers(pair.student, _prompts(pair), methods=METHODS, n_boot=10, progress=False)["score"],
            rank_layers(pair.student, _prompts(pair), methods=["patch_denoise"], engine="transformer_lens",
                        n_boot=10, progress=False)["score"]]


def _patching_maps(pair):
    from semalign_lens.lens.patching import patching_maps

    return list(patching_maps(pair.student, _prompts(pair), maps=["head"], max_pairs=2, progress=False).values())


def _fidelity(pair):
    from semalign_lens.lens.capture import accumulated_resid
    from semalign_lens.lens.semantics import SemanticBasis, TransferMap, fidelity, transfer_fidelity
    from semalign_lens.models.readout import Readout

    batch = tokenize(pair.tokenizer, TEXTS)
    t, s = (accumulated_resid(m, batch, drop_first=True) for m in (pair.teacher, pair.student))
    bases = [SemanticBasis.from_model(m, cache=False) for m in (pair.teacher, pair.student)]
    readouts = [Readout.from_model(m) for m in (pair.teacher, pair.student)]
    return [fidelity({3: t[4]}, bases[0], readouts[0], ["paper", "logits"], progress=False)["value"],
            transfer_fidelity({3: t[4]}, TransferMap(*bases, kind="logits"), *readouts, student_states={3: s[2]},
                              progress=False)["value"]]


def _evaluation(pair):
    from semalign_lens.data.tasks.facts import load_facts

    return [ev.cross_entropy(pair.student, TEXTS, precision="fp32"),
            ev.fact_scores(pair.student, load_facts().facts[:3], which="all", precision="fp32")["answer_logprob"]]


def _generation(pair):
    plain = clean_copy(pair.student, share_weights=True)
    return [ev.greedy_generate(pair.student, "def add(", 6),
            ev.greedy_generate(plain, "def add(", 6, tokenizer=pair.tokenizer)]


STAGES = {"capture": _capture, "cka": _cka, "rankers": _rankers, "patching_maps": _patching_maps,
          "fidelity": _fidelity, "evaluation": _evaluation, "generation": _generation}


@pytest.mark.parametrize("stage", list(STAGES))
def test_analysis_runs_where_the_model_is(stage, gpu_pair, tiny_pair):
    """Each stage on a pair on the (virtual) GPU fed host data: nothing mixes devices, the numbers are the CPU
    run's, and no vocabulary-wide tensor comes back to the host (CKA by design computes on the host, in float64
    sums, from states copied there; `device=` moves it)."""
    with VirtualGPU() as gpu:
        got = STAGES[stage](gpu_pair)
    want = STAGES[stage](tiny_pair)
    for a, b in zip(want, got, strict=True):
        if isinstance(a, str):
            assert a == b
        else:
            a, b = (torch.as_tensor(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=torch.float64)
                    for v in (a, b))
            assert b.device.type == "cpu" and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True), stage
    assert not [shape for shape in gpu.host_copies if len(shape) > 1 and shape[-1] >= VOCAB]


# ---------------------------------------------------------------------------------------------- training

class MetaAccelerator(Accelerator):
    """Accelerate with the virtual GPU as its device."""

    @property
    def device(self) -> torch.device:
        return META


RUNS = {  # every objective, both target modes, every plugin (4 seed sequences: fewer passes), both vocabularies
    "online-all-terms": (None, {"objective.terms": {"relation": 1.0, "cosine": 1.0, "fisher": 1.0, "kl": 1.0,
                                                    "cosine_onehot": 1.0, "ce": 1.0, "gram": 1.0}}),
    "cached-topk": (None, {"targets.mode": "cached", "targets.cache_logits": "topk", "targets.top_k": 16}),
    "cross-vocab": (None, {"vocab": "intersection", "objective.terms": {"relation": 1.0, "shared_kl": 1.0,
                                                                         "uld": 1.0}}),
    "fitnets": (lambda: fitnets.FitNetsPlugin(init_sequences=4), {"objective.terms": {"fitnets": 1.0, "kl": 1.0}}),
    "seeking": (lambda: seeking.SeekingPlugin(seed_sequences=4), {"objective.terms": {"ce": 1.0}}),
    "laten": (lambda: laten.LaTenPlugin(seed_sequences=4), {"objective.terms": {"ce": 1.0, "laten_l2": 1000.0}}),
}
# the plugins find the teacher where the caller loaded it: on the device (a GPU user's default) or on the host
# (`semalign align` reads sources into host memory, and the trainer's copies move)
CASES = [(run, "on-device") for run in RUNS] + [(run, "on-host") for run in ("seeking", "laten")]


@pytest.fixture(scope="module")
def gpu_cross_pair():
    from semalign_lens.models.tiny import tiny_cross_pair

    cpu = tiny_cross_pair(0)
    with VirtualGPU():
        return ModelPair(*(load_model(m, device=META) for m in (cpu.teacher, cpu.student)), vocab="intersection")


@pytest.mark.parametrize("run,models", CASES, ids=[f"{run}-{models}" for run, models in CASES])
def test_training_runs_where_the_trainer_is(run, models, gpu_pair, gpu_cross_pair, tiny_pair, tmp_path):
    """A short LoRA run (2 stages x 2 steps) on the trainer's device, with every objective, both target modes
    and each baseline's plugin: nothing mixes devices, the losses are finite, no logits come back to the host."""
    plugin, overrides = RUNS[run]
    pair = gpu_cross_pair if run == "cross-vocab" else gpu_pair if models == "on-device" else tiny_pair
    cfg = load_align_config(None, {
        "run_dir": str(tmp_path / "run"), "progress": False, "report": False, "figures": False,
        "data.batch_size": 4, "data.diag_sequences": 4, "schedule.stage_steps": 2, "schedule.lr": 1e-3,
        "schedule.adapter": "lora", "schedule.lora_rank": 4, "pairing.student_layers": [0, 2],
        "targets.cache_dir": str(tmp_path / "cache"), **overrides})
    with VirtualGPU() as gpu:
        trainer = Trainer(cfg, pair,
                          data=code_transfer_batch(pair.student.tokenizer, 12, 24),
                          accelerator=MetaAccelerator(cpu=True), plugins=[plugin()] if plugin else [])
        assert model_device(trainer.student) == META
        result = trainer.run()
    assert result.finished
    losses = [json.loads(line)["loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert not [shape for shape in gpu.host_copies if len(shape) > 1 and shape[-1] >= VOCAB]
