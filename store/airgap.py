"""The air gap's records: batches the online relay exported, and answers the offline signer gave.

Online, a batch taken off the queue is written under `P:airgap:exported` (with its jobs in
`P:airgap:jobs` and its request bundle in `P:airgap:bundle:{n}`) in one transaction, before the
bundle file is written and before the broker is told the message is done: a crash loses nothing,
and a lost bundle is made again from these records. Importing answers removes them.
Offline, each batch's answers are kept under its id (`P:airgap:answers`), so a bundle signed
twice is answered from them, and each request bundle's number under `P:airgap:seen`.
The keys are in `store.keys`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.client import Pipeline

from store.boundary import optional_text, text, translated
from store.results import ResultsStore

# What `ResultsStore.publish` runs in its transaction after the batch's script (`then`).
Settle = Callable[[Pipeline], object]


@dataclass(frozen=True, slots=True)
class ExportedBatch:
    """A queue message the relay took: its id, what it asks (`sign` or `revoke`), the message."""

    batch_id: str
    task: str
    message: dict[str, object]
    job_ids: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "task": self.task,
                "message": self.message,
                "job_ids": list(self.job_ids),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> ExportedBatch:
        document = json.loads(raw)
        return cls(
            document["batch_id"],
            document["task"],
            document["message"],
            tuple(document.get("job_ids", ())),
        )


@dataclass(frozen=True, slots=True)
class RequestBundle:
    """One request bundle as the relay recorded it: made again byte for byte from this."""

    sequence: int
    bundle_id: str
    exported_at: int
    batch_ids: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "sequence": self.sequence,
                "bundle_id": self.bundle_id,
                "exported_at": self.exported_at,
                "batch_ids": list(self.batch_ids),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, raw: str) -> RequestBundle:
        document = json.loads(raw)
        return cls(
            int(document["sequence"]),
            str(document["bundle_id"]),
            int(document["exported_at"]),
            tuple(document["batch_ids"]),
        )


class AirgapRecords:
    """The air gap's keys in one store (online relay or offline signer)."""

    def __init__(self, store: ResultsStore) -> None:
        self._client = store.client
        self._keys = store.keys

    # -- online: export ------------------------------------------------------------------------

    @translated
    def known_batches(self, batch_ids: Iterable[str]) -> set[str]:
        """Which of `batch_ids` are exported and still unanswered."""
        ids = list(batch_ids)
        if not ids:
            return set()
        found = self._client.hmget(self._keys.airgap_exported, ids)
        return {batch_id for batch_id, raw in zip(ids, found, strict=True) if raw is not None}

    @translated
    def record_export(
        self, groups: Sequence[Sequence[ExportedBatch]], bundle_ids: Sequence[str], exported_at: int
    ) -> list[RequestBundle]:
        """Record every group of batches as the next request bundle, in one transaction.

        A batch already recorded (the broker delivered it again) is left out of its group.
        """
        keys = self._keys
        known = self.known_batches(batch.batch_id for group in groups for batch in group)
        groups = [[batch for batch in group if batch.batch_id not in known] for group in groups]
        groups = [group for group in groups if group]
        if not groups:
            return []
        with self._client.pipeline(transaction=True) as pipe:
            pipe.watch(keys.airgap_sequence)  # type: ignore[no-untyped-call]
            first = int(pipe.get(keys.airgap_sequence) or 0) + 1
            pipe.multi()
            bundles: list[RequestBundle] = []
            for offset, (group, bundle_id) in enumerate(zip(groups, bundle_ids, strict=False)):
                bundle = RequestBundle(
                    first + offset,
                    bundle_id,
                    exported_at,
                    tuple(batch.batch_id for batch in group),
                )
                bundles.append(bundle)
                pipe.set(keys.airgap_bundle(bundle.sequence), bundle.to_json())
                exported: dict[Any, Any] = {batch.batch_id: batch.to_json() for batch in group}
                pipe.hset(keys.airgap_exported, mapping=exported)
                jobs: dict[Any, Any] = {
                    job_id: batch.batch_id for batch in group for job_id in batch.job_ids
                }
                if jobs:
                    pipe.hset(keys.airgap_jobs, mapping=jobs)
            pipe.set(keys.airgap_sequence, first + len(bundles) - 1)
            pipe.execute()
        return bundles

    @translated
    def request_bundle(self, sequence: int) -> RequestBundle | None:
        raw = self._client.get(self._keys.airgap_bundle(sequence))
        return None if raw is None else RequestBundle.from_json(text(raw))

    @translated
    def last_sequence(self) -> int:
        return int(self._client.get(self._keys.airgap_sequence) or 0)

    @translated
    def exported(self, batch_ids: Iterable[str]) -> list[ExportedBatch]:
        """The batches among `batch_ids` still exported and unanswered, in that order."""
        ids = list(batch_ids)
        if not ids:
            return []
        found = self._client.hmget(self._keys.airgap_exported, ids)
        return [ExportedBatch.from_json(text(raw)) for raw in found if raw is not None]

    @translated
    def exported_jobs(self, job_ids: Iterable[str]) -> dict[str, str]:
        """job id -> batch id of the jobs among `job_ids` exported and not yet answered."""
        ids = list(job_ids)
        if not ids:
            return {}
        found = self._client.hmget(self._keys.airgap_jobs, ids)
        return {
            job_id: text(batch)
            for job_id, batch in zip(ids, found, strict=True)
            if batch is not None
        }

    @translated
    def count_unanswered(self) -> int:
        return int(self._client.hlen(self._keys.airgap_exported))

    # -- online: import ------------------------------------------------------------------------

    @translated
    def imported(self, bundle_id: str) -> bool:
        return bool(self._client.sismember(self._keys.airgap_imported, bundle_id))

    def settling(self, batch: ExportedBatch) -> Settle:
        """What takes `batch` out of the exported records (answered), queued on a transaction:
        given as `then` to `ResultsStore.publish`, so it is done with the batch's answers."""

        def settle(pipe: Pipeline) -> object:
            pipe.hdel(self._keys.airgap_exported, batch.batch_id)
            if batch.job_ids:
                pipe.hdel(self._keys.airgap_jobs, *batch.job_ids)
            return pipe

        return settle

    @translated
    def mark_imported(self, bundle_id: str) -> None:
        self._client.sadd(self._keys.airgap_imported, bundle_id)

    # -- offline: sign -------------------------------------------------------------------------

    @translated
    def seen_bundles(self) -> dict[int, str]:
        """Request bundle number -> bundle id of every bundle this signer has answered."""
        raw = self._client.hgetall(self._keys.airgap_seen)
        return {int(text(number)): text(bundle_id) for number, bundle_id in raw.items()}

    @translated
    def mark_seen(self, sequence: int, bundle_id: str) -> None:
        self._client.hset(self._keys.airgap_seen, str(sequence), bundle_id)

    @translated
    def answers(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """batch id -> the answers JSON kept for it, for the batches answered before."""
        ids = list(batch_ids)
        if not ids:
            return {}
        found = self._client.hmget(self._keys.airgap_answers, ids)
        return {
            batch_id: text(raw) for batch_id, raw in zip(ids, found, strict=True) if raw is not None
        }

    @translated
    def keep_answers(
        self, batch_id: str, answers_json: str, envelope: tuple[str, str] | None
    ) -> None:
        """Keep a batch's answers, and mark its sealed message (producer, nonce) done, together."""
        with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self._keys.airgap_answers, batch_id, answers_json)
            if envelope is not None:
                pipe.set(self._keys.envelope(*envelope), "1")
            pipe.execute()

    @translated
    def audit_length(self) -> int:
        """How many entries the audit log holds (the lines a batch added are read after it)."""
        return int(self._client.llen(self._keys.audit))

    @translated
    def audit_lines_from(self, start: int) -> list[str]:
        """The audit lines (JSON, without their chain hash) from entry `start` on."""
        raw = self._client.lrange(self._keys.audit, start, -1)
        return [text(entry).partition(" ")[2] for entry in raw]

    @translated
    def certificates(self, serials: Iterable[str]) -> list[str | None]:
        """The certificate PEM of each serial (hex as stored), None where there is none."""
        serials = list(serials)
        if not serials:
            return []
        return [optional_text(pem) for pem in self._client.hmget(self._keys.certs, serials)]

    @translated
    def index_lines(self, serials: Iterable[str]) -> list[str | None]:
        """The index line of each serial (hex as stored), None where there is none."""
        serials = list(serials)
        if not serials:
            return []
        found = self._client.hmget(self._keys.index, serials)
        return [optional_text(line) for line in found]
