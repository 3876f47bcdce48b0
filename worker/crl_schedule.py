"""CRLs on the signer's own schedule, never on a queue message.

A producer can put any message on the signing queue, so the worker makes CRLs on no message
at all: in a worker run with `--beat`, each pool process keeps a `CRLSchedule` thread that asks
the store for this interval's turn (the `crl-schedule` lock, taken for the whole interval and
left to expire); the one that gets it makes, publishes and writes the CRL. Every `--beat` worker
of a store may run it: the store lets one CRL through per interval, the first at once when no
scheduled CRL was made within the last interval. The operator makes one any time: `casign crl`.
"""

from __future__ import annotations

import contextlib
import logging
import threading

from core.errors import SigningError
from store.revocations import RevocationStore
from worker.authority import SigningAuthority
from worker.cafolder import CAFolder
from worker.crl import (
    PublishedCRL,
    RevokedEntryCache,
    crl_days,
    make_crls,
    seed_crl_number,
    write_crl_files,
)
from worker.folder_sync import FolderBound, index_sync_enabled, log_report, sync_folder
from worker.process import SignerProcess

log = logging.getLogger("casign.crl")

# A fresh CRL every hour, long before the nextUpdate of the last one (BR 4.9.7: at most 10 days,
# and within 24 hours of a revocation).
CRL_INTERVAL_SECONDS = 3600
# How often each process asks whether the turn is free.
CHECK_SECONDS = 30.0
TURN_LOCK = "crl-schedule"


def refresh_crl(
    folder: CAFolder,
    authority: SigningAuthority,
    revocations: RevocationStore,
    cache: RevokedEntryCache | None = None,
) -> list[PublishedCRL]:
    """Make, publish and write the CRL (or each shard). The folder is brought in step first,
    so that what `openssl ca -revoke` marked is listed. (The OCSP delegate's certificate is
    renewed by every worker, `--beat` or not: worker.ocsp_renewal.)"""
    if index_sync_enabled(folder):
        try:
            report = sync_folder(folder, revocations.store)
        except (FolderBound, OSError) as exc:
            log.warning("%s is not kept in step with the store: %s", folder.index_path, exc)
        else:
            if report is not None:
                log_report(report)
    seed_crl_number(folder, revocations)
    published = make_crls(authority, revocations, crl_days(folder), cache=cache)
    try:
        write_crl_files(folder, published)
    except OSError as exc:  # a read-only CA folder: the store still has the CRL
        log.warning(
            "CRL %d published to the store, not written to disk: %s", published[0].number, exc
        )
    return published


class CRLSchedule(threading.Thread):
    """Makes the CRL whenever the store gives this process the turn, until the worker stops."""

    def __init__(
        self,
        process: SignerProcess,
        interval_seconds: int = CRL_INTERVAL_SECONDS,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        super().__init__(name="casign-crl-schedule", daemon=True)
        self.process = process
        self.interval_seconds = interval_seconds
        self.check_seconds = check_seconds

    def run(self) -> None:
        while True:
            self.make_if_due()
            if self.process.stop.wait(self.check_seconds):
                return

    def make_if_due(self) -> list[PublishedCRL] | None:
        """Make the CRL (each shard) if this process has the turn; the CRLs made, else None."""
        try:
            batch_signer = self.process.signer()
            turn = batch_signer.store.locks.acquire(TURN_LOCK, self.interval_seconds)
            if turn is None:
                return None
        except SigningError as exc:
            log.warning("the CRL schedule cannot reach the key or the store: %s", exc)
            return None
        try:
            published = refresh_crl(
                self.process.folder,
                batch_signer.authority,
                RevocationStore(batch_signer.store),
                self.process.crl_cache,
            )
        except SigningError as exc:
            log.error(
                "the scheduled CRL failed (tried again within %.0f s): %s", self.check_seconds, exc
            )
            with contextlib.suppress(SigningError):  # else the turn expires with its interval
                turn.release()
            return None
        log.info(
            "scheduled CRL %d: %d revoked", published[0].number, sum(p.entries for p in published)
        )
        return published
