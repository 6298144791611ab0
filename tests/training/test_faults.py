"""Nothing lost under faults: real `semalign align` processes on the tiny pair (a checkpoint every step),
against one uninterrupted reference run.

A second process on a run directory is refused in one line naming the holder; a lock left by a killed run is
taken over; Ctrl-C is one line and exit code 130, and the same command resumes to the reference's losses; a
checkpoint the file system refuses (a file-size limit: EFBIG, as a full disk gives ENOSPC) is one line and
exit code 2, the previous checkpoint intact; a damaged cache shard is named and the cache built again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainer_helpers import _cli_config, _train_losses

OVER = ["schedule.stage_steps=20", "checkpoint_every=1", "figures=false"]  # 60 steps, a checkpoint each
# one thread everywhere: every process sums in the same order, so a resumed run equals the reference bit for bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _align(config: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "semalign_lens", "align", "--config", str(config),
            *(f"--set={kv}" for kv in [*OVER, f"run_dir={run_dir}", *extra])]


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


def _wait_for_step(proc: subprocess.Popen, run_dir: Path, step: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        latest = run_dir / "latest.json"
        if latest.exists() and json.loads(latest.read_text())["step"] >= step:
            return
        time.sleep(0.01)
    raise AssertionError(f"the run ended (or stalled) before checkpoint {step}; make it longer")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny pair's config and one uninterrupted run of it."""
    root = tmp_path_factory.mktemp("faults")
    config = _cli_config(root)
    proc = _run(_align(config, root / "reference"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return config, root / "reference"


def test_second_run_is_refused_and_ctrl_c_stops_one_line_then_resumes_exactly(tmp_path, reference):
    config, ref = reference
    run_dir = tmp_path / "run"
    first = _start(_align(config, run_dir), tmp_path / "first.err")
    try:
        _wait_for_step(first, run_dir, 3)
        first.send_signal(signal.SIGSTOP)  # frozen while it holds the lock: the second starts meanwhile
        before = _snapshot(run_dir)
        second = _run(_align(config, run_dir))
        assert second.returncode == 2, second.stderr[-3000:]
        line = _one_line(second.stderr)
        assert line.startswith(f"semalign: error: run_dir {run_dir} is in use by process {first.pid} on "), line
        assert _snapshot(run_dir) == before, "the refused run wrote into the run directory"
        first.send_signal(signal.SIGINT)
    except BaseException:
        first.kill()
        raise
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=60) == 130
    line = _one_line((tmp_path / "first.err").read_text())
    match = re.fullmatch(r"semalign: interrupted at step (\d+); the same command resumes from step (\d+)", line)
    assert match, line
    resume = json.loads((run_dir / "latest.json").read_text())["step"]
    assert int(match[2]) == resume and 3 <= resume <= int(match[1]) < 60, line
    assert not list((run_dir / "checkpoints").glob(".tmp-*")), "a half-written checkpoint stayed behind"
    _resume_equals_reference(config, run_dir, ref)


def _resume_equals_reference(config, run_dir, ref):
    """The same command again finishes the run, and its losses are the uninterrupted reference's."""
    again = _run(_align(config, run_dir))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _train_losses(run_dir) == _train_losses(ref)


def test_lock_left_by_a_killed_run_is_taken_over(tmp_path, reference):
    config, ref = reference
    run_dir = tmp_path / "run"
    first = _start(_align(config, run_dir), tmp_path / "first.err")
    _wait_for_step(first, run_dir, 2)
    first.kill()
    assert first.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((run_dir / ".semalign.lock.json").read_text())["pid"] == first.pid  # the dead holder's note
    _resume_equals_reference(config, run_dir, ref)
    assert not (run_dir / ".semalign.lock.json").exists()  # released when the run ended


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_refused_checkpoint_write_is_one_line_keeps_the_last_checkpoint_and_resumes(tmp_path, reference):
    config, ref = reference
    run_dir = tmp_path / "run"
    assert _run([*_align(config, run_dir), "--stop-after-steps", "2"]).returncode == 0
    kept = _snapshot(run_dir / "checkpoints" / "step-0000002")
    # 100 KB: the run's JSON files and metrics fit, the student's 210 KB weights do not
    limited = _run(_align(config, run_dir), preexec_fn=_file_size_limit(100_000))
    assert limited.returncode == 2, limited.stderr[-3000:]
    line = _one_line(limited.stderr)
    assert line == (f"semalign: error: cannot write {run_dir}/checkpoints/step-0000003: {os.strerror(27)}; raise "
                    "the file-size limit (ulimit -f) or write to a file system that allows larger files, then rerun "
                    "the same command: it resumes from the last complete checkpoint"), line
    assert json.loads((run_dir / "latest.json").read_text())["step"] == 2
    assert _snapshot(run_dir / "checkpoints" / "step-0000002") == kept
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-0000001", "step-0000002"]
    _resume_equals_reference(config, run_dir, ref)


def test_truncated_cache_shard_is_named_and_the_cache_rebuilt(tmp_path, reference):
    config, _ = reference
    cache = tmp_path / "cache"
    cached = ["targets.mode=cached", f"targets.cache_dir={cache}", "targets.cache_logits=topk", "targets.top_k=8",
              "targets.shard_sequences=4", "schedule.stage_steps=1"]
    first = _run([*_align(config, tmp_path / "a", *cached), "--stop-after-steps", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    shard = cache / "shard-00001.safetensors"
    intact = shard.read_bytes()
    shard.write_bytes(intact[: len(intact) // 2])
    again = _run(_align(config, tmp_path / "a", *cached))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert f"target cache {cache}: shard shard-00001.safetensors is damaged ({len(intact) // 2} bytes, " \
           f"{len(intact)} when written); building it again" in again.stderr.splitlines(), again.stderr[-3000:]
    assert shard.read_bytes() == intact  # the same teacher states again


def test_full_disk_during_a_checkpoint_keeps_the_previous_one_pointed_to(tmp_path, monkeypatch):
    """In-process ENOSPC (as safetensors reports it) and an interrupt, each in the middle of a checkpoint."""
    import torch
    from safetensors import SafetensorError

    from semalign_lens.core.errors import SemalignError
    from semalign_lens.training import checkpoint

    model = torch.nn.Linear(4, 4)
    checkpoint.save_checkpoint(tmp_path, 1, model, None, {})
    kept = _snapshot(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(SemalignError, match=re.escape(f"cannot write {tmp_path}/checkpoints/step-0000002: No space "
                                                      "left on device; free disk space there")):
        checkpoint.save_checkpoint(tmp_path, 2, model, None, {})
    assert _snapshot(tmp_path) == kept and checkpoint.latest_step(tmp_path) == 1
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000001"]  # no .tmp-step-2

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 2, model, None, {})
    assert _snapshot(tmp_path) == kept


def test_run_lock_names_its_holder_and_guards_pretraining(tmp_path):
    from semalign_lens.core.errors import SemalignError
    from semalign_lens.core.runlock import refuse_if_locked, run_lock
    from semalign_lens.training.pretrain import PretrainConfig, pretrain

    held = tmp_path / "run"
    with run_lock(held, "run_dir"):
        holder = json.loads((held / ".semalign.lock.json").read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(SemalignError, match=rf"^run_dir {held} is in use by process {os.getpid()} on "
                                                rf"{re.escape(holder['host'])} \(since "):
            refuse_if_locked(held, "run_dir")
        with pytest.raises(SemalignError, match=rf"^--run-dir {held} is in use by process {os.getpid()}"):
            pretrain(PretrainConfig(teacher=str(tmp_path / "no-teacher")), held)  # unlocked: another error at once
        assert sorted(p.name for p in held.iterdir()) == [".semalign.lock", ".semalign.lock.json"]  # nothing written
    assert not (held / ".semalign.lock.json").exists()
    refuse_if_locked(held, "run_dir")  # free again
    with run_lock(held):  # and taken again
        pass
