"""The signers' figures, summed over every worker in `P:metrics`, for `casign metrics` and `top`.

Each field of the hash is one Prometheus sample: its name and labels as compact JSON
(`["casign_issued_total",{"profile":"server_cert"}]`), its value a float that workers only ever
add to (HINCRBYFLOAT). Histograms are kept as Prometheus keeps them: cumulative `_bucket`
samples with an `le` label, and `_sum` and `_count`. A worker adds what it counted since its
last write, at most once a second, so the figures cost one pipelined round trip per second.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

import redis

from store.boundary import text, translated
from store.keys import KeySpace

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One sample: a metric's sample name (with its `_total`, `_bucket`, ... suffix) and labels."""

    name: str
    labels: Labels = ()

    @classmethod
    def of(cls, name: str, **labels: str) -> Sample:
        return cls(name, tuple(sorted(labels.items())))

    @property
    def field(self) -> str:
        return json.dumps([self.name, dict(self.labels)], separators=(",", ":"))

    @classmethod
    def from_field(cls, field: str) -> Sample | None:
        """The sample a hash field names; None for a field that is not one (never raises)."""
        try:
            name, labels = json.loads(field)
        except (ValueError, TypeError):
            return None
        if not isinstance(name, str) or not isinstance(labels, dict):
            return None
        return cls(name, tuple(sorted((str(k), str(v)) for k, v in labels.items())))


class MetricsLedger:
    """`P:metrics`: every signer's counts, added up."""

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._client = client
        self._keys = keys

    @translated
    def add(self, deltas: Mapping[Sample, float]) -> None:
        """Add each delta to its sample, in one round trip."""
        if not deltas:
            return
        pipeline = self._client.pipeline(transaction=False)
        for sample, delta in deltas.items():
            pipeline.hincrbyfloat(self._keys.metrics, sample.field, delta)
        pipeline.execute()

    @translated
    def totals(self) -> dict[Sample, float]:
        """Every sample's value; fields that are not samples are skipped."""
        totals: dict[Sample, float] = {}
        for field, value in self._client.hgetall(self._keys.metrics).items():
            sample = Sample.from_field(text(field))
            if sample is not None:
                totals[sample] = float(text(value))
        return totals
