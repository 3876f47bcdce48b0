"""How many jobs a signer takes in one go, so each round finishes well inside the broker's
visibility timeout.

A queue message may carry more jobs than the signer can sign before the broker (Redis) takes
it for lost and hands it out again. The signer therefore works through a message in chunks:
reserve, sign, verify and publish each chunk before the next, each at most
`CASIGN_MAX_CHUNK_JOBS` jobs (500 by default) and at most what the rate this process measured
signs in a tenth of the visibility timeout. A message handed out again meanwhile finds its
published chunks answered in the store and the chunk in hand under this process's lease, so
it is never signed twice; the chunks not begun are shared between the two.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("casign.issuance")

MAX_CHUNK_ENV = "CASIGN_MAX_CHUNK_JOBS"
DEFAULT_MAX_CHUNK_JOBS = 500
MIN_CHUNK_JOBS = 10
# Before anything was measured: small enough for a slow HSM (1 signature a second) to finish
# inside the default 300 s visibility timeout.
FIRST_CHUNK_JOBS = 100
# A chunk takes at most this share of the visibility timeout; a message more than half of it.
CHUNK_SHARE = 0.1
_MESSAGE_SHARE = 0.5
_SMOOTHING = 0.3  # weight of the newest measurement in the moving average


def max_chunk_jobs() -> int:
    """CASIGN_MAX_CHUNK_JOBS (500 by default; at least 1)."""
    return max(1, int(os.environ.get(MAX_CHUNK_ENV) or DEFAULT_MAX_CHUNK_JOBS))


class SigningPace:
    """The jobs per second this process issues, and the chunk size that follows from it."""

    def __init__(self, visibility_timeout: float, most: int | None = None) -> None:
        self.visibility_timeout = visibility_timeout
        self.most = max_chunk_jobs() if most is None else most
        self.rate: float | None = None  # jobs per second, a moving average

    def note(self, jobs: int, seconds: float) -> None:
        """Record that `jobs` went through every step in `seconds`."""
        if jobs <= 0 or seconds <= 0:
            return
        measured = jobs / seconds
        self.rate = (
            measured if self.rate is None else _SMOOTHING * measured + (1 - _SMOOTHING) * self.rate
        )

    def chunk_jobs(self) -> int:
        """How many jobs to take in the next chunk."""
        if self.rate is None:
            return min(self.most, FIRST_CHUNK_JOBS)
        fits = int(self.rate * self.visibility_timeout * CHUNK_SHARE)
        return max(min(self.most, MIN_CHUNK_JOBS), min(self.most, fits))

    def warn_if_long(self, jobs: int) -> None:
        """Log once per message that would outlast half the visibility timeout."""
        if self.rate is None:
            return
        seconds = jobs / self.rate
        if seconds > self.visibility_timeout * _MESSAGE_SHARE:
            log.warning(
                "a message of %d job(s) takes about %.0f s at %.0f jobs/s, more than half the "
                "broker's visibility timeout (%g s): the broker may hand it out again meanwhile "
                "(leases keep any job from being signed twice); send smaller batches",
                jobs,
                seconds,
                self.rate,
                self.visibility_timeout,
            )
