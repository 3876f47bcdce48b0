"""Run the Celery worker in a child process and start it again when it dies.

kombu's Redis transport can end Celery's consumer with an "Unrecoverable error" when the broker
connection drops (celery/celery#9250, celery/kombu#582); a signer must outlive a Redis restart,
so `casign worker` does what a service manager would: any exit it did not ask for, 0 included
(Celery's own shutdown, `celery control shutdown`), is followed by a new start, except a refusal
to start (exit 2: a configuration error, such as a wrong PIN, that no restart would cure).
SIGHUP is passed on as it is: the worker reads producers.toml and profiles.toml again.
Its exit codes: 0 when asked to stop, 2 when the worker refused to start, otherwise the code
the worker stopped with (128 + N for signal N). A stop it passes on is bounded: a worker still
running `stop_grace` seconds later is killed. `stop_process_group` is how casign (and its tests
and benchmark) stop a process it started in a group of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("casign.supervise")

REFUSED_TO_START = 2
# Longer than the worker's own shutdown deadline (worker/app.py SHUTDOWN_SECONDS, 30 s).
STOP_GRACE_SECONDS = 45.0
_POLL_SECONDS = 0.2
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
    """Runs `command` again after every exit until it refuses to start or a stop signal arrives.

    `env` is the child's whole environment (default: this process's): the place for anything
    secret, such as a URL with a password, which a command line would show to every user.
    """

    def __init__(
        self,
        command: Sequence[str],
        policy: RestartPolicy | None = None,
        stop_grace: float = STOP_GRACE_SECONDS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env) if env is not None else None
        self.policy = policy or RestartPolicy()
        self.stop_grace = stop_grace
        self.restarts = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._stop_signal: int | None = None
        self._stopped_at: float | None = None

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._forward) for sig in STOP_SIGNALS}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._pass_hangup)
        try:
            return self._loop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        failures = 0
        while True:
            started = time.monotonic()
            self._child = subprocess.Popen(self.command, env=self.env)
            code = self._wait(self._child)
            if self._stop_signal is not None:
                if code in (0, -signal.SIGTERM, -signal.SIGINT):
                    return 0
                return 128 - code if code < 0 else code
            if code == REFUSED_TO_START:
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

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        """The child's exit status; SIGKILL it once it outlives a passed-on stop by `stop_grace`."""
        while True:
            try:
                return child.wait(timeout=_POLL_SECONDS)
            except subprocess.TimeoutExpired:
                if self._stopped_at is None:
                    continue
                if time.monotonic() - self._stopped_at >= self.stop_grace:
                    log.error(
                        "the worker did not stop within %.0f s of the stop signal; killing it",
                        self.stop_grace,
                    )
                    child.kill()
                    return child.wait()

    def _sleep_unless_stopped(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self._stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0)))
        return self._stop_signal is not None

    def _pass_hangup(self, _signum: int, _frame: FrameType | None) -> None:
        """SIGHUP is no stop: the worker reads its producers and profiles again."""
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signal.SIGHUP)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self._stop_signal = signum
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
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
