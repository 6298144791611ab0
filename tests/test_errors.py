"""User errors reach the command line as one line and exit code 2; bugs keep their traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from semalign_lens.errors import SemalignError, run_reporting_errors

ROOT = Path(__file__).resolve().parents[1]


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
