"""What a signer counts as it works, added to the store's figures (`store.metrics`) once a second.

The counts are kept in the process and written as deltas by a thread of its own, so the hot
path costs a few dictionary updates per batch and a `perf_counter` call per step, and the
store one round trip a second. Nothing
is served from the signer: `casign metrics` reads the store (see README, "Metrics").
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from store.metrics import MetricsLedger, Sample

log = logging.getLogger("casign.worker")

FLUSH_SECONDS = 1.0
# Seconds one job spends in one issuance step: 20 µs (a dictionary look-up) to 1 s (a slow HSM).
STEP_BUCKETS = (
    0.00002,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)

ISSUED = "casign_issued_total"
REFUSED = "casign_refused_total"
FAILED = "casign_failed_total"
RECOVERED = "casign_recovered_total"
RETRIES = "casign_retries_total"
BATCH_JOBS = "casign_batch_jobs"
STEP_SECONDS = "casign_step_seconds"


class SignerFigures:
    """One process's counts since its last write to the store."""

    def __init__(self, ledger: MetricsLedger, backend: str) -> None:
        self._ledger = ledger
        self.backend = backend
        self._deltas: defaultdict[Sample, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._failing = False

    def count(self, name: str, amount: float = 1, **labels: str) -> None:
        with self._lock:
            self._deltas[Sample.of(name, **labels)] += amount

    def issued(self, profiles: Iterable[str]) -> None:
        with self._lock:
            for profile, amount in Counter(profiles).items():
                self._deltas[Sample.of(ISSUED, profile=profile, backend=self.backend)] += amount

    def refused(self, codes: Iterable[str]) -> None:
        with self._lock:
            for code, amount in Counter(codes).items():
                self._deltas[Sample.of(REFUSED, code=code)] += amount

    def observe(
        self, name: str, value: float, buckets: Sequence[float], weight: int = 1, **labels: str
    ) -> None:
        """`weight` observations of `value` in histogram `name`."""
        if weight <= 0:
            return
        with self._lock:
            deltas = self._deltas
            above = bisect.bisect_left(buckets, value)
            for position, bound in enumerate(buckets):  # every bucket exists, even at zero
                counted = weight if position >= above else 0
                deltas[Sample.of(f"{name}_bucket", le=_bound(bound), **labels)] += counted
            deltas[Sample.of(f"{name}_bucket", le="+Inf", **labels)] += weight
            deltas[Sample.of(f"{name}_sum", **labels)] += value * weight
            deltas[Sample.of(f"{name}_count", **labels)] += weight

    def steps(self, laps: StepClock, jobs: int) -> None:
        """Each step's time over a batch of `jobs`, as that many observations of its mean."""
        for step, seconds in laps.laps:
            self.observe(STEP_SECONDS, seconds / max(jobs, 1), STEP_BUCKETS, jobs, step=step)

    def keep_written(self) -> None:
        """Make sure a thread of this process adds the counts to the store every second (a
        thread does not outlive a fork, so each pool process starts its own on first use)."""
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(
                target=self._write_every_second, name="casign-figures", daemon=True
            )
            self._writer.start()

    def write_now(self) -> None:
        """Add what was counted to the store; kept for the next write if the store fails."""
        with self._lock:
            deltas, self._deltas = self._deltas, defaultdict(float)
        if not deltas:
            return
        try:
            self._ledger.add(deltas)
        except Exception as exc:  # figures never stop signing; they are written later
            if not self._failing:  # once per outage, not once a second
                log.warning("could not write the signer's figures to the store: %s", exc)
            self._failing = True
            with self._lock:
                for sample, delta in deltas.items():
                    self._deltas[sample] += delta
        else:
            self._failing = False

    def _write_every_second(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.write_now()


class StepClock:
    """The time each issuance step took over one batch, lap by lap."""

    __slots__ = ("_last", "laps")

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps.append((step, now - self._last))
        self._last = now


def _bound(bound: float) -> str:
    return repr(float(bound))


def backend_name(key: object) -> str:
    """`pkcs11` or `file`: the key backend a signing key came from, for the metrics' label."""
    return "pkcs11" if "pkcs11" in type(key).__module__ else "file"
