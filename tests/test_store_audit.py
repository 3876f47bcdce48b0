"""One audit chain written by two scripts: publishes and revokes interleaved stay verifiable."""

from __future__ import annotations

import json
import queue
import threading

from core.audit import audit_line, verify_chain
from core.index import format_serial
from store.jobs import Issued, Refusal
from store.results import ResultsStore
from store.revocations import RevocationStore

BATCHES = 12
PER_BATCH = 20
REVOKED_PER_BATCH = 3


def issued(serial: int, job_id: str) -> Issued:
    hex_serial = format_serial(serial)
    return Issued(
        job_id,
        "f" * 64,
        hex_serial,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        f"V\t300101000000Z\t\t{hex_serial}\tunknown\t/CN={job_id}",
        audit_line("issued", job_id=job_id, serial=hex_serial, profile="server_cert"),
    )


def test_the_chain_holds_through_interleaved_publishes_and_revokes(
    redis_url: str, store: ResultsStore
) -> None:
    """A publisher and a revoker, each with its own client, as two worker processes would be."""
    published: queue.Queue[list[str] | None] = queue.Queue()
    revoked_some = threading.Semaphore(0)
    failures: list[BaseException] = []

    def publish() -> None:
        own = ResultsStore.from_url(redis_url, store.prefix)
        try:
            for batch in range(BATCHES):
                items = [
                    issued(0x7E570000 + batch * PER_BATCH + n, f"chain-{batch}-{n}")
                    for n in range(PER_BATCH)
                ]
                refusal = Refusal(f"chain-{batch}-refused", "e" * 64, "csr.malformed", "bad")
                lines = [audit_line("refused", job_id=refusal.job_id, reason=refusal.code)]
                own.publish(items, [refusal], [], f"chain-{batch % 3}", lines)
                published.put([item.serial for item in items])
                # The next batch waits for a revocation of this one: the two scripts alternate.
                assert revoked_some.acquire(timeout=30)
        except BaseException as exc:
            failures.append(exc)
        finally:
            published.put(None)
            own.close()

    def revoke() -> None:
        own = ResultsStore.from_url(redis_url, store.prefix)
        revocations = RevocationStore(own)
        try:
            while (serials := published.get(timeout=30)) is not None:
                for serial in serials[:REVOKED_PER_BATCH]:
                    revocations.revoke(serial, "keyCompromise", requester="ops")
                revoked_some.release()
        except BaseException as exc:
            failures.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=publish), threading.Thread(target=revoke)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []

    entries = list(store.audit_entries())
    check = verify_chain(entries, store.audit_head())
    assert check.ok, check
    events = [json.loads(entry.partition(" ")[2])["event"] for entry in entries]
    assert events.count("issued") == BATCHES * PER_BATCH
    assert events.count("refused") == BATCHES
    assert events.count("revoked") == BATCHES * REVOKED_PER_BATCH
    # Interleaved: revocations sit between publishes, not all at the end.
    assert events.index("revoked") < len(events) - BATCHES * REVOKED_PER_BATCH
    assert RevocationStore(store).count_revoked() == BATCHES * REVOKED_PER_BATCH


def test_altering_a_revocation_line_breaks_the_chain_after_it(store: ResultsStore) -> None:
    """The revoke script chains its line like publish does: a changed one is found."""
    store.publish([issued(0xA0D17, "altered-1"), issued(0xA0D18, "altered-2")], [], [], None)
    RevocationStore(store).revoke(format_serial(0xA0D17), "superseded")
    store.publish([issued(0xA0D19, "altered-3")], [], [], None)
    assert verify_chain(store.audit_entries(), store.audit_head()).ok

    entries = list(store.audit_entries())
    recorded, _, line = entries[2].partition(" ")
    assert json.loads(line)["event"] == "revoked"
    store.client.lset(store.key("audit"), 2, recorded + " " + line.replace("superseded", "x"))
    check = verify_chain(store.audit_entries(), store.audit_head())
    assert check.first_bad == 3
