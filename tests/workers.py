"""Starting and stopping real `casign worker` processes for queue tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from casign.supervise import stop_process_group
from store.results import ResultsStore

START_TIMEOUT = 60.0


@dataclass
class WorkerProcess:
    """A `casign worker` in its own process group, with its output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process_group(self.process, timeout=30)


def launch_worker(
    ca_dir: Path,
    broker_url: str,
    store_url: str,
    store: ResultsStore,
    queue: str,
    log_path: Path,
    concurrency: int = 2,
    extra_env: Mapping[str, str] | None = None,
    restart: bool = False,
    pool: str = "prefork",
    allow_root_key: bool = True,
    flags: Sequence[str] = (),
    cwd: Path | None = None,
) -> WorkerProcess:
    """Start `casign worker` on the test's queue and key prefix without waiting for it.

    Without `restart` the Celery worker is this process itself (`--no-restart`), so its pool
    processes are its children; with it, it is the supervisor's child. The URLs go in the
    environment (a command line is public); `--open` is given when the CA lists no producers,
    and `--allow-root-key` unless told otherwise (test CA folders keep their root key).
    """
    env = {
        **os.environ,
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": store_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "CASIGN_QUEUE": queue,
        **(extra_env or {}),
    }
    command = [
        sys.executable, "-m", "casign", "worker", "--ca", str(ca_dir),
        "--concurrency", str(concurrency), "--loglevel", "WARNING",
        "--pool", pool, "--restart" if restart else "--no-restart",
    ]  # fmt: skip
    if not (ca_dir / "intermediate" / "producers.toml").exists():
        command.append("--open")
    if allow_root_key:
        command.append("--allow-root-key")
    command += flags
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd
        )
    return WorkerProcess(process, log_path)


def start_worker(
    ca_dir: Path,
    broker_url: str,
    store_url: str,
    store: ResultsStore,
    queue: str,
    log_path: Path,
    concurrency: int = 2,
    extra_env: Mapping[str, str] | None = None,
    restart: bool = False,
    *,
    allow_root_key: bool = True,
    flags: Sequence[str] = (),
) -> WorkerProcess:
    """Start a worker and wait until a pool process has opened the key and published the chain."""
    worker = launch_worker(
        ca_dir,
        broker_url,
        store_url,
        store,
        queue,
        log_path,
        concurrency,
        extra_env,
        restart,
        allow_root_key=allow_root_key,
        flags=flags,
    )
    return wait_until_started(worker, store)


def wait_until_started(worker: WorkerProcess, store: ResultsStore) -> WorkerProcess:
    """Wait until a pool process of `worker` has opened the key and published the chain."""
    deadline = time.monotonic() + START_TIMEOUT
    while store.chain() is None:
        if worker.process.poll() is not None or time.monotonic() > deadline:
            worker.stop()
            raise RuntimeError(f"worker did not start; its log:\n{worker.log()[-3000:]}")
        time.sleep(0.1)
    return worker
