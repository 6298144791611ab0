"""`precision = "auto"` follows the hardware: bf16 only where it is native, one warning where it is emulated."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import warnings

import pytest
import torch

from semalign_lens.core import precision as P
from semalign_lens.core.errors import SemalignError


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given bf16 ISA flags and probe ratio (bf16 time / fp32 time)."""
    monkeypatch.delenv(P.PRECISION_ENV, raising=False)

    def make(flags, slowdown):
        monkeypatch.setattr(P, "bf16_flags", lambda: flags)
        monkeypatch.setattr(P, "bf16_slowdown", lambda: slowdown)
        P._warn_emulated.cache_clear()
    yield make
    P._warn_emulated.cache_clear()


@pytest.mark.parametrize("flags,slowdown,native", [
    (["amx_bf16"], 0.5, True),        # Xeon with AMX: flags and probe agree
    (["avx512_bf16"], 0.45, True),    # EPYC Zen 4
    ([], 0.4, False),                 # no flag: never native, whatever the probe
    (["avx512_bf16"], 30.0, False),   # flag listed but kernels capped (ONEDNN_MAX_CPU_ISA=AVX2): the probe decides
    (None, 0.5, True),                # flags unreadable (not Linux): the probe alone
    (None, 67.0, False),              # AVX2-only CPU: bf16 67x slower
])
def test_auto_is_bf16_only_where_native(cpu, flags, slowdown, native):
    cpu(flags, slowdown)
    assert P.native_bf16() is native
    assert P.resolve_precision("auto") == ("bf16" if native else "fp32")
    assert P.resolve_precision("fp32") == "fp32"


def test_explicit_bf16_on_emulated_cpu_runs_with_one_warning_naming_the_slowdown(cpu):
    cpu([], 67.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert P.resolve_precision("bf16") == "bf16"
        assert P.resolve_precision("bf16") == "bf16"
    assert len(caught) == 1 and "67x slower than fp32" in str(caught[0].message)


def test_native_bf16_gives_no_warning(cpu):
    cpu(["amx_bf16"], 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert P.resolve_precision("bf16") == "bf16"


def test_autocast_follows_the_resolved_precision(cpu):
    x = torch.randn(4, 4)
    cpu([], 67.0)
    with P.autocast("auto"):
        assert (x @ x).dtype == torch.float32
    cpu(["amx_bf16"], 0.5)
    with P.autocast("auto"):
        assert (x @ x).dtype == torch.bfloat16


def test_unknown_precision_is_refused(monkeypatch):
    with pytest.raises(SemalignError, match="precision must be one of"):
        P.resolve_precision("fp16")
    monkeypatch.setenv(P.PRECISION_ENV, "fp16")
    with pytest.raises(SemalignError, match="SEMALIGN_PRECISION='fp16' is not a precision"):
        P.resolve_precision("auto")


def test_environment_sets_what_auto_means(cpu, monkeypatch):
    cpu(["amx_bf16"], 0.5)
    monkeypatch.setenv(P.PRECISION_ENV, "fp32")
    assert P.resolve_precision("auto") == "fp32" and P.resolve_precision("bf16") == "bf16"


def test_records_name_the_cpu_and_the_resolution(cpu):
    cpu([], 67.0)
    record = P.precision_record("auto")
    assert record["precision"] == "auto" and record["resolved_precision"] == "fp32"
    assert record["native_bf16"] is False and record["cpu"] and record["cpu_isa"]
    assert "native bf16 no" in P.machine_line() and "precision auto → fp32" in P.machine_line()


def test_config_defaults_are_auto():
    from semalign_lens.demo import PROFILES
    from semalign_lens.evaluation.protocol import RunProfile
    from semalign_lens.training import AlignConfig
    from semalign_lens.training.pretrain import PretrainConfig

    assert AlignConfig().precision == PretrainConfig().precision == RunProfile().precision == "auto"
    assert all(p.precision == "auto" for p in PROFILES.values())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the kernel caps are x86 ISA names")
def test_kernels_capped_at_avx2_resolve_to_fp32():
    """A real probe, not a mock: with torch's and oneDNN's kernels capped at AVX2 bf16 is emulated on any x86
    CPU, and `info --system` must say so."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "HF_HUB_OFFLINE": "1"}
    env.pop(P.PRECISION_ENV, None)
    out = subprocess.run([sys.executable, "-m", "semalign_lens", "info", "--system"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.stdout.splitlines())
    assert lines["native bf16"] == "no" and lines["precision 'auto' resolves to"] == "fp32"
    assert lines["ISA level (torch kernels)"] == "AVX2"
