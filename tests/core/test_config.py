"""Typed configs: wrong types, syntax errors and bad files are one-line errors naming the key or the line;
`semalign align --help` lists every key."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from semalign_lens.cli import main
from semalign_lens.core.config import from_dict, load_config, read_config_file
from semalign_lens.core.errors import SemalignError
from semalign_lens.training import AlignConfig, load_align_config
from semalign_lens.training.pretrain import PretrainConfig

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_JSON = REPO / "semalign_lens" / "models" / "zoo" / "configs" / "stdlib_student.json"


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def semalign(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semalign_lens", *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith("semalign: error: ") and message in proc.stderr, proc.stderr


# ----------------------------------------------------------------------------------------------- wrong types

@pytest.mark.parametrize("toml,message", [
    ('seed = "zero"', "seed must be int, got 'zero'"),
    ("[data]\nseq_len = true", "data.seq_len must be int, got True"),
    ("[data]\nbatch_size = 4.5", "data.batch_size must be int, got 4.5"),
    ('[schedule]\nlora_targets = "v_proj"', "schedule.lora_targets must be list of str or None, got 'v_proj'"),
    ("[pairing]\nstudent_layers = 1", "pairing.student_layers must be list of int or str or None, got 1"),
    ("[schedule]\nstage_steps = [10, 2.5]", "schedule.stage_steps must be int or list of int, got [10, 2.5]"),
    ("[schedule]\nlr = true", "schedule.lr must be float or list of float, got True"),
    ('[objective.terms]\nkl = "1"', "objective.terms must be table of float, got {'kl': '1'}"),
    ("data = 5", "data must be a table of keys (a [data] section), got 5"),
])
def test_wrong_type_in_a_file_names_the_file_key_type_and_value(tmp_path, toml, message):
    path = write(tmp_path, "run.toml", toml)
    with pytest.raises(SemalignError) as err:
        load_align_config(path)
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("overrides,message", [
    (["seed=abc"], "config: seed must be int, got 'abc'"),
    ({"data.batch_size": 4.5}, "config: data.batch_size must be int, got 4.5"),
    ({"pairing.student_layers": 1}, "config: pairing.student_layers must be list of int or str or None, got 1"),
])
def test_wrong_type_in_overrides(overrides, message):
    with pytest.raises(SemalignError, match=f"^{re.escape(message)}$"):
        load_align_config(None, overrides)


def test_wrong_type_in_pretrain_config():
    with pytest.raises(SemalignError, match=r"^config: seed must be int, got 'abc'$"):
        from_dict(PretrainConfig, {"seed": "abc"})
    with pytest.raises(SemalignError, match=r"^config: arch.n_heads must be int, got 2.5$"):
        from_dict(PretrainConfig, {"arch": {"n_heads": 2.5}})


def test_an_int_is_a_float_and_unknown_keys_are_still_named():
    cfg = load_align_config(None, {"schedule.lr": 1, "schedule.lora_alpha": 8, "objective.terms": {"kl": 2}})
    assert cfg.schedule.lr == 1.0 and isinstance(cfg.schedule.lr, float)
    assert isinstance(cfg.schedule.lora_alpha, float) and cfg.objective.terms == {"kl": 2.0}
    assert load_align_config(None, ["schedule.lr=[1, 2e-4]"]).schedule.lr == [1.0, 2e-4]
    with pytest.raises(SemalignError, match=r"unknown key\(s\) \['lrr'\] in config.schedule; valid keys"):
        load_align_config(None, {"schedule.lrr": 1})


# ----------------------------------------------------------------------------------------------- bad files

@pytest.mark.parametrize("name,content,message", [
    ("bad.toml", 'seed = 0\n[data]\nsource = code-transfer\n',
     "is not valid TOML: Invalid value (at line 3, column 10)"),
    ("bad.json", '{"seed": 0,\n "data": {"seq_len": 4,}}', "is not valid JSON: Expecting property name enclosed in "
                                                          "double quotes at line 2, column 24"),
    ("latin1.toml", b'seed = 0\nrun_dir = "caf\xe9"\n', "is not UTF-8 text (byte 0xe9 at offset 23, line 2); save it as UTF-8"),
    ("list.json", "[1, 2]", "holds a JSON list at the top level; a config is an object of keys"),
])
def test_unreadable_config_file_is_one_line_naming_file_and_place(tmp_path, name, content, message):
    path = write(tmp_path, name, content)
    with pytest.raises(SemalignError) as err:
        read_config_file(path)
    text = str(err.value)
    assert text.startswith(f"config file {path} ") and message in text and "\n" not in text


def test_valid_configs_load(tmp_path):
    files = sorted((REPO / "configs").glob("*.toml"))
    assert files
    for path in files:
        assert isinstance(load_align_config(path), AlignConfig)
    assert load_config(PretrainConfig, PRETRAIN_JSON).arch.rope_theta == 100000.0
    bom = write(tmp_path, "bom.json", b'\xef\xbb\xbf{"seed": 3, "data": {"seq_len": 64}}')
    assert load_align_config(bom).data.seq_len == 64


# ----------------------------------------------------------------------------------------------- command line

def test_align_set_with_wrong_type_is_one_line_exit_2(tmp_path):
    assert_one_line_error(semalign(tmp_path, "align", "--set", "seed=abc"), "config: seed must be int, got 'abc'")


def test_align_set_with_a_bad_hook_name_is_one_line_exit_2(tmp_path):
    proc = semalign(tmp_path, "align", "--set", 'pairing.pairs=[["blocks.1.hook_attn_out", 3]]')
    assert_one_line_error(proc, "pairing layer 'blocks.1.hook_attn_out' is neither a block index nor a residual "
                                "hook name; use b, blocks.b.hook_resid_post")


def test_pretrain_set_with_wrong_type_is_one_line_exit_2(tmp_path):
    proc = semalign(tmp_path, "zoo", "pretrain-student", "--set", "seed=abc", "--run-dir", str(tmp_path / "run"))
    assert_one_line_error(proc, f"{PRETRAIN_JSON}: seed must be int, got 'abc'")
    assert not (tmp_path / "run").exists()


def test_align_config_with_syntax_error_is_one_line_exit_2(tmp_path):
    write(tmp_path, "run.toml", "[data]\nbatch_size = 4.5\nseq_len = \n")
    assert_one_line_error(semalign(tmp_path, "align", "--config", "run.toml"),
                          "config file run.toml is not valid TOML: Invalid value (at line 3, column 11)")


def _keys(cls: type, section: str = "") -> list[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{section}{f.name}"
        out += _keys(hints[f.name], f"{key}.") if dataclasses.is_dataclass(hints[f.name]) else [(key, f)]
    return out


def test_align_help_lists_every_key_with_type_default_and_doc(capsys):
    with pytest.raises(SystemExit) as done:
        main(["align", "--help"])
    assert done.value.code == 0
    help_text = capsys.readouterr().out
    keys = _keys(AlignConfig)
    assert len(keys) > 40
    for key, f in keys:
        assert f"\n  {key} (" in help_text, key
        if "doc" in f.metadata:
            assert f"): {f.metadata['doc']}\n" in help_text, key
    assert "\n  data.seq_len (int, default 256): tokens per training block\n" in help_text
    assert "\n[schedule] " in help_text and "schedule.stage_steps (int or list of int, default 50)" in help_text
