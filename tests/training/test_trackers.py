"""Experiment trackers (`AlignConfig.trackers`, training/trackers.py): what TensorBoard and W&B (offline) hold,
read back from their own files with their own readers (TensorBoard's EventAccumulator; W&B's record protobufs in
its LevelDB-format log, parsed here), against `metrics.jsonl` and the run's config."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from trainer_helpers import _cli_config, make_cfg, run

from semalign_lens.core.errors import SemalignError
from semalign_lens.training import Trainer

tensorboard = pytest.importorskip("tensorboard", reason="the trackers extra: pip install 'semalign-lens[trackers]'")


def _metric_points(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tracker name: [(step, value)] in log order} of every number in metrics.jsonl, named as the module
    docstring of training/trackers.py says (written out here, not taken from the package)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        kind = record["kind"]
        prefix = {"diag": f"diag/L{record.get('student_layer')}", "stage": f"stage/{record.get('when')}"}.get(kind,
                                                                                                            kind)
        for key, value in record.items():
            if key not in ("step", "student_layer") and type(value) in (int, float):
                out.setdefault(f"{prefix}/{key}", []).append((record["step"], float(value)))
    return out


def _same(a: float, b: float, rel: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=rel, abs=1e-12)


def _flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return out


def _tensorboard(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _tensorboard_hparams(folder: Path) -> list[dict]:
    """The hyper-parameters of every session stored under `folder` (add_hparams writes each in a subfolder)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    sessions = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))):
        content = _tensorboard(sub).PluginTagToContent("hparams")["_hparams_/session_start_info"]
        info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        sessions.append({k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()})
    return sessions


def test_tensorboard_holds_every_metric_record_and_the_config_across_a_resume(tmp_path, tiny_pair, tokens):
    """Every number of metrics.jsonl is a TensorBoard scalar at its step, in the same order, once (float32);
    what a killed run logged past its checkpoint is hidden after the resume (purge_step); the config is the
    session's hyper-parameters."""
    from torch.utils.tensorboard import SummaryWriter

    cfg = make_cfg(tmp_path, trackers=["tensorboard"], diag_every=1, figures=True)
    first = run(cfg, tiny_pair, tokens, stop_after_steps=3)
    assert not first.finished and first.trackers is None  # an unfinished run closes its trackers
    folder = tmp_path / "run" / "trackers" / "semalign"
    with SummaryWriter(str(folder)) as writer:  # what a kill after step 4's record, before its checkpoint, leaves
        writer.add_scalar("train/loss", 1234.5, global_step=4)
    result = run(cfg, tiny_pair, tokens)
    assert result.finished and result.trackers.names == ["tensorboard"]
    result.end_trackers()
    expected = _metric_points(result.run_dir)
    board = _tensorboard(folder)
    assert sorted(board.Tags()["scalars"]) == sorted(expected)
    assert {"train/loss", "train/relation", "train/kl", "train/lr", "heldout/ce", "diag/L1/cos_state",
            "cka/diagonal_mean", "stage/end/loss", "stage/start/lr"} <= set(expected)
    for tag, points in expected.items():
        logged = [(e.step, e.value) for e in board.Scalars(tag)]
        assert [s for s, _ in logged] == [s for s, _ in points], tag
        assert all(_same(a, b, rel=1e-6) for (_, a), (_, b) in zip(logged, points, strict=True)), (tag, logged)
    # the config, once per session (the run and its resume), flattened to dotted keys
    sessions = _tensorboard_hparams(folder)
    want = _flat(json.loads((result.run_dir / "config.json").read_text()))
    assert len(sessions) == 2 and want["schedule.lr"] == 0.01 and want["trackers"] == '["tensorboard"]'
    for hparams in sessions:
        assert hparams.keys() == want.keys()
        assert all(hparams[k] == pytest.approx(v) if type(v) in (int, float) else hparams[k] == v
                   for k, v in want.items())


def _wandb_log(path: Path) -> list[bytes]:
    """The records of a W&B run file: a 7-byte header (':W&B', magic, version), then LevelDB's log format in
    32 KiB blocks: per chunk a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4: pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(buf)
            buf = b""
    return out


def _wandb_run(folder: Path) -> tuple[dict[int, dict], dict, set[str]]:
    """(history rows by step, config, record types) of the one offline run under `folder`."""
    from wandb.proto import wandb_internal_pb2

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    rows, config, kinds = {}, {}, set()
    for data in _wandb_log(path):
        record = wandb_internal_pb2.Record.FromString(data)
        kinds.add(record.WhichOneof("record_type"))
        if record.HasField("history"):
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            rows[row["_step"]] = row
        elif record.HasField("config"):
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return rows, config, kinds


def test_semalign_align_sends_metrics_config_and_figures_to_tensorboard_and_wandb(tmp_path, monkeypatch):
    """`semalign align` with both trackers (W&B offline): W&B's row at each step holds the last value of every
    number logged at that step (float64, exact), with the config; both trackers got every figure as an image;
    both are closed at the end."""
    from semalign_lens.cli import align_main
    from semalign_lens.reports.page import png_export_available
    from semalign_lens.training.trackers import INSTALL

    assert INSTALL["wandb"] == "semalign-lens[trackers]"
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = _cli_config(tmp_path)
    result = align_main(config, ["schedule.stage_steps=1", f"run_dir={tmp_path / 'cli'}", "report=false",
                                 'trackers=["tensorboard", "wandb"]', "tracker_project=tiny"])
    assert result.finished and result.trackers is None  # closed by the app after the figures
    folder = tmp_path / "cli" / "trackers"
    rows, wandb_config, kinds = _wandb_run(folder)
    assert "exit" in kinds  # the run was finished, not left open
    for tag, points in _metric_points(result.run_dir).items():
        last = dict(points)  # W&B keeps one row per step: the last value logged at it
        for step, value in last.items():
            assert _same(rows[step][tag], value, rel=0), (tag, step)
    want = _flat(json.loads((result.run_dir / "config.json").read_text()))
    assert {k: wandb_config[k] for k in want} == want
    figures = {"loss_curves", "projections", *(f"cka_stage{i}_{w}" for i in range(3) for w in ("start", "end"))}
    if not png_export_available()[0]:
        pytest.skip("figures as images need kaleido and Chromium (pip install 'semalign-lens[png]')")
    board = _tensorboard(folder / "tiny")
    assert set(board.Tags()["images"]) == {f"figures/{f}" for f in figures}
    image = board.Images("figures/cka_stage0_start")[0]
    assert image.step == 3 and image.width > 100 and image.height > 100
    assert {f"figures/{f}/_type" for f in figures} <= set(rows[3])
    assert len(list(folder.glob("wandb/offline-run-*/files/media/images/figures/*.png"))) == len(figures)


def test_an_unknown_or_missing_tracker_is_one_line(tmp_path, monkeypatch):
    import accelerate.tracking

    with pytest.raises(SemalignError, match=r"unknown tracker 'tensorbored'; choose from \['aim', 'clearml'"):
        make_cfg(tmp_path, trackers=["tensorbored"])
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(SemalignError, match=r"^tracker 'tensorboard' is not installed; pip install "
                                            r"'semalign-lens\[trackers\]'$"):
        make_cfg(tmp_path, trackers=["tensorboard"])


def test_trackers_and_an_accelerator_without_them_are_refused(tmp_path, tiny_pair, tokens):
    from accelerate import Accelerator

    cfg = make_cfg(tmp_path, trackers=["tensorboard"])
    with pytest.raises(SemalignError, match=r"trackers \['tensorboard'\] are not among the given accelerator's"):
        Trainer(cfg, tiny_pair, data=tokens, accelerator=Accelerator(cpu=True))
