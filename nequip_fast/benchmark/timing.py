"""Timing that survives a shared machine: cases interleaved call by call, median and spread."""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Timing:
    """Seconds per call over the timed repetitions (warm-up calls excluded)."""

    median: float
    q25: float
    q75: float
    samples: tuple[float, ...]

    @staticmethod
    def of(samples: list[float]) -> "Timing":
        if len(samples) == 1:
            return Timing(samples[0], samples[0], samples[0], tuple(samples))
        q = statistics.quantiles(samples, n=4, method="inclusive")
        return Timing(statistics.median(samples), q[0], q[2], tuple(samples))

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q75 - self.q25) / self.median if self.median > 0 else 0.0

    def as_dict(self) -> dict:
        return {"median_s": self.median, "q25_s": self.q25, "q75_s": self.q75, "samples_s": list(self.samples)}


class Progress:
    """``[step/total] what`` lines on stderr, so a long run shows where it is."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.step, self.quiet = total, 0, quiet

    def __call__(self, what: str) -> None:
        self.step += 1
        if not self.quiet:
            print(f"[{self.step}/{self.total}] {what}", file=sys.stderr, flush=True)


def time_interleaved(calls: Mapping[str, Callable[[], None]], warmup: int, repeats: int,
                     sync: Callable[[], None] = lambda: None,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Time every call ``repeats`` times in round-robin order after ``warmup`` untimed rounds.

    Round-robin means a burst of load from other processes hits all cases alike, so their
    ratios stay meaningful even when absolute times do not. ``clock``: wall time by default;
    ``time.process_time`` on a crowded CPU machine (this process's CPU seconds, all threads).
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + repeats):
        for name, call in calls.items():
            sync()
            start = clock()
            call()
            sync()
            if round_ >= warmup:
                samples[name].append(clock() - start)
    return {name: Timing.of(s) for name, s in samples.items()}
