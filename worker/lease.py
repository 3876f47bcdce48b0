"""This signing process's lease: an id, renewed by a thread while the process lives.

Every job the process reserves names it as holder (`store.leases`); another process takes such
a job over only once the lease has expired, so a worker that starts (and recovers) while this
one signs a long batch, or that is handed the same batch again by the broker, leaves it alone.
The process signs only while it knows its lease holds: it counts from the moment it sent its
last successful renewal, so its estimate ends before Redis's does.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable

from core.errors import Retryable
from store.leases import LeaseTerms
from store.results import ResultsStore

log = logging.getLogger("casign.worker")

LEASE_SECONDS_ENV = "CASIGN_LEASE_SECONDS"
DEFAULT_LEASE_SECONDS = 30.0
# Renewed three times per lease: two renewals may fail (a store blip) before it lapses.
_RENEWALS_PER_LEASE = 3
# No signature is begun with less than this share of the lease left.
_SIGNING_MARGIN = 0.25


def lease_seconds() -> float:
    """The lease from CASIGN_LEASE_SECONDS (30 s by default; at least 1 s)."""
    return max(1.0, float(os.environ.get(LEASE_SECONDS_ENV) or DEFAULT_LEASE_SECONDS))


def worker_id() -> str:
    """This process's id: host, pid and a nonce (a pid is reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class WorkerLease:
    """The lease of one signing process over the jobs it reserves."""

    def __init__(self, store: ResultsStore, seconds: float | None = None) -> None:
        self.store = store
        self.terms = LeaseTerms(worker_id(), lease_seconds() if seconds is None else seconds)
        self._valid_until = 0.0  # monotonic
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # Jobs a thread of this process is signing: the store cannot tell this process's
        # threads apart (one holder), so a batch and the recovery never sign the same one.
        self._in_hand: set[str] = set()

    @property
    def holder(self) -> str:
        return self.terms.holder

    def renew(self) -> None:
        """Renew now (one Redis call); Retryable while the store is unavailable."""
        sent = time.monotonic()
        self.store.leases.renew(self.terms)
        self.renewed(sent)

    def renewed(self, sent: float) -> None:
        """Note a renewal sent at `sent` (monotonic) that Redis carried out (reserve renews too)."""
        with self._lock:
            self._valid_until = max(self._valid_until, sent + self.terms.seconds)

    def held(self) -> bool:
        """True while enough of the lease is left to begin a signature."""
        left = self._valid_until - time.monotonic()
        return left > self.terms.seconds * _SIGNING_MARGIN

    def take(self, job_ids: Iterable[str]) -> set[str]:
        """Of `job_ids`, those no other thread of this process is signing, now this thread's."""
        with self._lock:
            taken = set(job_ids) - self._in_hand
            self._in_hand |= taken
        return taken

    def drop(self, job_ids: Iterable[str]) -> None:
        """Done with `job_ids` (published, closed, or given up)."""
        with self._lock:
            self._in_hand -= set(job_ids)

    def start(self) -> threading.Thread:
        """Renew in a daemon thread every third of the lease for as long as the process lives
        (a stopping worker still finishes the batch in hand under it)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._renew, name="casign-lease", daemon=True)
            self._thread.start()
        return self._thread

    def _renew(self) -> None:
        interval = self.terms.seconds / _RENEWALS_PER_LEASE
        while True:
            try:
                self.renew()
            except Retryable as exc:
                log.warning("could not renew this worker's lease (%s): %s", self.holder, exc)
            time.sleep(interval)
