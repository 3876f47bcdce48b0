"""`casign worker` keeps a worker running: restarted after any exit it did not ask for but a
refusal to start; a worker's shutdown always ends, and its pool processes hear of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from celery.apps.worker import Worker as CeleryWorker
from celery.platforms import EX_FAILURE

import worker.app as worker_app
from casign.supervise import REFUSED_TO_START, RestartPolicy, Supervisor
from store.results import ResultsStore
from tests.workers import launch_worker, wait_until_started
from worker.cafolder import CAFolder
from worker.process import StopNotice

QUICK = RestartPolicy(first=0.01, most=0.05, steady=60.0)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_a_child_is_started_again_after_every_exit_until_it_refuses_to_start(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    child = python(f"""
        from pathlib import Path
        runs = Path({str(runs)!r})
        count = len(runs.read_text()) if runs.exists() else 0
        runs.write_text("x" * (count + 1))
        raise SystemExit([70, 1, 0, {REFUSED_TO_START}][count])
    """)
    supervisor = Supervisor(child, QUICK)
    assert supervisor.run() == REFUSED_TO_START
    assert supervisor.restarts == 3
    assert runs.read_text() == "xxxx"


def test_a_child_that_exits_0_unasked_is_started_again(tmp_path: Path) -> None:
    """A Celery worker that ends itself with 0 (as on Redis out of memory, before) is not done."""
    marker = tmp_path / "exited-once"
    child = python(f"""
        from pathlib import Path
        marker = Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            raise SystemExit(0)
        raise SystemExit({REFUSED_TO_START})
    """)
    supervisor = Supervisor(child, QUICK)
    assert supervisor.run() == REFUSED_TO_START
    assert supervisor.restarts == 1


def test_a_child_killed_by_a_signal_is_started_again(tmp_path: Path) -> None:
    marker = tmp_path / "killed-once"
    child = python(f"""
        import os, signal
        from pathlib import Path
        marker = Path({str(marker)!r})
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit({REFUSED_TO_START})
    """)
    supervisor = Supervisor(child, QUICK)
    assert supervisor.run() == REFUSED_TO_START
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


def test_a_worker_that_ignores_the_stop_is_killed_after_the_grace(tmp_path: Path) -> None:
    ready = tmp_path / "child-ready"
    child = [
        sys.executable,
        "-c",
        "import signal, time; from pathlib import Path\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n",
    ]
    runner = python(f"""
        import sys
        from casign.supervise import RestartPolicy, Supervisor
        sys.exit(Supervisor({child!r}, RestartPolicy(first=0.01), stop_grace=0.5).run())
    """)
    process = subprocess.Popen(runner)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the child did not start"
            time.sleep(0.05)
        stopped_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGKILL
        assert time.monotonic() - stopped_at < 10
    finally:
        if process.poll() is None:
            process.kill()


@pytest.fixture
def stop_notice(monkeypatch: pytest.MonkeyPatch) -> StopNotice:
    """A stop notice of the test's own in place of the app's."""
    notice = StopNotice()
    monkeypatch.setattr(worker_app, "STOP", notice)
    return notice


def test_a_worker_celery_gave_up_on_exits_even_if_its_shutdown_hangs(
    monkeypatch: pytest.MonkeyPatch, stop_notice: StopNotice
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
    watchdog = worker_app.watch_shutdown(stop_notice)
    worker = object.__new__(worker_app.ExitingWorker)
    worker.stop(exitcode=EX_FAILURE)
    assert exits == [EX_FAILURE]
    watchdog.join(5)


def test_a_worker_asked_to_stop_has_longer_but_not_for_ever(
    monkeypatch: pytest.MonkeyPatch, stop_notice: StopNotice
) -> None:
    exits: list[float] = []
    monkeypatch.setattr(worker_app, "FAILED_SHUTDOWN_SECONDS", 0.01)
    monkeypatch.setattr(worker_app, "SHUTDOWN_SECONDS", 0.6)
    monkeypatch.setattr(worker_app.os, "_exit", lambda code: exits.append(time.monotonic()))
    monkeypatch.setattr(CeleryWorker, "stop", lambda self, **_: None)
    watchdog = worker_app.watch_shutdown(stop_notice)
    worker = object.__new__(worker_app.ExitingWorker)
    time.sleep(0.3)
    assert exits == [], "exited before any stop"
    asked = time.monotonic()
    worker.stop(exitcode=0)
    assert stop_notice.raised and not stop_notice.failed
    time.sleep(0.3)
    assert exits == [], "an asked stop was cut at the failure deadline"
    watchdog.join(5)
    assert len(exits) == 1 and 0.5 < exits[0] - asked < 3


def test_the_stop_reaches_processes_forked_before_it() -> None:
    notice = StopNotice()
    child = os.fork()
    if child == 0:  # a pool process, waiting out an outage
        os._exit(0 if notice.wait(20) else 1)
    time.sleep(0.2)
    notice.raise_()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_casign_app_runs_the_exiting_worker() -> None:
    assert issubclass(worker_app.app.Worker, worker_app.ExitingWorker)


# The working directory's folders never stand in for casign's packages (casign/safe_path.py).
SHADOWED_PACKAGES = ("store", "core", "worker", "producers", "keystore")


def test_casign_and_its_worker_ignore_package_folders_in_the_working_directory(
    tmp_path: Path, ca_folder: CAFolder, redis_url: str, broker_url: str, store: ResultsStore
) -> None:
    """From a folder holding `store/`, `core/`, `worker/` and `producers/` packages that refuse
    to be imported, `python -m casign` and the Celery worker it supervises run casign's own."""
    hostile = tmp_path / "cwd"
    for name in SHADOWED_PACKAGES:
        (hostile / name).mkdir(parents=True)
        (hostile / name / "__init__.py").write_text(f"raise SystemExit('imported ./{name}')\n")

    shown = subprocess.run(
        [sys.executable, "-m", "casign", "--help"],
        cwd=hostile, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "imported ./" not in shown.stdout + shown.stderr

    queue = f"casign-test-{uuid.uuid4().hex[:8]}"
    process = launch_worker(
        ca_folder.root, broker_url, redis_url, store, queue, tmp_path / "worker.log",
        concurrency=1, restart=True, cwd=hostile,
    )  # fmt: skip
    try:
        wait_until_started(process, store)
        [child] = _children(process.process.pid)
        argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        assert argv[1:4] == [b"-P", b"-m", b"casign"], argv
    finally:
        process.stop()
    assert "imported ./" not in process.log()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(word) for word in (task / "children").read_text().split()]
    return found


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_during_the_first_never_enters_celerys_handler_again(
    monkeypatch: pytest.MonkeyPatch, stop_notice: StopNotice, first: signal.Signals
) -> None:
    """`kill` of the group reaches the worker twice (directly and through the supervisor), as
    a Ctrl-C does (SIGINT, and SIGTERM from the supervisor); the second, delivered inside
    Celery's dispatch of worker_shutting_down, waited for ever on that dispatch's lock."""
    from celery import signals
    from celery.apps.worker import install_worker_int_handler, install_worker_term_handler
    from celery.worker import state

    monkeypatch.setattr(state, "should_stop", None)
    entered: list[str] = []

    def signalled_again(sig: str, **_: object) -> None:
        entered.append(sig)
        if len(entered) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # handled before kill returns to Python code

    worker = type("Worker", (), {"hostname": "celery@test"})()
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
    }
    signals.worker_shutting_down.connect(signalled_again, weak=False)
    try:
        install_worker_term_handler(worker)
        install_worker_int_handler(worker)
        worker_app.install_stop_handlers()
        os.kill(os.getpid(), first)
    finally:
        signals.worker_shutting_down.disconnect(signalled_again)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert entered == ["SIGTERM"]  # Ctrl-C too: Celery's warm shutdown of SIGTERM, status 0
    assert stop_notice.raised and state.should_stop == 0
