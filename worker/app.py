"""The signer's Celery app: its settings in one place, a worker that always ends, process set-up.

`app` is what `celery -A worker.app inspect ping` (or Flower) loads: configured from the
CASIGN_* variables README lists, its broker the CA folder's embedded Redis when
CASIGN_BROKER_URL is unset. `casign worker` configures the same app from its flags
(`WorkerConfig`) and runs it (`run_worker`). The tasks live in `worker.signing_task` and
`worker.lifecycle_tasks`, which the worker imports as the app's `include`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar

from celery import Celery, platforms, signals
from celery.apps.worker import Worker as CeleryWorker
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.platforms import EX_FAILURE, EX_OK
from kombu.utils.objects import cached_property

from core.errors import SigningError
from core.layout import folder_names
from core.queue import SIGN_QUEUE, celery_settings, consumed_queues
from store.embedded import EmbeddedRedis
from worker.access import listed_producer_names
from worker.cafolder import CAFolder
from worker.crl_schedule import CRLSchedule
from worker.folder_sync import FolderSyncThread, index_sync_enabled
from worker.live_config import ReloadNotice
from worker.ocsp_renewal import DelegateRenewal
from worker.process import (
    SignerProcess,
    SignerSettings,
    StopNotice,
    current_signer_process,
    recover_while_running,
    start_signer_process,
)
from worker.producer_queues import ProducerQueueWatcher

log = logging.getLogger("casign.worker")

TASK_MODULES = ("worker.signing_task", "worker.lifecycle_tasks")

# casign's own settings, kept in app.conf beside Celery's.
CA_DIR_SETTING = "casign_ca_dir"
STORE_URL_SETTING = "casign_store_url"
STORE_PREFIX_SETTING = "casign_store_prefix"
OPEN_MODE_SETTING = "casign_open_mode"
CRL_SCHEDULE_SETTING = "casign_crl_schedule"

# How long a worker may take to shut down before it exits anyway: after a stop it was asked
# for (a batch in hand is finished; one waiting out an outage goes back at once), and after
# Celery gave up on it (its warm shutdown can hang on a broker gone wrong).
SHUTDOWN_SECONDS = 30.0
FAILED_SHUTDOWN_SECONDS = 10.0

# Options of every `casign worker`: no worker-to-worker chatter; the queue is the config's.
_WORKER_OPTIONS = ("--without-gossip", "--without-mingle", "--without-heartbeat")
DEFAULT_CA_DIR = "ca"


@dataclass(frozen=True)
class WorkerConfig:
    """What a signing worker is configured with: the broker and queue, the CA and the store.

    `producers` are the names producers.toml lists: the worker consumes the CA's queue and
    each one's own (`core.queue.consumed_queues`), in turn.
    """

    broker_url: str
    signer: SignerSettings
    queue: str = SIGN_QUEUE
    crl_schedule: bool = False  # each pool process keeps the CRL schedule (`--beat`)
    producers: tuple[str, ...] = ()

    @property
    def queues(self) -> tuple[str, ...]:
        """Every queue this worker consumes: the CA's (an open signer's producers, anonymous
        messages), then each listed producer's."""
        return consumed_queues(self.queue, self.producers)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkerConfig:
        """From CASIGN_CA_DIR, CASIGN_BROKER_URL, CASIGN_STORE_URL, CASIGN_STORE_PREFIX and
        CASIGN_QUEUE; broker and store default to the CA folder's embedded Redis, queue and
        prefix to the names its casign.toml records."""
        ca_dir = Path(environ.get("CASIGN_CA_DIR") or DEFAULT_CA_DIR).absolute()
        embedded = EmbeddedRedis(ca_dir)
        recorded = folder_names(ca_dir)  # what casign.toml names, else the old defaults
        return cls(
            broker_url=environ.get("CASIGN_BROKER_URL") or embedded.broker_url,
            signer=SignerSettings(
                ca_dir=ca_dir,
                store_url=environ.get("CASIGN_STORE_URL") or embedded.url,
                store_prefix=environ.get("CASIGN_STORE_PREFIX") or recorded.store_prefix,
            ),
            queue=environ.get("CASIGN_QUEUE") or recorded.queue,
            producers=listed_producer_names(CAFolder(ca_dir).producers_path),
        )

    def celery_settings(self) -> dict[str, Any]:
        """Celery's settings (core.queue, shared with producers) and casign's."""
        return {
            **celery_settings(self.broker_url, self.queue),
            CA_DIR_SETTING: str(self.signer.ca_dir),
            STORE_URL_SETTING: self.signer.store_url,
            STORE_PREFIX_SETTING: self.signer.store_prefix,
            OPEN_MODE_SETTING: self.signer.open_mode,
            CRL_SCHEDULE_SETTING: self.crl_schedule,
        }


def signer_settings(conf: Any) -> SignerSettings:
    """The SignerSettings an app's configuration holds."""
    return SignerSettings(
        ca_dir=Path(conf[CA_DIR_SETTING]),
        store_url=conf[STORE_URL_SETTING],
        store_prefix=conf[STORE_PREFIX_SETTING],
        queue=conf.get("task_default_queue") or SIGN_QUEUE,
        open_mode=bool(conf.get(OPEN_MODE_SETTING)),
    )


class ExitingWorker(CeleryWorker):
    """A Celery worker that tells its pool when it stops, and ends even if its shutdown wedges.

    A task waiting out a store or HSM outage sees the stop and hands its message back. Past
    SHUTDOWN_SECONDS (FAILED_SHUTDOWN_SECONDS after an "Unrecoverable error", whose warm
    shutdown can hang on the broker) the process exits with EX_FAILURE: its unacknowledged
    messages come back from the broker, and jobs reserved before signing are recovered.
    """

    def on_start(self) -> None:
        STOP.clear()
        super().on_start()
        watch_shutdown(STOP)
        self._follow_producers()
        if not issubclass(getattr(self, "pool_cls", PreforkPool), (PreforkPool, SoloPool)):
            # A pool that sends no worker_process_init (threads): this process signs, so it
            # opens the key. Prefork's children and the solo pool's constructor send it.
            _open_and_recover(signer_process())

    def _follow_producers(self) -> None:
        """Consume the queue of each producer listed after the start (worker.producer_queues)."""
        conf = self.app.conf
        hostname: str = getattr(self, "hostname")  # noqa: B009 (set by WorkController.setup_instance)

        def add_queue(queue: str) -> None:
            self.app.control.add_consumer(queue, destination=[hostname], reply=False)

        ProducerQueueWatcher(
            CAFolder(Path(conf[CA_DIR_SETTING])).producers_path,
            conf.get("task_default_queue") or SIGN_QUEUE,
            set(self.app.amqp.queues),
            add_queue,
            lambda: STOP.raised,
        ).start()

    def install_platform_tweaks(self, worker: Any) -> None:
        # SIGHUP reads producers.toml and profiles.toml again (worker.live_config), where
        # Celery's own handler would exec the whole worker afresh.
        super().install_platform_tweaks(worker)
        platforms.signals["SIGHUP"] = _reload_on_hangup
        install_stop_handlers()

    def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
        STOP.raise_(failed=exitcode == EX_FAILURE)
        super().stop(in_sighandler=in_sighandler, exitcode=exitcode)

    def terminate(self, in_sighandler: bool = False) -> None:
        STOP.raise_()
        super().terminate(in_sighandler=in_sighandler)


class StopSignalHandler:
    """Celery's handler for a stop signal, raising STOP first; while any stop signal's handler
    runs, another stop signal only sets Celery's flag.

    Celery's handler sends worker_shutting_down, whose dispatch holds a lock; a second stop
    signal arriving while the first is dispatched (`kill` of the whole process group reaches
    the worker directly and again through `casign worker`'s supervisor; a Ctrl-C sends SIGINT
    to both, and the supervisor passes it on as SIGTERM) entered a handler again on the same
    thread and waited on that lock for ever.
    """

    handling: ClassVar[bool] = False  # one flag for every stop signal: any may follow any

    def __init__(self, handler: Any) -> None:
        self.handler = handler

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        # A page write, before Celery's loop notices: a solo pool's task waiting out an outage
        # sees it, and the watchdog's deadline runs whatever Celery does next.
        STOP.raise_()
        if StopSignalHandler.handling:
            _set_shutdown_flag(signum)
            return
        StopSignalHandler.handling = True
        try:
            if callable(self.handler):
                self.handler(signum, frame)
        finally:
            StopSignalHandler.handling = False


def install_stop_handlers() -> None:
    """Wrap the stop signals' handlers Celery installed: SIGTERM and SIGINT (Ctrl-C) a warm
    shutdown with status 0, as `casign worker` promises (Celery's SIGINT handler exits 1, and
    makes a second Ctrl-C a cold shutdown), SIGQUIT the cold one."""
    warm = StopSignalHandler(platforms.signals["SIGTERM"])
    platforms.signals["SIGTERM"] = warm
    platforms.signals["SIGINT"] = warm
    platforms.signals["SIGQUIT"] = StopSignalHandler(platforms.signals["SIGQUIT"])


def _set_shutdown_flag(signum: int) -> None:
    from celery.worker import state

    if signum == signal.SIGQUIT:
        setattr(state, "should_terminate", EX_FAILURE)  # noqa: B010 (typed None in the stubs)
    elif state.should_stop is None:
        setattr(state, "should_stop", EX_OK)  # noqa: B010


class CasignCelery(Celery):
    @cached_property
    def Worker(self) -> type[CeleryWorker]:
        return self.subclass_with_self(ExitingWorker)


app = CasignCelery("casign", include=TASK_MODULES, set_as_current=False)
# Read when the configuration is first needed; `configure` then overrides it.
app.add_defaults(lambda: WorkerConfig.from_environment().celery_settings())

# Made here, in the main process, so every pool process forked from it shares them.
STOP = StopNotice()
RELOAD = ReloadNotice()


def _reload_on_hangup(*_: object) -> None:
    RELOAD.raise_()


def configure(config: WorkerConfig) -> Celery:
    """Configure `app` as `config` says; returns it."""
    app.conf.update(config.celery_settings())
    return app


def run_worker(config: WorkerConfig, options: Sequence[str] = ()) -> int:
    """Run `celery worker` on `app` configured by `config`, plus `options`; its exit status."""
    from celery.bin.celery import celery as celery_command

    configure(config)
    arguments = ["worker", *_WORKER_OPTIONS, f"--queues={','.join(config.queues)}", *options]
    # As Celery.start does, but keeping the status that Celery.worker_main throws away.
    celery_command.params[0].default = app
    try:
        status = celery_command.main(args=arguments, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return status if isinstance(status, int) else 0


def signer_process() -> SignerProcess:
    """This process's SignerProcess: made after fork, or here on first use (solo pool, tests)."""
    return current_signer_process() or start_signer_process(signer_settings(app.conf), STOP, RELOAD)


def watch_shutdown(stop: StopNotice) -> threading.Thread:
    """Start a thread that exits this process once a shutdown outlasts its deadline."""
    watchdog = threading.Thread(
        target=_exit_after_deadline, args=(stop,), name="casign-shutdown-watchdog", daemon=True
    )
    watchdog.start()
    return watchdog


def _exit_after_deadline(stop: StopNotice) -> None:
    while not stop.wait(3600.0):
        pass
    began = time.monotonic()
    while True:
        seconds = FAILED_SHUTDOWN_SECONDS if stop.failed else SHUTDOWN_SECONDS
        if time.monotonic() - began >= seconds:
            break
        time.sleep(0.1)
    # No logging here: the wedged shutdown may hold a handler's lock.
    message = f"casign worker: not shut down within {seconds:.0f} s; exiting\n"
    with contextlib.suppress(OSError):
        os.write(2, message.encode())
    os._exit(EX_FAILURE)


@signals.worker_process_init.connect
def _open_key_after_fork(**_: object) -> None:
    # Celery may hand this process a batch before init returns, and a batch handed to a
    # process that dies in init is stranded; so init only opens the key, and the recovery
    # (which signs) runs beside the tasks.
    # A SIGHUP sent to the whole process group reaches this process too: the same notice.
    signal.signal(signal.SIGHUP, _reload_on_hangup)
    _open_and_recover(start_signer_process(signer_settings(app.conf), STOP, RELOAD))


@signals.worker_process_shutdown.connect
def _write_last_figures(**_: object) -> None:
    # The figures' thread writes every second; a process leaving writes what it counted since.
    process = current_signer_process()
    if process is not None:
        process.write_figures()


def _open_and_recover(process: SignerProcess) -> None:
    if app.conf.get(CRL_SCHEDULE_SETTING):
        CRLSchedule(process).start()  # it opens the signer itself, and waits out its outages
    DelegateRenewal(process).start()  # every worker, --beat or not: the responder cannot renew
    try:
        batch_signer = process.signer()
    except SigningError as exc:
        log.error("worker process cannot sign: %s", exc)
        return
    if index_sync_enabled(process.folder):
        FolderSyncThread(process.folder, process.store, process.stop).start()
    if batch_signer.lease is not None:
        batch_signer.lease.start()  # renewed while this process lives
    threading.Thread(
        target=recover_while_running,
        args=(batch_signer, process.stop),
        name="casign-recovery",
        daemon=True,
    ).start()
