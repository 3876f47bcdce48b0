"""One signing worker process: its settings, its signer (opened after fork), its waits.

`SignerProcess` is everything a pool process holds for the tasks it runs; the Celery app makes
one in `worker_process_init` (or on first use where nothing forks: `--pool solo`, tests).
`StopNotice` is how the worker's main process tells its pool processes that it is stopping, so
a task waiting out an outage hands its message back instead of holding the shutdown up.
"""

from __future__ import annotations

import gc
import itertools
import logging
import mmap
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from celery.exceptions import Reject
from cryptography import x509

from core.auth import ca_identity
from core.errors import ConfigurationError, Retryable, SigningError, StoreUnavailable
from core.queue import SIGN_QUEUE
from store.identity import CAIdentityRecord
from store.results import ResultsStore
from worker.access import AccessPolicy
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.crl import RevokedEntryCache
from worker.figures import RECOVERED, RETRIES
from worker.issuance import BatchSigner
from worker.lease import WorkerLease
from worker.live_config import Configuration, LiveConfiguration, ReloadNotice

log = logging.getLogger("casign.worker")

T = TypeVar("T")

DEFAULT_STORE_PREFIX = "casign"
RECOVERY_SECONDS = 60  # between recoveries of a signer without a lease
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
_STOP_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class SignerSettings:
    """Where a worker process finds its CA folder (key, profiles, producers) and its store."""

    ca_dir: Path
    store_url: str
    store_prefix: str = DEFAULT_STORE_PREFIX
    queue: str = SIGN_QUEUE
    open_mode: bool = False  # serve any producer when producers.toml is absent (`--open`)


class StopNotice:
    """A flag the worker's main process raises when it stops; the processes it forks see it.

    It lives in an anonymous shared page, so setting it is safe inside a signal handler and a
    pool process forked before or after sees the same byte.
    """

    ASKED = 1  # a stop signal, or a shutdown Celery began for a reason of its own
    FAILED = 2  # Celery gave up on the worker (an unrecoverable error)

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 1)

    def raise_(self, failed: bool = False) -> None:
        """Announce the stop; a failure is never downgraded to an asked stop."""
        self._page[0] = max(self._page[0], self.FAILED if failed else self.ASKED)

    def clear(self) -> None:
        self._page[0] = 0

    @property
    def raised(self) -> bool:
        return self._page[0] != 0

    @property
    def failed(self) -> bool:
        return self._page[0] == self.FAILED

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True as soon as the stop is raised."""
        deadline = time.monotonic() + seconds
        while not self.raised:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_STOP_POLL_SECONDS, left))
        return True


def retry_cause(exc: Retryable) -> str:
    """`store` when the results store failed, `token` otherwise (the key could not be used)."""
    return "store" if isinstance(exc, StoreUnavailable) else "token"


def retry_delay(attempt: int) -> float:
    """Seconds before try `attempt + 1`: 0.5 s doubling to 30 s, with jitter."""
    delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * float(2**attempt))
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


class SignerProcess:
    """What one worker process holds: settings, signer, CRL entry cache, the worker's stop notice."""

    def __init__(
        self, settings: SignerSettings, stop: StopNotice, reload: ReloadNotice | None = None
    ) -> None:
        self.settings = settings
        self.stop = stop
        self.reload = reload
        self.folder = CAFolder(settings.ca_dir)
        self.crl_cache = RevokedEntryCache()
        self._signer: BatchSigner | None = None
        self._retries: Counter[str] = Counter()  # by cause, until the signer's figures take them
        self._live: LiveConfiguration | None = None

    def signer(self) -> BatchSigner:
        """The signer, opened on first use; Retryable while the key or the store cannot be."""
        if self._signer is None:
            try:
                self._signer = self._open_signer()
            except Retryable:
                raise
            except SigningError as exc:
                # The key cannot be opened now (HSM gone, PIN changed): wait and retry.
                raise Retryable(str(exc)) from exc
        self._signer.store.note_worker_active(self.settings.queue)  # read by `casign status`
        if self._retries:
            for cause, amount in self._retries.items():
                self._signer.figures.count(RETRIES, amount, cause=cause)
            self._retries.clear()
        return self._signer

    def write_figures(self) -> None:
        """Write the signer's figures now, if it was ever opened."""
        if self._signer is not None:
            self._signer.figures.write_now()

    def store(self) -> ResultsStore:
        """The signer's store, for the process's own threads (no sign of activity recorded)."""
        signer = self._signer if self._signer is not None else self.signer()
        return signer.store

    def task_signer(self) -> BatchSigner:
        """The signer for the next task, with producers.toml and profiles.toml as they are now
        (`worker.live_config`); called only from the thread that runs tasks."""
        signer = self.signer()
        if self._live is not None:
            config = self._live.refresh()
            if config.access is not signer.access or config.profiles is not signer.profiles:
                signer.reconfigure(config.access, config.profiles)
        return signer

    def wait_out_outages(self, attempt: Callable[[], T], what: str) -> T:
        """Call `attempt` until it does not raise Retryable, backing off between tries.

        The task's message stays unacknowledged meanwhile: no new message is published, so a
        broker that is the Redis that is down loses nothing, and a worker that dies leaves the
        message to be delivered again. Once the worker is stopping, Reject(requeue=True) hands
        the message back to the broker (or, with the broker down too, leaves it unacknowledged
        for the broker to deliver again).
        """
        for tries in itertools.count():
            try:
                return attempt()
            except Retryable as exc:
                self._retries[retry_cause(exc)] += 1
                delay = retry_delay(tries)
                log.warning("%s waits %.1f s and tries again: %s", what, delay, exc)
                if self.stop.wait(delay):
                    log.warning("%s is handed back to the broker: the worker is stopping", what)
                    raise Reject(f"{what}: the worker is stopping", requeue=True) from exc
        raise AssertionError("unreachable")

    def _open_signer(self) -> BatchSigner:
        settings = self.settings
        authority = load_authority(settings.ca_dir)
        store = ResultsStore.from_url(settings.store_url, settings.store_prefix)
        identity = claim_store(authority.intermediate, store)
        access = AccessPolicy.load(self.folder.producers_path, identity, settings.queue)
        if access is None:
            if not settings.open_mode:
                raise ConfigurationError(open_mode_refusal(self.folder))
            log.warning(
                "open mode: %s is absent, so this signer accepts batches from any producer",
                self.folder.producers_path,
            )
        else:
            log.info(
                "this signer accepts batches from the %d producer(s) listed in %s only: %s",
                len(access.producers),
                self.folder.producers_path,
                ", ".join(sorted(access.producers)),
            )
        store.set_chain(authority.chain_pem)
        self._live = LiveConfiguration(
            self.folder.producers_path,
            self.folder.profiles_path,
            lambda path: AccessPolicy.load(path, identity, settings.queue),
            authority.crl_shards,
            Configuration(access, authority.profiles),
            self.reload,
        )
        lease = WorkerLease(store)
        lease.renew()
        signer = BatchSigner(authority, store, access, lease)
        # What is loaded by now lives as long as the worker: the collector skips it from here
        # on, so the full collections that a batch's garbage sets off stay short.
        gc.freeze()
        return signer


def open_mode_refusal(folder: CAFolder) -> str:
    """Why a signer without producers.toml, not told `--open`, does not start."""
    return (
        f"{folder.producers_path} is absent, so this signer would serve any producer that can "
        "reach its queue; list the producers there, or start the worker with --open to serve "
        "anyone"
    )


def refuse_unsafe_start(folder: CAFolder, *, open_mode: bool, allow_root_key: bool) -> None:
    """Refuse (ConfigurationError) a signer that would run open unasked, or beside the root key.

    The root's private key belongs offline: a signing host that can read it can make any CA.
    """
    if not folder.producers_path.exists() and not open_mode:
        raise ConfigurationError(open_mode_refusal(folder))
    if os.access(folder.root_key_path, os.R_OK) and not allow_root_key:
        raise ConfigurationError(
            f"the root CA's private key {folder.root_key_path} is readable on this signing "
            "host; move it to offline media (the signer needs only the intermediate key), or "
            "start the worker with --allow-root-key"
        )


def claim_store(intermediate: x509.Certificate, store: ResultsStore) -> str:
    """Record this CA as the owner of the store's key space, or refuse one another CA owns."""
    identity = ca_identity(intermediate)
    CAIdentityRecord(store).claim(identity, intermediate.subject.rfc4514_string())
    return identity


# By pid: a forked child inherits its parent's entry, which it must never use.
_by_pid: dict[int, SignerProcess] = {}


def start_signer_process(
    settings: SignerSettings, stop: StopNotice, reload: ReloadNotice | None = None
) -> SignerProcess:
    """Make this process's SignerProcess (after fork: nothing of the parent's is reused)."""
    _by_pid.clear()
    process = _by_pid[os.getpid()] = SignerProcess(settings, stop, reload)
    return process


def current_signer_process() -> SignerProcess | None:
    """The SignerProcess made in this very process, if any."""
    return _by_pid.get(os.getpid())


def recover_once(batch_signer: BatchSigner) -> None:
    """Publish jobs a crashed worker reserved but never published (their holder's lease is
    gone). Several processes may recover at once: each takes a job over in the store before
    it signs it, so no two sign the same one (a lock held by a process that died would hold
    every recovery up until it expired)."""
    if batch_signer.lease is not None:
        batch_signer.lease.end_gone_neighbours()
    recovered = batch_signer.recover_pending()
    if recovered:
        log.warning("recovered %d job(s) reserved before a crash", len(recovered))
        batch_signer.figures.count(RECOVERED, len(recovered))
        batch_signer.figures.keep_written()


def recover_while_running(batch_signer: BatchSigner, stop: StopNotice) -> None:
    """Recover at start, then once every lease period until the worker stops: a worker that
    died mid-batch has its jobs signed by a live one once its lease expires."""
    seconds = batch_signer.lease.terms.seconds if batch_signer.lease else RECOVERY_SECONDS
    while True:
        try:
            recover_once(batch_signer)
        except SigningError as exc:
            log.error("recovery of reserved jobs failed (tried again in %.0f s): %s", seconds, exc)
        if stop.wait(seconds):
            return
