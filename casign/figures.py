"""One reading of a CA's figures: what the signers added up in the store, and what is measured
at the moment of reading (queue depth, the oldest waiting batch, CRL age, days left to the
intermediate, workers seen, Redis memory), and each running OCSP responder's and EST server's
latest figures. `casign metrics` serves it to Prometheus and `casign top` shows it; neither
needs more than a producer's read rights (the OCSP responders' and EST servers' figures are
then left out).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cryptography import x509

from casign.queue_view import QueueView
from core.errors import SigningError
from est.figures import EstFigures, figures_by_server
from ocsp.figures import ResponderFigures, figures_by_responder
from store.metrics import Sample
from store.results import ResultsStore

T = TypeVar("T")
WORKER_SEEN_SECONDS = 60.0


@dataclass(frozen=True)
class Reading:
    """The figures at one moment; a gauge is None when it could not be read."""

    at: float
    samples: dict[Sample, float]
    queue_depth: int | None = None
    oldest_waiting_seconds: float | None = None
    workers_seen: int | None = None
    crl_age_seconds: float | None = None
    intermediate_days_left: float | None = None
    memory_used_bytes: int | None = None
    memory_max_bytes: int | None = None
    ocsp_responders: dict[str, ResponderFigures] = field(default_factory=dict)  # by host:port
    est_servers: dict[str, EstFigures] = field(default_factory=dict)  # by [PRODUCER@]host:port

    def total(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for sample, value in self.samples.items()
            if sample.name == name and wanted <= set(sample.labels)
        )

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """`name`'s samples summed per value of `label`."""
        sums: dict[str, float] = defaultdict(float)
        for sample, value in self.samples.items():
            if sample.name == name:
                sums[dict(sample.labels).get(label, "")] += value
        return dict(sums)

    def step_means(self) -> dict[str, float]:
        """Mean seconds per job in each issuance step, since the signers started counting."""
        sums = self.by_label("casign_step_seconds_sum", "step")
        counts = self.by_label("casign_step_seconds_count", "step")
        return {step: sums[step] / counts[step] for step in sums if counts.get(step)}


def read_figures(store: ResultsStore, queues: Sequence[QueueView] = ()) -> Reading:
    """Everything `casign metrics` and `casign top` show, read once; `queues` are the CA's
    queue and each listed producer's own (`core.queue.consumed_queues`)."""
    now = time.time()
    samples = store.metrics.totals()
    heads = [queue.head() for queue in queues]
    depths = [head.depth for head in heads if head.depth is not None]
    depth = sum(depths) if depths else None
    sealed = [head.next_sealed_at for head in heads if head.next_sealed_at is not None]
    oldest = max(now - min(sealed), 0.0) if sealed else None
    beats = _optional(store.workers_last_active) or {}
    made = _optional(store.crls.latest_this_update)  # the PEM of a large CRL is never parsed
    crl_age = now - made.timestamp() if made is not None else None
    memory = _optional(store.memory)
    responders = _optional(store.ocsp_figures.read) or {}
    est_servers = _optional(store.est_figures.read) or {}
    return Reading(
        at=now,
        samples=samples,
        queue_depth=depth,
        oldest_waiting_seconds=oldest,
        workers_seen=sum(1 for seen in beats.values() if now - seen <= WORKER_SEEN_SECONDS),
        crl_age_seconds=crl_age,
        intermediate_days_left=_days_left(_optional(store.chain), now),
        memory_used_bytes=memory.used_bytes if memory is not None else None,
        memory_max_bytes=memory.max_bytes if memory is not None else None,
        ocsp_responders=figures_by_responder(responders),
        est_servers=figures_by_server(est_servers),
    )


def _optional(read: Callable[[], T]) -> T | None:
    """What `read` returns, or None when this role may not read it (a producer reads no CRL and
    runs no INFO) or the store cannot answer now: a figure is then left out, not the reading."""
    try:
        return read()
    except (SigningError, OSError):
        return None


def _days_left(chain_pem: str | None, now: float) -> float | None:
    """Days until the first certificate of the chain (the intermediate) expires."""
    if not chain_pem:
        return None
    try:
        intermediate = x509.load_pem_x509_certificates(chain_pem.encode("ascii"))[0]
    except (ValueError, IndexError):
        return None
    return (intermediate.not_valid_after_utc.timestamp() - now) / 86400
