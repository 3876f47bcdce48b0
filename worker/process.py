"""The signer of this worker process: CA key, store and producer rights, opened after fork."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from core.queue import SIGN_QUEUE
from store.results import ResultsStore
from worker.access import AccessPolicy
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner

log = logging.getLogger("casign.worker")

# Set by `casign worker` before the pool forks; read by every pool process.
ENV_CA_DIR = "CASIGN_CA_DIR"
ENV_STORE_URL = "CASIGN_STORE_URL"
ENV_STORE_PREFIX = "CASIGN_STORE_PREFIX"
ENV_KEY_URI = "CASIGN_KEY_URI"
ENV_QUEUE = "CASIGN_QUEUE"
RECOVERY_LOCK_SECONDS = 60

_signer: BatchSigner | None = None
_signer_pid: int | None = None


def signer() -> BatchSigner:
    """This process's signer, opened on first use after fork (keys are never shared)."""
    global _signer, _signer_pid
    if _signer is None or _signer_pid != os.getpid():
        authority = load_authority(Path(os.environ[ENV_CA_DIR]), os.environ.get(ENV_KEY_URI))
        store = ResultsStore.from_url(
            os.environ[ENV_STORE_URL], os.environ.get(ENV_STORE_PREFIX, "casign")
        )
        store.set_chain(authority.chain_pem)
        folder = CAFolder(Path(os.environ[ENV_CA_DIR]))
        access = AccessPolicy.load(folder.producers_path)
        if access is None:
            log.warning(
                "%s is absent: this signer accepts batches from any producer", folder.producers_path
            )
        _signer, _signer_pid = BatchSigner(authority, store, access), os.getpid()
    _signer.store.note_worker_active(os.environ.get(ENV_QUEUE, SIGN_QUEUE))  # read by `status`
    return _signer


def recover_once(batch_signer: BatchSigner) -> None:
    """Publish jobs a crashed worker reserved but never published; one process at a time."""
    store = batch_signer.store
    lock = store.key("recovery-lock")
    if not store.client.set(lock, str(os.getpid()), nx=True, ex=RECOVERY_LOCK_SECONDS):
        return
    try:
        recovered = batch_signer.recover_pending()
        if recovered:
            log.warning("recovered %d job(s) reserved before a crash", len(recovered))
    finally:
        store.client.delete(lock)
