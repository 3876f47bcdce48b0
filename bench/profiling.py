"""Sampling profiles of a row with py-spy, and the top costs read back from its raw stacks."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from casign.supervise import stop_process_group

SAMPLE_RATE = 100
ATTACH_SECONDS = 1.0
TOP = 15
PROJECT_PACKAGES = frozenset({"bench", "casign", "keystore", "producers", "worker"})


def py_spy_binary() -> str | None:
    """py-spy beside this Python (the `[test]` extra installs it there) or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def py_spy_missing() -> str | None:
    if py_spy_binary() is not None:
        return None
    return "py-spy is neither beside this Python nor on PATH (pip install -e '.[test]')"


@contextlib.contextmanager
def py_spy_recording(pid: int, output: Path, subprocesses: bool) -> Iterator[None]:
    """Sample `pid` (and its children) into `output`, collapsed stacks, for the block's span."""
    command = [
        py_spy_binary() or "py-spy",
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(output),
        "--rate",
        str(SAMPLE_RATE),
        "--nolineno",
        "--nonblocking",  # never pause the process being measured
    ]
    if subprocesses:
        command.append("--subprocesses")
    with output.with_suffix(".log").open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    time.sleep(ATTACH_SECONDS)
    try:
        yield
    finally:
        # py-spy writes its output when interrupted, as on Ctrl-C.
        stop_process_group(process, timeout=60, first=signal.SIGINT)


@dataclass(frozen=True)
class ProfileSummary:
    """Where the samples of some processes went: by frame including callees, and by leaf."""

    title: str
    samples: int
    processes: int
    own: list[tuple[str, int]]
    project_inclusive: list[tuple[str, int]]
    by_package: list[tuple[str, int]]

    def lines(self, top: int = TOP) -> list[str]:
        out = [f"{self.title}: {self.samples} samples in {self.processes} process(es)"]
        if not self.samples:
            return out
        sections = (
            (
                "self: the frame on top of the stack (native code counts to its Python caller)",
                self.own,
            ),
            ("inclusive: project frames with everything they call", self.project_inclusive),
            ("self, by package of the top frame", self.by_package),
        )
        for heading, counts in sections:
            out.append(f"  {heading}:")
            out.extend(f"    {count / self.samples:6.1%}  {name}" for name, count in counts[:top])
        return out


def _split_sample(line: str) -> tuple[str, list[str], int] | None:
    """(process frame, Python frames, count) of one raw line; None for a blank line."""
    stack, _, count_text = line.rstrip("\n").rpartition(" ")
    if not stack or not count_text.isdigit():
        return None
    frames = stack.split(";")
    process_frames = [frame for frame in frames if frame.startswith("process ")]
    process = process_frames[-1] if process_frames else ""
    return process, [frame for frame in frames if not frame.startswith("process ")], int(count_text)


def process_pid(process_frame: str) -> int | None:
    """The pid in a py-spy `process 123:"command"` frame."""
    head = process_frame.removeprefix("process ").partition(":")[0]
    return int(head) if head.isdigit() else None


def frame_package(frame: str) -> str:
    """`sign (worker/issuance.py)` -> `worker`; `dumps (json/__init__.py)` -> `json`."""
    path = frame.rpartition("(")[2].rstrip(")")
    return path.split("/", 1)[0].removesuffix(".py") or "?"


def summarise(
    raw: Path, title: str, keep: Callable[[int | None], bool] = lambda _pid: True
) -> ProfileSummary:
    """Top frames of the samples in `raw` (py-spy `--format raw`) of the processes `keep` picks."""
    own: Counter[str] = Counter()
    project: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    processes: set[str] = set()
    samples = 0
    text = raw.read_text(encoding="utf-8", errors="replace") if raw.exists() else ""
    for line in text.splitlines():
        parsed = _split_sample(line)
        if parsed is None:
            continue
        process, frames, count = parsed
        if not keep(process_pid(process)) or not frames:
            continue
        processes.add(process)
        samples += count
        own[frames[-1]] += count
        packages[frame_package(frames[-1])] += count
        for frame in set(frames):
            if frame_package(frame) in PROJECT_PACKAGES:
                project[frame] += count
    return ProfileSummary(
        title,
        samples,
        len(processes),
        own.most_common(),
        project.most_common(),
        packages.most_common(),
    )
