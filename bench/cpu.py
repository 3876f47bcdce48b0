"""CPU time the processes of a row used: its cost, whatever else the shared machine was doing."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (0 once it has gone), from /proc/PID/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return 0.0
    # proc(5): the fields after the parenthesised command name; utime and stime are 14 and 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU seconds used since it was made by this process, its ended children and `pids`."""

    def __init__(self, pids: Iterable[int] = (), children: bool = False) -> None:
        self.pids = tuple(pids)
        self.children = children
        self.start = self._now()

    def _now(self) -> float:
        total = time.process_time() + sum(process_cpu_seconds(pid) for pid in self.pids)
        return total + (children_cpu_seconds() if self.children else 0.0)

    def seconds(self) -> float:
        return self._now() - self.start
