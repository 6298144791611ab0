"""What a long command shows on the terminal: one stage bar with an ETA, and nothing from third parties.

Why: transformers and huggingface_hub draw their own nested bars ("Loading weights", "Writing model
shards", "Converting and de-quantizing GGUF tensors") in the middle of ours, and a log of 40 interleaved
bar lines hides the one that matters. The command line calls `quiet_libraries()` once; our own stage bar
(`StageBar`) names the stage that is *running* and estimates the time left from each stage's expected share.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from tqdm.auto import tqdm


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's progress bars and info logs (errors still surface)."""
    import huggingface_hub.utils
    import transformers.utils.logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    huggingface_hub.utils.disable_progress_bars()


def note(message: str) -> None:
    """One line for the user on stderr that does not break a running bar."""
    tqdm.write(message, file=sys.stderr)


class StageBar:
    """A bar over named stages; `weights` (expected relative durations) make the ETA honest when stages
    differ by 100x. `start(name)` names the running stage; `done()` closes it and returns its seconds."""

    def __init__(self, stages: Sequence[str], weights: Sequence[float] | None = None, *, desc: str,
                 enabled: bool = True):
        self.weights = dict(zip(stages, weights or [1.0] * len(stages), strict=True))
        self.bar = tqdm(total=round(sum(self.weights.values()), 3), desc=desc, disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}")
        self.current: str | None = None
        self.clock = time.time()
        self.timings: dict[str, float] = {}
        self._ticking = threading.Event()
        if enabled and sys.stderr.isatty():  # a terminal: let elapsed/ETA move within long stages
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._ticking.wait(1.0):
            self.bar.refresh()

    def start(self, name: str) -> None:
        if name not in self.weights:
            raise KeyError(f"unknown stage {name!r}; stages: {list(self.weights)}")
        self.current, self.clock = name, time.time()
        self.bar.set_postfix_str(f"{name}…")

    def detail(self, text: str) -> None:
        """Progress inside the running stage (e.g. "step 3/12"), shown after its name."""
        self.bar.set_postfix_str(f"{self.current}… {text}")

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """The body as the stage `name`: `start(name)` before it, `done()` after it."""
        self.start(name)
        yield
        self.done()

    def done(self) -> float:
        seconds = round(time.time() - self.clock, 1)
        self.timings[self.current] = seconds
        self.bar.update(self.weights[self.current])
        self.current = None
        return seconds

    def close(self) -> None:
        self._ticking.set()
        self.bar.set_postfix_str("done")
        self.bar.close()


class Stopwatch:
    """Wall-clock and process CPU seconds per named stage, each lap since the last (CPU time is what a shared,
    oversubscribed machine can still measure: wall time there depends on the neighbours)."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.timings[name] = round(wall - self._wall, 2)
        self.cpu[name] = round(cpu - self._cpu, 2)
        self._wall, self._cpu = wall, cpu
