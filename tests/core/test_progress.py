"""The terminal of a long command: one stage bar weighted by expected durations; third-party bars silenced."""

from __future__ import annotations

import pytest

from semalign_lens.core.progress import StageBar, quiet_libraries


def test_stage_bar_advances_by_weight_and_times_each_stage():
    bar = StageBar(["load", "train", "report"], [1.0, 8.0, 0.5], desc="t")
    assert bar.bar.total == 9.5
    bar.start("load")
    assert bar.current == "load"
    bar.done()
    bar.start("train")
    bar.detail("step 3/12")
    assert bar.bar.postfix == "train… step 3/12"
    bar.done()
    assert bar.bar.n == 9.0 and list(bar.timings) == ["load", "train"] and bar.current is None
    with pytest.raises(KeyError, match="unknown stage 'nope'"):
        bar.start("nope")
    bar.close()


def test_quiet_libraries_silences_transformers_and_hub_bars():
    import huggingface_hub.utils
    import transformers.utils.logging as hf_logging

    try:
        quiet_libraries()
        assert not hf_logging.is_progress_bar_enabled()
        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        hf_logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()
