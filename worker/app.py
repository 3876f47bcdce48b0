"""The Celery signer: registers signing tasks only, opens the key after the worker forks."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import random
import threading
import time

from celery import Celery, signals
from celery.apps.worker import Worker as CeleryWorker
from celery.platforms import EX_FAILURE
from kombu.utils.objects import cached_property
from pydantic import ValidationError

from core.errors import Retryable, SigningError
from core.messages import SignBatch, describe_validation_error
from core.queue import SIGN_BATCH_TASK, SIGN_QUEUE, celery_settings
from worker.issuance import BatchSigner
from worker.lifecycle_tasks import register_lifecycle_tasks
from worker.process import recover_once, signer

log = logging.getLogger("casign.worker")

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# How long a worker whose consumer Celery gave up on may take to shut down before it exits.
FAILED_SHUTDOWN_SECONDS = 10.0


def _sign_parsed(parsed: SignBatch) -> int:
    """Sign a validated batch; Retryable when the key or the store is unavailable now."""
    try:
        batch_signer = signer()
    except SigningError as exc:
        # The key or the store cannot be opened now (HSM gone, PIN changed): wait and retry.
        raise Retryable(str(exc)) from exc
    try:
        results = batch_signer.sign_batch(
            parsed.jobs, parsed.reply_to, parsed.producer, parsed.signature
        )
    except Retryable:
        raise
    except Exception as exc:
        log.exception("batch of %d job(s) failed", len(parsed.jobs))
        batch_signer.report_failure(parsed.jobs, parsed.reply_to, exc)
        return 0
    return len(results)


class ExitingWorker(CeleryWorker):
    """A Celery worker that ends when Celery gives up on it, even if its shutdown wedges.

    On a broker connection loss kombu's Redis transport can raise inside Celery's consumer
    ("Unrecoverable error"); the warm shutdown that follows can then hang on the broker, and a
    hung process is never restarted. Past FAILED_SHUTDOWN_SECONDS it exits with EX_FAILURE, so
    `casign worker` (or a service manager) starts a new one: its unacknowledged batches come
    back from the broker, and jobs reserved before signing are recovered.
    """

    def stop(self, in_sighandler: bool = False, exitcode: int | None = None) -> None:
        if exitcode == EX_FAILURE:
            deadline = threading.Timer(FAILED_SHUTDOWN_SECONDS, _exit_failed, args=(exitcode,))
            deadline.daemon = True
            deadline.start()
        super().stop(in_sighandler=in_sighandler, exitcode=exitcode)


def _exit_failed(exitcode: int) -> None:
    # No logging here: the wedged shutdown may hold a handler's lock.
    message = f"casign worker: not shut down within {FAILED_SHUTDOWN_SECONDS:.0f} s; exiting\n"
    with contextlib.suppress(OSError):
        os.write(2, message.encode())
    os._exit(exitcode)


class CasignCelery(Celery):
    @cached_property
    def Worker(self) -> type[CeleryWorker]:
        return self.subclass_with_self(ExitingWorker)


def create_app(broker_url: str, queue: str = SIGN_QUEUE) -> Celery:
    app = CasignCelery("casign", set_as_current=False)
    app.conf.update(celery_settings(broker_url, queue))

    @app.task(name=SIGN_BATCH_TASK, acks_late=True)
    def sign_batch(batch: object) -> int:
        """Sign one queue message's jobs; a malformed message is logged and dropped.

        A store or HSM outage is waited out here, with the message unacknowledged, rather than
        by Celery's retry, which has to publish a new message and so fails when the broker is
        the Redis that is down; if this worker dies meanwhile the message is delivered again.
        """
        try:
            parsed = SignBatch.model_validate(batch)
        except ValidationError as exc:
            log.error("refused a malformed batch message: %s", describe_validation_error(exc))
            return 0
        for attempt in itertools.count():
            try:
                return _sign_parsed(parsed)
            except Retryable as exc:
                delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2**attempt)
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)
                log.warning(
                    "batch of %d job(s) waits %.1f s and tries again: %s",
                    len(parsed.jobs),
                    delay,
                    exc,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    register_lifecycle_tasks(app)
    return app


@signals.worker_process_init.connect
def _open_key_after_fork(**_: object) -> None:
    # Celery may hand this process a batch before init returns, and a batch handed to a
    # process that dies in init is stranded; so init only opens the key, and the recovery
    # (which signs) runs beside the tasks.
    try:
        batch_signer = signer()
    except SigningError as exc:
        log.error("worker process cannot sign: %s", exc)
        return
    threading.Thread(
        target=_recover_in_background, args=(batch_signer,), name="casign-recovery", daemon=True
    ).start()


def _recover_in_background(batch_signer: BatchSigner) -> None:
    try:
        recover_once(batch_signer)
    except SigningError as exc:
        log.error("recovery of reserved jobs failed (a later worker start retries): %s", exc)
