"""Numeric precision chosen by the hardware: `precision = "auto"` means bf16 only where it is native.

Why: bf16 autocast is about 2x faster than fp32 on CPUs with AMX-BF16 or AVX512-BF16 and on CUDA devices
with bf16 support, but on a CPU without native bf16 (e.g. AVX2 only) oneDNN emulates it and a bf16 matmul
was measured 67x *slower* than fp32 (AMD EPYC, AVX2). So nothing may assume bf16:

- `auto` resolves to `bf16` only when the device computes it natively, else `fp32`;
- explicit `bf16` on a device without native support still runs, with one warning that names the slowdown
  measured on this machine;
- `fp32` is fp32 everywhere;
- the environment variable `SEMALIGN_PRECISION` (fp32 | bf16), when set, is what `auto` means: the test
  suite sets fp32, so that its tolerances, tuned for fp32, hold on every CPU.

Native on a CPU = the ISA flags list `amx_bf16` or `avx512_bf16` (Linux `/proc/cpuinfo`; elsewhere unknown)
**and** a one-off probe (a 256 x 256 matmul in both dtypes on one thread, CPU time, cached per process) finds bf16 no slower than
fp32. The probe is what catches capped kernels (`ATEN_CPU_CAPABILITY=avx2`, `ONEDNN_MAX_CPU_ISA=AVX2`) and
CPUs whose flags cannot be read. `cpu_summary()` is what every run's provenance and benchmark table records.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import SemalignError

PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "SEMALIGN_PRECISION"  # what "auto" means when set (fp32 | bf16): e.g. fp32 for bit-stable tests
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(CPU model name, ISA flags) from /proc/cpuinfo; ("", {}) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", ""), frozenset(fields.get("flags", "").split())


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def cpu_isa() -> str:
    """The kernel level torch dispatches to on this CPU (e.g. AVX2, AVX512; honours ATEN_CPU_CAPABILITY)."""
    return torch.backends.cpu.get_cpu_capability()


def bf16_flags() -> list[str] | None:
    """The native-bf16 ISA flags this CPU lists, or None where the flags cannot be read."""
    flags = _cpuinfo()[1]
    return [f for f in NATIVE_BF16_FLAGS if f in flags] if flags else None


@functools.cache
def bf16_slowdown(size: int = 256, reps: int = 5) -> float:
    """CPU time of a bf16 matmul over the fp32 one, best of `reps` after a warm-up; cached per process.

    Measured on one thread in thread CPU time, so that other work sharing the machine does not move it.
    """
    a = torch.randn(size, size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = {}
        for dtype in (torch.float32, torch.bfloat16):
            x = a.to(dtype)
            x @ x  # warm-up: oneDNN compiles its kernel on first use
            times = []
            for _ in range(reps):
                t0 = time.thread_time()
                x @ x
                times.append(time.thread_time() - t0)
            best[dtype] = min(times)
    finally:
        torch.set_num_threads(threads)
    return best[torch.bfloat16] / max(best[torch.float32], 1e-9)


def _device_type(device: Any) -> str:
    return torch.device(device).type if device is not None else "cpu"


def native_bf16(device: Any = None) -> bool:
    """Whether `device` (default: the CPU) computes bf16 natively (see the module docstring)."""
    kind = _device_type(device)
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    flags = bf16_flags()
    return flags != [] and bf16_slowdown() <= 1.0


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise SemalignError(f"precision must be one of {PRECISIONS}, got {precision!r}; 'auto' uses bf16 only "
                            "where the hardware computes it natively")
    return precision


def resolve_precision(precision: str = "auto", device: Any = None) -> str:
    """"fp32" or "bf16" for `precision` on `device`; warns once when bf16 is asked for where it is emulated."""
    check_precision(precision)
    if precision == "auto":
        precision = os.environ.get(PRECISION_ENV) or "auto"
        if precision not in PRECISIONS:
            raise SemalignError(f"{PRECISION_ENV}={precision!r} is not a precision; use fp32 or bf16, or unset it")
    if precision == "fp32":
        return "fp32"
    native = native_bf16(device)
    if precision == "auto":
        return "bf16" if native else "fp32"
    if not native:
        _warn_emulated(_device_type(device))
    return "bf16"


@functools.cache
def _warn_emulated(kind: str) -> None:
    where = f"this CPU ({cpu_model()}, {cpu_isa()})" if kind == "cpu" else f"this {kind} device"
    slow = f"; a bf16 matmul measured {bf16_slowdown():.0f}x slower than fp32 here" if kind == "cpu" else ""
    warnings.warn(f"precision 'bf16' on {where}, which has no native bf16{slow}. Use precision 'auto' or "
                  "'fp32' for speed.", stacklevel=3)


def autocast(precision: str, device: Any = None) -> contextlib.AbstractContextManager:
    """A bf16 autocast context when `precision` resolves to bf16 on `device`, else a no-op context."""
    kind = _device_type(device)
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_summary() -> dict[str, Any]:
    """The CPU facts every timing and run record names: model, ISA level, native bf16 and the probe."""
    return {"cpu": cpu_model(), "cpu_isa": cpu_isa(), "native_bf16": native_bf16("cpu"),
            "bf16_flags": ",".join(bf16_flags() or []) or ("none" if bf16_flags() == [] else "unknown"),
            "bf16_slowdown": round(bf16_slowdown(), 2), "torch_threads": torch.get_num_threads()}


def precision_record(precision: str, device: Any = None) -> dict[str, Any]:
    """Asked and resolved precision plus the CPU facts: what a run's provenance records."""
    return {"precision": precision, "resolved_precision": resolve_precision(precision, device),
            "device": str(torch.device(device)) if device is not None else "cpu", **cpu_summary()}


def machine_line(precision: str = "auto") -> str:
    """One line for the head of a timing table: CPU, ISA, native bf16, threads and the resolved precision."""
    cpu = cpu_summary()
    return (f"Machine: {cpu['cpu']} ({cpu['cpu_isa']} kernels, native bf16 {'yes' if cpu['native_bf16'] else 'no'}, "
            f"bf16 matmul {cpu['bf16_slowdown']:.2g}x the fp32 time), {cpu['torch_threads']} torch threads; "
            f"precision {precision} → {resolve_precision(precision)}")
