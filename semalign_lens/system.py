"""`semalign info --system`: the facts about this machine that decide speed and reproducibility.

A bug report or a timing means little without them: the CPU and whether it computes bf16 natively (which
`precision = "auto"` follows), torch's thread count, the library versions, where derived files are cached,
and whether the one-time teacher conversion has already run.
"""

from __future__ import annotations

import os
from typing import Any

from .core.errors import SemalignError


def teacher_status() -> str:
    """Whether the zoo teacher's GGUF is installed and already converted (without converting it)."""
    from .models.zoo import SMOLLM2_INSTALL, smollm2_gguf
    from .models.zoo.gguf import converted_path

    try:
        gguf = smollm2_gguf()
    except SemalignError:
        return f"not installed ({SMOLLM2_INSTALL})"
    path, done = converted_path(gguf, "smollm2-135m")
    return f"converted ({path})" if done else "installed, not converted yet (the first use converts it once, ~20 s)"


def system_info() -> dict[str, Any]:
    """One key/value record: CPU, ISA, native bf16, threads, versions, cache directory, teacher status."""
    import torch

    from .core.paths import cache_dir
    from .core.precision import cpu_summary, resolve_precision
    from .models.load import package_versions

    cpu = cpu_summary()
    cuda = (f"{torch.cuda.get_device_name(0)} (native bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"
            if torch.cuda.is_available() else "none")
    return {"CPU": cpu["cpu"], "cores": os.cpu_count(), "ISA level (torch kernels)": cpu["cpu_isa"],
            "bf16 ISA flags": cpu["bf16_flags"], "bf16 matmul vs fp32 (probe)": f"{cpu['bf16_slowdown']:.2f}x time",
            "native bf16": "yes" if cpu["native_bf16"] else "no",
            "precision 'auto' resolves to": resolve_precision("auto"),
            "GPU": cuda, "torch threads": cpu["torch_threads"],
            **{f"{k} version": v for k, v in package_versions().items()},
            "cache directory": str(cache_dir()), "teacher smollm2-135m": teacher_status()}
