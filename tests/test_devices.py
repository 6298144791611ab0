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

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

aten = torch.ops.aten
META = torch.device("meta")
# indexing takes CPU indices into a GPU tensor (they are moved): only these arguments must be on one device
INDEXED = {aten.index.Tensor: (0,), aten.index_put_.default: (0, 2), aten.index_put.default: (0, 2),
           aten._index_put_impl_.default: (0, 2), aten._unsafe_index_put.default: (0, 2)}


class VirtualGPU(TorchDispatchMode):
    """`meta` as a GPU with CUDA's cross-device rules; each meta storage has a CPU twin holding its values."""

    twins: dict[int, tuple[torch.UntypedStorage, int]] = {}  # meta storage -> (CPU storage, byte shift), shared:
    # a model moved to the virtual GPU under one mode runs under the next

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

    def on_meta(self, cpu: torch.Tensor, meta: torch.Tensor | None = None, inputs: frozenset = frozenset()
                ) -> torch.Tensor:
        """A meta tensor whose twin is `cpu`. `meta`: the meta op's own output, kept for its view relations (a
        view of an input's storage, in `inputs`, already has its twin: the same view of the input's twin)."""
        if meta is None:
            meta = torch.empty_strided(cpu.shape, cpu.stride(), dtype=cpu.dtype, device=META)
        key = meta.untyped_storage()._cdata
        if key not in inputs:  # a new storage (its address may be a freed one's: the entry is replaced)
            shift = (cpu.storage_offset() - meta.storage_offset()) * cpu.element_size()
            self.twins[key] = (cpu.untyped_storage(), shift)
        return meta

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
        metas = [x for x in flat if isinstance(x, torch.Tensor) and x.is_meta]
        passed = {id(t): x for t, x in zip(twins, flat, strict=True) if isinstance(x, torch.Tensor) and x.is_meta}
        inputs = frozenset(x.untyped_storage()._cdata for x in metas)
        try:
            meta_out = func(*args, **kwargs)  # the meta op itself: the outputs' shapes and view relations
        except (NotImplementedError, RuntimeError):  # data-dependent shapes (nonzero, masked_select): the twin's
            meta_out = tree_map(lambda _: None, out)
        return tree_map_pairs(lambda c, m: passed[id(c)] if id(c) in passed else self.on_meta(c, m, inputs),
                              out, meta_out)

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
