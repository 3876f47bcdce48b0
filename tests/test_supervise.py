"""`casign worker` keeps a worker running: the supervisor restarts a dead one, the worker exits when stuck."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from celery.apps.worker import Worker as CeleryWorker
from celery.platforms import EX_FAILURE

import worker.app as worker_app
from casign.supervise import REFUSED_TO_START, RestartPolicy, Supervisor

QUICK = RestartPolicy(first=0.01, most=0.05, steady=60.0)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_dying_child_is_started_again_until_it_exits_cleanly(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    child = python(f"""
        from pathlib import Path
        runs = Path({str(runs)!r})
        count = len(runs.read_text()) if runs.exists() else 0
        runs.write_text("x" * (count + 1))
        raise SystemExit(0 if count == 2 else 70)
    """)
    supervisor = Supervisor(child, QUICK)
    assert supervisor.run() == 0
    assert supervisor.restarts == 2
    assert runs.read_text() == "xxx"


def test_a_child_killed_by_a_signal_is_started_again(tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    child = python(f"""
        import os, signal
        from pathlib import Path
        marker = Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    supervisor = Supervisor(child, QUICK)
    assert supervisor.run() == 0
    assert supervisor.restarts == 1


def test_a_child_that_refuses_to_start_is_not_started_again() -> None:
    supervisor = Supervisor(python(f"raise SystemExit({REFUSED_TO_START})"), QUICK)
    assert supervisor.run() == REFUSED_TO_START
    assert supervisor.restarts == 0


def test_sigterm_is_passed_on_and_ends_the_supervisor(tmp_path: Path) -> None:
    got = tmp_path / "child-got"
    ready = tmp_path / "child-ready"
    child = [
        sys.executable,
        "-c",
        "import signal, sys, time; from pathlib import Path\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (Path({str(got)!r}).write_text('TERM'), "
        "sys.exit(0)))\n"
        f"Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n",
    ]
    runner = python(f"""
        import sys
        from casign.supervise import RestartPolicy, Supervisor
        sys.exit(Supervisor({child!r}, RestartPolicy(first=0.01)).run())
    """)
    process = subprocess.Popen(runner)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert got.read_text() == "TERM"


def test_the_delay_backs_off_and_is_capped() -> None:
    policy = RestartPolicy(first=1.0, most=30.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6, 9)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_worker_celery_gave_up_on_exits_even_if_its_shutdown_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exits: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        exited.set()

    def wedged_shutdown(
        self: object, in_sighandler: bool = False, exitcode: int | None = None
    ) -> None:
        exited.wait(10)  # as a warm shutdown that hangs on a broker gone wrong

    monkeypatch.setattr(worker_app, "FAILED_SHUTDOWN_SECONDS", 0.05)
    monkeypatch.setattr(worker_app.os, "_exit", fake_exit)
    monkeypatch.setattr(CeleryWorker, "stop", wedged_shutdown)
    worker = object.__new__(worker_app.ExitingWorker)
    worker.stop(exitcode=EX_FAILURE)
    assert exits == [EX_FAILURE]


def test_a_worker_asked_to_stop_is_left_to_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(worker_app, "FAILED_SHUTDOWN_SECONDS", 0.01)
    monkeypatch.setattr(worker_app.os, "_exit", exits.append)
    monkeypatch.setattr(CeleryWorker, "stop", lambda self, **_: None)
    worker = object.__new__(worker_app.ExitingWorker)
    worker.stop(exitcode=0)
    worker.stop(in_sighandler=True)
    time.sleep(0.1)
    assert exits == []


def test_the_casign_app_runs_the_exiting_worker() -> None:
    app = worker_app.create_app("redis://127.0.0.1:6379/0")
    assert issubclass(app.Worker, worker_app.ExitingWorker)
