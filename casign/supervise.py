"""Run the Celery worker in a child process and start it again when it dies.

kombu's Redis transport can end Celery's consumer with an "Unrecoverable error" when the broker
connection drops (celery/celery#9250, celery/kombu#582); a signer must outlive a Redis restart,
so `casign worker` does what a service manager would. Its exit codes: 0 when asked to stop,
2 when the worker refused to start (a configuration error, such as a wrong PIN, that no
restart would cure), the child's own code otherwise. `stop_process_group` is how casign (and
its tests and benchmark) stop a process it started in a group of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("casign.supervise")

REFUSED_TO_START = 2
# SIGTERM and SIGINT both mean a warm shutdown, passed on as SIGTERM: a Ctrl-C in a terminal
# reaches the child as well, and a second SIGINT would make Celery's shutdown a cold one.
# SIGQUIT (a cold shutdown) is passed on as it is.
STOP_SIGNALS = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGINT: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGQUIT,
}


@dataclass(frozen=True)
class RestartPolicy:
    """Back off from `first` to `most` seconds; a child that ran `steady` seconds starts afresh."""

    first: float = 1.0
    most: float = 30.0
    steady: float = 60.0

    def delay(self, failures: int) -> float:
        return float(min(self.most, self.first * 2 ** max(failures - 1, 0)))


class Supervisor:
    """Runs `command` until it exits cleanly, refuses to start, or a stop signal arrives."""

    def __init__(self, command: Sequence[str], policy: RestartPolicy | None = None) -> None:
        self.command = list(command)
        self.policy = policy or RestartPolicy()
        self.restarts = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._stop_signal: int | None = None

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._forward) for sig in STOP_SIGNALS}
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        failures = 0
        while True:
            started = time.monotonic()
            self._child = subprocess.Popen(self.command)
            code = self._child.wait()
            if self._stop_signal is not None:
                return 0 if code in (0, -signal.SIGTERM, -signal.SIGINT) else code
            if code in (0, REFUSED_TO_START):
                return code
            failures = 1 if time.monotonic() - started >= self.policy.steady else failures + 1
            delay = self.policy.delay(failures)
            log.error(
                "the worker exited with %s; starting it again in %.0f s (restart %d)",
                _describe_exit(code),
                delay,
                self.restarts + 1,
            )
            if self._sleep_unless_stopped(delay):
                return 0
            self.restarts += 1

    def _sleep_unless_stopped(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return self._stop_signal is not None

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(STOP_SIGNALS[signal.Signals(signum)])


def stop_process_group(
    process: subprocess.Popen[bytes], timeout: float, first: signal.Signals = signal.SIGTERM
) -> None:
    """Send `first` to the group `process` leads; SIGKILL it if it is not gone in `timeout` s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"
