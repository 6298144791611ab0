"""The GPU check (analysis/gpu_check.py, scripts/gpu_check.sh, scripts/gpu_wheels.sh) kept from rotting on a CPU.

A GPU runs it rarely, so what can be checked here is: the comparison against hand arithmetic, the result pages
from two fabricated legs, the argument errors, the wheel script's refusals, and (slow) one whole leg on a tiny
teacher, so that a renamed API fails here rather than on a lent GPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gc():
    """analysis/gpu_check.py as a module (it is a script, outside the package)."""
    spec = importlib.util.spec_from_file_location("analysis_gpu_check", ROOT / "analysis" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_each_rule_against_hand_arithmetic(gc):
    check = gc.check
    assert check("info.teacher.layers", 6, 6)["ok"] and not check("info.teacher.layers", 6, 5)["ok"]
    assert not check("info.stage.capture", "yes", "no: reason")["ok"]
    # cka: |0.504 - 0.5| = 0.004 <= 0.005; |0.506 - 0.5| = 0.006 > 0.005
    assert check("cka.t0.s0", 0.5, 0.504)["ok"] and not check("cka.t0.s0", 0.5, 0.506)["ok"]
    # states' rms: 1 % of the reference
    assert check("capture.teacher.rms.L0", 10.0, 10.09)["ok"] and not check("capture.teacher.rms.L0", 10.0, 10.11)["ok"]
    # a first training step: bound 0.02 + 0.01 * 10 = 0.12
    row = check("align.kd-cached.step1.loss", 10.0, 10.11)
    assert row["ok"] and row["bound"] == pytest.approx(0.12) and row["diff"] == pytest.approx(0.11)
    assert not check("align.kd-cached.step1.loss", 10.0, 10.13)["ok"]
    # later steps: 0.03 + 0.03 * 2 = 0.09
    assert check("align.kd-cached.last.loss", 2.0, 2.08)["ok"] and not check("align.kd-cached.last.loss", 2.0, 2.1)["ok"]
    # held-out CE, the teacher's and a trained student's: 0.05 nats
    assert check("eval.teacher", 3.0, 3.04)["ok"] and not check("eval.teacher", 3.0, 3.06)["ok"]
    assert check("eval.trained.kd-cached", 3.0, 2.96)["ok"] and not check("eval.trained.kd-cached", 3.0, 2.94)["ok"]
    # an error measure only the device side has: the value itself against the limit
    assert check("capture.teacher.relerr.L0", None, 0.01)["ok"]
    assert not check("capture.teacher.relerr.L0", None, 0.06)["ok"]
    assert not check("capture.teacher.relerr.L0", None, None)["ok"]
    # a report row never fails; a number one leg lacks does
    assert check("generate.teacher", "def f", "def g")["ok"] and check("pairing.pairs", "s0<-t1/1", "s0<-t2/2")["ok"]
    assert not check("cka.t0.s0", 0.5, None)["ok"]
    with pytest.raises(KeyError, match="no tolerance"):
        gc.tolerance("unheard.of")


def test_attribution_widens_by_the_reference_interval(gc):
    """Bound = 0.05 + the reference's interval half-width for the same method and layer (attribution_ci.)."""
    ref = {"pairing.attribution.grad_x_act.L0": 0.5, "pairing.attribution_ci.grad_x_act.L0": 0.2}
    rows = {r["key"]: r for r in gc.compare(ref, {**ref, "pairing.attribution.grad_x_act.L0": 0.7})}
    assert rows["pairing.attribution.grad_x_act.L0"]["bound"] == pytest.approx(0.25)
    assert rows["pairing.attribution.grad_x_act.L0"]["ok"]
    narrow = {**ref, "pairing.attribution_ci.grad_x_act.L0": 0.1}
    rows = {r["key"]: r for r in gc.compare(narrow, {**narrow, "pairing.attribution.grad_x_act.L0": 0.7})}
    assert not rows["pairing.attribution.grad_x_act.L0"]["ok"]


def test_fidelity_kl_has_its_own_rule(gc):
    """KL rows are relative (0.01 + 2 %), the other fidelity rows (fractions, cosines) absolute (0.03)."""
    assert gc.tolerance("pairing.fidelity.teacher->student.dual.L0.kl") == gc.Tolerance("close", 0.01, 0.02)
    assert gc.tolerance("pairing.fidelity.teacher->student.dual.L0.top1") == gc.Tolerance("close", 0.03)


def test_state_errors_against_float64(gc):
    ref = {"teacher": torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))}
    dev = {"teacher": ref["teacher"].clone()}
    dev["teacher"][1] += 0.1
    errors = gc.state_errors(ref, dev)
    r1 = ref["teacher"][1].double()
    assert errors["capture.teacher.relerr.L0"] == 0.0
    assert errors["capture.teacher.relerr.L1"] == pytest.approx(float((0.1 * torch.ones_like(r1)).norm() / r1.norm()),
                                                                rel=1e-5)


def _fake_leg(work: Path, name: str, numbers: dict, states: dict) -> None:
    leg = {"leg": name, "device": "cpu", "dtype": "float32", "precision": "fp32", "size": "smoke",
           "device_name": "AMD EPYC", "system": {"torch version": torch.__version__}, "timings": {"load": 1.0},
           "total_s": 1.0, "peak_device_memory_gib": None, "placement": {"teacher": "cpu float32"}, "numbers": numbers}
    (work / f"leg-{name}.json").write_text(json.dumps(leg))
    torch.save(states, work / f"states-{name}.pt")


def test_compare_writes_the_pages_and_fails_on_one_bad_number(gc, tmp_path):
    states = {"teacher": torch.ones(2, 3, 4)}
    _fake_leg(tmp_path, "reference", {"cka.t0.s0": 0.5, "eval.teacher": 3.0}, states)
    _fake_leg(tmp_path, "device", {"cka.t0.s0": 0.503, "eval.teacher": 3.0}, {"teacher": states["teacher"] * 1.01})
    out = tmp_path / "out"
    assert gc.main(["compare", "--work", str(tmp_path), "--out", str(out)]) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["passed"] and result["n_checks"] == 6  # cka, eval, two relerr rows (0.01 each), two placements
    assert "# GPU check: passed" in (out / "gpu_check.md").read_text()
    _fake_leg(tmp_path, "device", {"cka.t0.s0": 0.51, "eval.teacher": 3.0}, states)
    assert gc.main(["compare", "--work", str(tmp_path), "--out", str(out)]) == 1
    page = (out / "gpu_check.md").read_text()
    assert "# GPU check: FAILED" in page and "- `cka.t0.s0`: reference 0.5, device 0.51" in page
    # a device leg whose models stayed in float32 fails, whatever its numbers
    leg = json.loads((tmp_path / "leg-device.json").read_text())
    leg["dtype"], leg["numbers"]["cka.t0.s0"] = "bfloat16", 0.5
    (tmp_path / "leg-device.json").write_text(json.dumps(leg))
    assert gc.main(["compare", "--work", str(tmp_path), "--out", str(out)]) == 1
    assert "- `placement.device.teacher`: reference cpu bfloat16, device cpu float32" in (out / "gpu_check.md").read_text()


@pytest.mark.parametrize("argv", [["run", "--device", "tpu"], ["run", "--size", "huge"],
                                  ["leg", "device", "--device", "cpu", "--size", "smoke", "--work", "w"]])
def test_bad_arguments_exit_2(gc, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        gc.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_wheel_script_refuses_in_one_line(tmp_path):
    script = ROOT / "scripts" / "gpu_wheels.sh"
    done = subprocess.run(["bash", str(script), "install", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"gpu_wheels: no {tmp_path}/wheelhouse.tar.xz; make it where PyPI answers with: "
                                   "bash scripts/gpu_wheels.sh download")
    done = subprocess.run(["bash", str(script), "upload"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("usage: bash scripts/gpu_wheels.sh download")


@pytest.mark.slow
def test_one_leg_on_a_tiny_teacher_has_a_rule_for_every_number(gc, tmp_path):
    """Every stage of a leg runs (fp32, CPU, smoke size) on a tiny Llama teacher, every number it writes has a
    tolerance, and a leg compared with itself passes."""
    from semalign_lens.models.tiny import TinyArch, write_convention_pair

    # as wide as the check's student (d 128, d_mlp 384): Seeking cuts student-shaped blocks out of the teacher
    teacher, _ = write_convention_pair(tmp_path / "pair", "gpt2", teacher=TinyArch(4, 128, 4, 2, 384))
    gc.prepare(tmp_path, gc.SIZES["smoke"], teacher)
    leg = gc.run_leg("reference", "cpu", "float32", "smoke", tmp_path, teacher)
    numbers = leg["numbers"]
    stages = {k.split(".")[0] for k in numbers}
    assert stages == {"info", "capture", "cka", "pairing", "align", "eval", "generate"}
    runs = {k.split(".")[1] for k in numbers if k.startswith("align.")}
    assert runs == {"semalign-online", *(f"{m}-cached" for m in gc.CACHED_METHODS)}
    assert all(gc.check(k, v, v, numbers)["ok"] for k, v in numbers.items())
    assert set(leg["placement"].values()) == {"cpu float32"} and len(leg["placement"]) == 2 + len(runs)
    assert set(leg["timings"]) >= {"load", "info", "capture", "cka", "pairing report", "evaluation", "generation"}
