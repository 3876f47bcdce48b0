"""This signing process's lease: an id, renewed by a thread while the process lives.

Every job the process reserves names it as holder (`store.leases`); another process takes such
a job over only once the lease has expired, so a worker that starts (and recovers) while this
one signs a long batch, or that is handed the same batch again by the broker, leaves it alone.
The process signs only while it knows its lease holds: it counts from the moment it sent its
last successful renewal, so its estimate ends before Redis's does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from functools import cache
from pathlib import Path

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
    """A lease holder's id: `HOST:PID:START:NONCE:PLACE`, START the process's start time (clock
    ticks since boot) telling it from a later process with the same pid, PLACE its kernel and
    pid namespace."""
    pid = os.getpid()
    start = _start_ticks(pid) or "0"
    return f"{socket.gethostname()}:{pid}:{start}:{secrets.token_hex(4)}:{_place()}"


def gone(holder: str) -> bool:
    """True when `holder` is a process of this kernel and pid namespace that no longer runs (or
    is a zombie). A holder elsewhere is never judged here: only its lease's expiry tells."""
    try:
        _, pid, start, _, place = holder.rsplit(":", 4)
        number = int(pid)
    except ValueError:
        return False
    if place != _place():
        return False
    try:
        fields = Path(f"/proc/{number}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return fields[0] == "Z" or fields[19] != start  # state, starttime (proc(5))


def _start_ticks(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


@cache
def _place() -> str:
    """This kernel's boot id and this pid namespace, hashed: where a pid means one process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return secrets.token_hex(4)  # no /proc: never judge another process from here
    return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:12]


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

    def end_gone_neighbours(self) -> int:
        """End the leases of processes of this host that died (a pool process killed, a worker
        killed and started again), so their jobs are taken at once, not after their lease."""
        ended = 0
        for holder in self.store.leases.holders():
            if holder != self.holder and gone(holder) and self.store.leases.end(holder):
                log.warning("the lease of %s ended: that process is gone", holder)
                ended += 1
        return ended

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
