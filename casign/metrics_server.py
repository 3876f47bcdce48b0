"""`casign metrics`: the store's figures as a Prometheus scrape target, served beside the signer.

The signer opens no port: it adds its counts to the store (`worker/figures.py`), and this
process, which needs only read rights, turns one reading of the store into the exposition
format on each scrape. Each OCSP responder writes its own figures the same way
(`ocsp/figures.py`), and so does each EST server (`est/figures.py`); they are served here
labelled with its name (`responder`, host:port; `server`, [PRODUCER@]host:port).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from casign.figures import Reading
from store.metrics import Labels

HELP = {
    "casign_issued": "Certificates issued, by profile and key backend.",
    "casign_refused": "Jobs refused, by refusal code.",
    "casign_failed": "Jobs that failed after their reservation (closed as failed).",
    "casign_recovered": "Jobs a worker recovered (reserved before a crash, then issued).",
    "casign_retries": "Batches waited out and tried again, by cause (store or token).",
    "casign_batch_jobs": "Jobs per batch a signer took.",
    "casign_step_seconds": "Seconds one job spent in each issuance step.",
}
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


class StoreCollector(Collector):
    """A Prometheus collector over `read`: one reading of the store per scrape."""

    def __init__(self, read: Callable[[], Reading]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        reading = self._read()
        counters: dict[str, dict[Labels, float]] = defaultdict(dict)
        histograms: dict[str, dict[Labels, dict[str, float]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        buckets: dict[str, dict[Labels, list[tuple[str, float]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for sample, value in reading.samples.items():
            if sample.name.endswith("_total"):
                counters[sample.name.removesuffix("_total")][sample.labels] = value
                continue
            for part in _HISTOGRAM_PARTS:
                if sample.name.endswith(part):
                    base = sample.name.removesuffix(part)
                    if part == "_bucket":
                        labels = dict(sample.labels)
                        le = labels.pop("le", "+Inf")
                        key = tuple(sorted(labels.items()))
                        buckets[base][key].append((le, value))
                    else:
                        histograms[base][sample.labels][part] = value
                    break
        for name, counted in sorted(counters.items()):
            yield _counter(name, counted)
        for name, observed in sorted(histograms.items()):
            yield _histogram(name, observed, buckets[name])
        yield from _gauges(reading)
        yield from _ocsp_families(reading)
        yield from _est_families(reading)


def _counter(name: str, series: dict[Labels, float]) -> CounterMetricFamily:
    label_names = sorted({label for labels in series for label, _ in labels})
    family = CounterMetricFamily(name, HELP.get(name, name), labels=label_names)
    for labels, value in sorted(series.items()):
        values = dict(labels)
        family.add_metric([values.get(label, "") for label in label_names], value)
    return family


def _histogram(
    name: str,
    series: dict[Labels, dict[str, float]],
    buckets: dict[Labels, list[tuple[str, float]]],
) -> HistogramMetricFamily:
    label_names = sorted({label for labels in series for label, _ in labels})
    family = HistogramMetricFamily(name, HELP.get(name, name), labels=label_names)
    for labels, parts in sorted(series.items()):
        values = dict(labels)
        ordered = sorted(buckets.get(labels, []), key=lambda bucket: float(bucket[0]))
        family.add_metric(
            [values.get(label, "") for label in label_names],
            buckets=ordered or [("+Inf", parts.get("_count", 0.0))],
            sum_value=parts.get("_sum", 0.0),
        )
    return family


def _gauges(reading: Reading) -> Iterator[GaugeMetricFamily]:
    gauges = (
        ("casign_queue_depth", "Batches waiting in the signing queue.", reading.queue_depth),
        (
            "casign_oldest_waiting_seconds",
            "Age of the batch next to be taken (from its seal).",
            reading.oldest_waiting_seconds,
        ),
        (
            "casign_workers_seen",
            "Workers that took a batch or started in the last minute.",
            reading.workers_seen,
        ),
        (
            "casign_crl_age_seconds",
            "Seconds since the newest CRL's thisUpdate.",
            reading.crl_age_seconds,
        ),
        (
            "casign_intermediate_days_left",
            "Days until the intermediate CA certificate expires.",
            reading.intermediate_days_left,
        ),
        (
            "casign_store_memory_used_bytes",
            "Memory the store's Redis uses.",
            reading.memory_used_bytes,
        ),
        (
            "casign_store_memory_max_bytes",
            "The store's Redis maxmemory (absent: no limit).",
            reading.memory_max_bytes,
        ),
    )
    for name, documentation, value in gauges:
        if value is not None:
            yield GaugeMetricFamily(name, documentation, value=value)


def _ocsp_families(reading: Reading) -> Iterator[Metric]:
    """Each OCSP responder's cache and counts, labelled `responder`; nothing without one."""
    responders = sorted(reading.ocsp_responders.items())
    if not responders:
        return
    by_responder = ["responder"]
    age = GaugeMetricFamily(
        "casign_ocsp_cache_age_seconds",
        "Seconds since the oldest answer an OCSP responder holds was produced (its thisUpdate).",
        labels=by_responder,
    )
    held = GaugeMetricFamily(
        "casign_ocsp_cache_answers", "Signed answers an OCSP responder holds.", labels=by_responder
    )
    size = GaugeMetricFamily(
        "casign_ocsp_cache_bytes",
        "Bytes an OCSP responder's held answers count against its --cache-mb.",
        labels=by_responder,
    )
    answers = CounterMetricFamily(
        "casign_ocsp_answers",
        "OCSP answers sent, by source: cache (a pre-signed answer) or signed (for the request).",
        labels=["responder", "source"],
    )
    renewals = CounterMetricFamily(
        "casign_ocsp_renewals",
        "Held OCSP answers signed again, by cause: due (renewal time) or changed (index line).",
        labels=["responder", "cause"],
    )
    for name, figures in responders:
        oldest = figures.cache_age(reading.at)
        if oldest is not None:
            age.add_metric([name], oldest)
        held.add_metric([name], figures.cache_answers)
        size.add_metric([name], figures.cache_bytes)
        answers.add_metric([name, "cache"], figures.from_cache)
        answers.add_metric([name, "signed"], figures.signed)
        renewals.add_metric([name, "due"], figures.renewed_due)
        renewals.add_metric([name, "changed"], figures.renewed_changed)
    yield from (age, held, size, answers, renewals)


def _est_families(reading: Reading) -> Iterator[Metric]:
    """Each EST server's answers, refusals and queue messages, labelled `server`; nothing
    without one."""
    servers = sorted(reading.est_servers.items())
    if not servers:
        return
    requests = CounterMetricFamily(
        "casign_est_requests",
        "EST requests answered, by operation and HTTP status.",
        labels=["server", "operation", "status"],
    )
    refused = CounterMetricFamily(
        "casign_est_refused",
        "EST requests refused, by refusal code (the EST server's own and the signer's).",
        labels=["server", "code"],
    )
    pending = CounterMetricFamily(
        "casign_est_pending",
        "EST enrollments answered 202 Accepted (still signing; the client asks again).",
        labels=["server"],
    )
    queued = CounterMetricFamily(
        "casign_est_enrollments_queued",
        "Enrollments an EST server sent to the signing queue.",
        labels=["server"],
    )
    messages = CounterMetricFamily(
        "casign_est_messages_sent",
        "Queue messages an EST server sent (enrollments queued / messages: the batch size).",
        labels=["server"],
    )
    for name, figures in servers:
        for (operation, status), count in sorted(figures.requests.items()):
            requests.add_metric([name, operation, str(status)], count)
        for code, count in sorted(figures.refused.items()):
            refused.add_metric([name, code], count)
        pending.add_metric([name], figures.pending)
        queued.add_metric([name], figures.enrollments_queued)
        messages.add_metric([name], figures.messages_sent)
    yield from (requests, refused, pending, queued, messages)


def exposition(read: Callable[[], Reading]) -> bytes:
    """One scrape's body in Prometheus's text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(read))
    return generate_latest(registry)


def serve(read: Callable[[], Reading], host: str, port: int) -> None:
    """Serve `/metrics` on host:port until interrupted (aiohttp, as the OCSP and EST servers)."""

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, exposition, read)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    web.run_app(app, host=host, port=port, print=None, handle_signals=True)
