"""User errors reach the command line as one line and exit code 2; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semalign_lens.core.errors import SemalignError, run_reporting_errors

ROOT = Path(__file__).resolve().parents[2]


def test_semalign_error_is_one_line_and_exit_code_2(capsys):
    def fail(name):
        raise SemalignError(f"unknown thing {name!r}; valid: a, b")

    assert run_reporting_errors(fail, "x", prog="tool") == 2
    assert capsys.readouterr().err == "tool: error: unknown thing 'x'; valid: a, b\n"
    assert run_reporting_errors(lambda: 3) == 3 and run_reporting_errors(lambda: None) == 0


def test_other_exceptions_are_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        run_reporting_errors(lambda: 1 / 0)


@pytest.mark.parametrize("command,message", [
    ([sys.executable, "-m", "semalign_lens", "info", "no-such-model"],
     "semalign: error: 'no-such-model' is neither a zoo name"),
    ([sys.executable, str(ROOT / "analysis" / "transfer_table.py"), "--methods", "nope", "--out", "{tmp}",
      "--summary", ""], "transfer_table.py: error: unknown method 'nope'; valid methods: sft,"),
])
def test_commands_print_user_errors_without_traceback(tmp_path, command, message):
    command = [c.replace("{tmp}", str(tmp_path)) for c in command]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_refused_writes_are_one_line_naming_the_file_and_other_os_errors_keep_their_traceback(tmp_path, capsys):
    import errno

    from safetensors import SafetensorError

    from semalign_lens.core.errors import writing

    def full_disk():  # what the OS says when a write fails mid-file: no file name
        with writing(tmp_path / "out.bin"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert run_reporting_errors(full_disk) == 2
    assert capsys.readouterr().err == (f"semalign: error: cannot write {tmp_path / 'out.bin'}: No space left on "
                                       "device; free disk space there (or write elsewhere), then rerun the same "
                                       "command\n")

    def safetensors_quota():  # safetensors carries the OS error in its text only
        with writing(tmp_path / "w.safetensors", "then rerun it"):
            raise SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")

    assert run_reporting_errors(safetensors_quota) == 2
    assert capsys.readouterr().err.startswith(f"semalign: error: cannot write {tmp_path / 'w.safetensors'}: Disk "
                                              "quota exceeded; free space within your disk quota")

    def read_only_unwrapped():  # no `writing` at the site: the command still names the file from the error
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/report.html")

    assert run_reporting_errors(read_only_unwrapped) == 2
    assert capsys.readouterr().err.startswith("semalign: error: cannot write /mnt/ro/report.html: Read-only file "
                                              "system; the file system is read-only")
    with pytest.raises(FileNotFoundError):  # a missing file is not a refused write: a bug keeps its traceback
        run_reporting_errors(lambda: open(tmp_path / "nope"))


def test_interrupts_are_one_line_with_exit_code_128_plus_the_signal(capsys):
    import signal
    import time

    from semalign_lens.core.errors import Interrupted

    def ctrl_c():
        raise KeyboardInterrupt

    assert run_reporting_errors(ctrl_c) == 130
    assert capsys.readouterr().err == "semalign: interrupted; rerun the same command to run it again\n"
    assert run_reporting_errors(ctrl_c, prog="t.py", interrupted="interrupted; rerun with --resume") == 130
    assert capsys.readouterr().err == "t.py: interrupted; rerun with --resume\n"

    def trained():
        raise Interrupted.at_step(7, 5, KeyboardInterrupt())

    assert run_reporting_errors(trained) == 130
    assert capsys.readouterr().err == "semalign: interrupted at step 7; the same command resumes from step 5\n"

    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this

    before = signal.getsignal(signal.SIGTERM)
    assert run_reporting_errors(terminated) == 143
    assert capsys.readouterr().err == "semalign: interrupted; rerun the same command to run it again\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone again
