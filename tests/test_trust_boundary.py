"""The trust boundary (issue 10): each attack on "producers only ask, the signer decides", as a test.

One section per part of the boundary, each with its own fixtures and helpers, against the real
Redis of the other tests (a fresh key prefix each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from amqp.exceptions import AccessRefused, NotFound
from celery import Celery
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from kombu import Connection

import producers.trust
from casign.cli import main as casign_main
from casign.supervise import stop_process_group
from core.audit import verify_chain
from core.auth import MessageKind, ca_identity, seal
from core.errors import ConfigurationError, RefusalCode, StoreUnavailable
from core.index import Status, format_serial
from core.keys import KeyType, write_private_key
from core.layout import folder_names
from core.messages import JobResult, RevokeRequest, SignRequest, parse_sign_request
from core.queue import CRL_TASK, SIGN_QUEUE, celery_settings, producer_queue
from est.figures import EstFigures, server_name
from keystore import load_signing_key, parse_key_uri
from producers import Producer
from producers.trust import ResultCheck, TrustAnchor
from store.acl import (
    KOMBU_BINDING_SETS,
    KOMBU_CONSUMER_KEYS,
    KOMBU_PRIORITY_SEPARATOR,
    KOMBU_PRIORITY_STEPS,
    MIN_REDIS_MAJOR,
    AclAdmin,
    KeyScope,
    Role,
    rabbitmq_permissions,
    reply_list_name,
    role_user,
)
from store.embedded import EmbeddedRedis, redis_server_binary, redis_server_version
from store.envelopes import EnvelopeLedger
from store.figures_board import host_port_name
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.cas import make_alice_ca
from tests.casign_cli import CASIGN, run_casign
from tests.csrs import job, make_csr
from tests.faults import OwnedRedis
from tests.ocsp_responder import running_responder
from tests.openssl_cli import openssl
from tests.softhsm_token import SOFTHSM_AVAILABLE, SOFTHSM_SKIP_REASON
from tests.workers import WorkerProcess, start_worker
from worker.access import AccessPolicy, AllowedProducer, ProducerPolicy
from worker.adopt import adopt_ca
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder, CAOptions, init_ca
from worker.crl_schedule import refresh_crl
from worker.issuance import BatchSigner
from worker.issuance.steps import (
    Reserved,
    admit,
    authenticate,
    build_tbs,
    fix_record,
    receive,
    reserve,
)
from worker.lifecycle_tasks import handle_revoke
from worker.ocsp_delegate import delegate_csr, delegate_profile, ensure_ocsp_certificate
from worker.profiles import ProfileSet

# --- records ----------------------------------------------------------------------------------
# A record read back from the store is trusted only with the signers' MAC over it; its profile is
# the CA's own (by name and hash), and recovery admits its request again before it signs.

RECORD_INVALID = "store.record_invalid"
PROFILE_CHANGED = "store.profile_changed"
RECORDS_PRODUCERS = ("hr-portal", "web-frontend")


def records_producers_toml(
    sources: dict[str, str],
    hr_profiles: tuple[str, ...] = ("usr_cert",),
    hr_names: tuple[str, ...] = ("*@example.com",),
    without: tuple[str, ...] = (),
) -> str:
    """producers.toml for the two producers of this section, hr-portal's rights as given."""
    tables = {
        "hr-portal": f"profiles = {json.dumps(list(hr_profiles))}\nnames = {json.dumps(list(hr_names))}",
        "web-frontend": 'profiles = ["server_cert"]',
    }
    return "\n".join(
        f"[producers.{name}]\nsecret = {json.dumps(sources[name])}\n{tables[name]}\n"
        for name in RECORDS_PRODUCERS
        if name not in without
    )


@dataclass
class RecordsSigner:
    """A signer that serves only hr-portal and web-frontend, over a store an attacker can write."""

    authority: SigningAuthority
    store: ResultsStore
    directory: Path
    secrets: dict[str, bytes]

    def sources(self) -> dict[str, str]:
        return {name: f"file:{self.directory / name}" for name in RECORDS_PRODUCERS}

    def access(self, **rights: Any) -> AccessPolicy:
        """The producers as producers.toml lists them now (`rights` as records_producers_toml)."""
        path = self.directory / f"producers-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(records_producers_toml(self.sources(), **rights), encoding="utf-8")
        policy = AccessPolicy.load(path, ca_identity(self.authority.intermediate), SIGN_QUEUE)
        assert policy is not None
        return policy

    def signer(self, access: AccessPolicy | None = None, **changes: Any) -> BatchSigner:
        authority = dataclasses.replace(self.authority, **changes) if changes else self.authority
        return BatchSigner(authority, self.store, access or self.access())

    def sealed(
        self,
        signer: BatchSigner,
        jobs: list[dict[str, object]],
        producer: str,
        reply_to: str | None,
    ) -> Any:
        assert signer.access is not None
        return seal(
            self.secrets[producer],
            MessageKind.SIGN,
            producer=producer,
            ca=signer.access.ca,
            queue=signer.access.queue,
            reply_to=reply_to,
            payload=jobs,
        )

    def submit(
        self,
        jobs: list[dict[str, object]],
        producer: str,
        reply_to: str | None = None,
        signer: BatchSigner | None = None,
    ) -> dict[str, JobResult]:
        """Seal `jobs` as `producer` and hand them to the signer, as its Celery task does."""
        signer = signer or self.signer()
        envelope = self.sealed(signer, jobs, producer, reply_to)
        return {r.job_id: r for r in signer.sign_batch(jobs, reply_to, envelope)}

    def reserve_only(
        self, jobs: list[dict[str, object]], producer: str, reply_to: str | None = None
    ) -> None:
        """Steps 1-5 for `jobs`: records stored, nothing signed (a worker that died right there)."""
        signer = self.signer()
        envelope = self.sealed(signer, jobs, producer, reply_to)
        now = datetime.now(UTC)
        batch = authenticate(
            jobs, reply_to, envelope, signer.access, EnvelopeLedger(self.store), now
        )
        authority = self.authority
        built = [
            build_tbs(
                fix_record(
                    admit(receive(raw), batch, authority.profiles, authority.common_names),
                    authority,
                    batch,
                ),
                authority,
            )
            for raw in jobs
        ]
        outcomes = reserve(built, self.store, authority)
        assert all(isinstance(outcome, Reserved) for outcome in outcomes)

    def stored_record(self, job_id: str) -> str:
        record = self.store.client.hget(self.store.job_key(job_id), "record")
        assert isinstance(record, str)
        return record

    def plant(
        self, job_id: str, fingerprint: str, serial: int, record: str, pending: bool = True
    ) -> None:
        """What a writer with full access to the store does: a reserved job (pending)."""
        client = self.store.client
        client.hset(
            self.store.job_key(job_id),
            mapping={
                "state": "reserved",
                "fingerprint": fingerprint,
                "serial": format_serial(serial),
                "record": record,
            },
        )
        if pending:
            client.sadd(self.store.key("pending"), job_id)

    def audit_of(self, job_id: str) -> list[dict[str, Any]]:
        entries = list(self.store.audit_entries())
        assert verify_chain(entries, self.store.audit_head()).ok
        lines = [json.loads(entry.partition(" ")[2]) for entry in entries]
        return [line for line in lines if line.get("job_id") == job_id]


def make_records_signer(
    authority: SigningAuthority, store: ResultsStore, directory: Path
) -> RecordsSigner:
    """The two producers' secrets written (0400) in `directory`, and a signer serving them."""
    directory.mkdir()
    values = {name: secrets.token_hex(32) for name in RECORDS_PRODUCERS}
    for name, value in values.items():
        descriptor = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(value + "\n")
    return RecordsSigner(
        authority, store, directory, {name: value.encode() for name, value in values.items()}
    )


@pytest.fixture
def records(authority: SigningAuthority, store: ResultsStore, tmp_path: Path) -> RecordsSigner:
    return make_records_signer(authority, store, tmp_path / "records-secrets")


@pytest.fixture
def records_ca(tmp_path: Path) -> CAFolder:
    """A CA folder of the test's own (P-256), for what reads the folder: the CLI, a worker."""
    return init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.P256))


def records_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def escalating_profile(authority: SigningAuthority) -> dict[str, Any]:
    """A profile no producer is offered: OCSP, code and server signing, any name, 16 years."""
    profile = authority.profiles.get("server_cert")
    assert profile is not None
    return profile.model_dump(mode="json") | {
        "extended_key_usage": ["OCSPSigning", "codeSigning", "serverAuth"],
        "ocsp_no_check": True,
        "max_days": 6000,
        "common_name": "any",
        "san_types": ["DNS", "IP", "email", "URI"],
        "wildcards": True,
    }


def forged_record(
    authority: SigningAuthority, job_id: str, fingerprint: str, serial: int, csr_pem: str
) -> str:
    """A record as an attacker writes it to be signed: any names, usages and validity."""
    return json.dumps(
        {
            "job_id": job_id,
            "fingerprint": fingerprint,
            "serial": format_serial(serial),
            "not_before": int(datetime(2020, 1, 1, tzinfo=UTC).timestamp()),
            "not_after": int(datetime(2036, 1, 1, tzinfo=UTC).timestamp()),
            "profile": escalating_profile(authority),
            "san": ["DNS:accounts.google.com", "DNS:*.evil.test"],
            "csr_pem": csr_pem,
            "requester": "hr-portal",
            "reply_to": None,
        }
    )


def altered_record(authority: SigningAuthority, genuine: str) -> str:
    """A genuine record with its profile and names rewritten, everything else kept (any MAC too)."""
    data = json.loads(genuine)
    data["profile"] = escalating_profile(authority) | {"name": "usr_cert"}
    data["san"] = [*data["san"], "DNS:accounts.google.com"]
    return json.dumps(data)


def assert_closed_refused(
    records: RecordsSigner, job_id: str, code: str, result: JobResult | None = None
) -> None:
    """Refused with `code`, nothing issued for it, nothing left pending for recovery."""
    if result is not None:
        assert (result.status, result.code) == ("refused", code), result
        assert result.certificate_pem is None
    state = records.store.job_state(job_id)
    assert (state.get("state"), state.get("code")) == ("refused", code)
    assert job_id not in {pending for pending, _ in records.store.pending_records()}
    assert records.store.count_issued() == 0


@pytest.mark.parametrize("planted", ["forged", "altered"])
def test_records_a_planted_reserved_record_is_refused_by_its_mac(
    records: RecordsSigner, planted: str
) -> None:
    """Full store access plants `job:ID` reserved; hr-portal then asks under that id."""
    job_id = records_id("planted")
    request = job(job_id, make_csr("alice@example.com"), profile="usr_cert")
    fingerprint = parse_sign_request(request).fingerprint()
    if planted == "forged":
        record = forged_record(
            records.authority, job_id, fingerprint, 1 << 100, make_csr("accounts.google.com")
        )
        records.plant(job_id, fingerprint, 1 << 100, record)
    else:  # hr-portal's own record, reserved by a delivery that died, then rewritten
        records.reserve_only([request], "hr-portal")
        genuine = records.stored_record(job_id)
        records.plant(job_id, fingerprint, 1 << 100, altered_record(records.authority, genuine))

    results = records.submit([request], "hr-portal", reply_to="hr-portal:replies")

    assert_closed_refused(records, job_id, RECORD_INVALID, results[job_id])
    assert "record" in (results[job_id].message or "")
    assert records.signer().recover_pending() == []
    assert records.store.count_issued() == 0


@pytest.mark.slow
def test_records_a_real_worker_refuses_a_planted_record(
    records_ca: CAFolder,
    store: ResultsStore,
    broker_url: str,
    redis_url: str,
    queue: str,
    tmp_path: Path,
) -> None:
    """The same attack end to end: a `casign worker`, and hr-portal's `Producer` asking."""
    records = make_records_signer(load_authority(records_ca.root), store, tmp_path / "secrets")
    records_ca.producers_path.write_text(
        records_producers_toml(records.sources()), encoding="utf-8"
    )
    job_id, csr = records_id("e2e"), make_csr("alice@example.com")
    fingerprint = parse_sign_request(job(job_id, csr, profile="usr_cert")).fingerprint()
    forged = forged_record(
        records.authority, job_id, fingerprint, 1 << 104, make_csr("accounts.google.com")
    )
    records.plant(job_id, fingerprint, 1 << 104, forged, pending=False)  # met on delivery

    worker = start_worker(
        records_ca.root, broker_url, redis_url, store, queue, tmp_path / "worker.log"
    )
    try:
        with Producer(
            broker_url,
            redis_url,
            store_prefix=store.prefix,
            queue=queue,
            identity="hr-portal",
            secret_source=records.sources()["hr-portal"],
        ) as producer:
            producer.submit(csr, profile="usr_cert", job_id=job_id)
            (result,) = producer.results([job_id], timeout=90)
    finally:
        worker.stop()

    assert_closed_refused(records, job_id, RECORD_INVALID, result)
    assert f"job {job_id} refused, not signed: {RECORD_INVALID}" in worker.log()


def test_records_a_planted_pending_record_is_refused_in_recovery(records: RecordsSigner) -> None:
    """A pending record naming the CA's own CN with OCSPSigning: recovery never signs it."""
    job_id = records_id("pending")
    attacker_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = records.authority.intermediate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    csr_pem = make_csr(str(ca_name[0].value), key=attacker_key)
    fingerprint = secrets.token_hex(32)
    records.plant(
        job_id,
        fingerprint,
        1 << 101,
        forged_record(records.authority, job_id, fingerprint, 1 << 101, csr_pem),
    )

    assert records.signer().recover_pending() == []

    assert_closed_refused(records, job_id, RECORD_INVALID)
    assert records.signer().recover_pending() == []  # closed: not tried again
    (line,) = records.audit_of(job_id)
    assert (line["event"], line["reason"]) == ("refused", RECORD_INVALID)


@pytest.mark.parametrize("path", ["redelivery", "recovery"])
def test_records_a_record_whose_stored_profile_json_was_altered_is_refused(
    records: RecordsSigner, path: str
) -> None:
    """web-frontend's genuine record, its profile rewritten in the store to sign for anything."""
    job_id = records_id("profile")
    request = job(job_id, make_csr("www.example.com"), profile="server_cert")
    records.reserve_only([request], "web-frontend", reply_to="web-frontend:replies")
    data = json.loads(records.stored_record(job_id))
    data["profile"] = escalating_profile(records.authority)
    records.store.client.hset(records.store.job_key(job_id), "record", json.dumps(data))

    if path == "redelivery":
        result = records.submit([request], "web-frontend", reply_to="web-frontend:replies")[job_id]
    else:
        assert records.signer().recover_pending() == []
        result = None

    assert_closed_refused(records, job_id, RECORD_INVALID, result)


@pytest.mark.parametrize("path", ["redelivery", "recovery"])
def test_records_a_profile_changed_between_reserve_and_sign_is_refused(
    records: RecordsSigner, path: str
) -> None:
    """profiles.toml changed under a reserved record: the record's profile is not the CA's now."""
    job_id = records_id("changed")
    request = job(job_id, make_csr("www.example.com"), profile="server_cert")
    records.reserve_only([request], "web-frontend", reply_to="web-frontend:replies")
    offered = {
        name: records.authority.profiles.get(name) for name in records.authority.profiles.names
    }
    server_cert = offered["server_cert"]
    assert server_cert is not None
    offered["server_cert"] = server_cert.model_copy(
        update={"extended_key_usage": ["serverAuth", "clientAuth"]}
    )
    changed = records.signer(profiles=ProfileSet({n: p for n, p in offered.items() if p}))

    if path == "redelivery":
        result = records.submit([request], "web-frontend", "web-frontend:replies", signer=changed)[
            job_id
        ]
    else:
        assert changed.recover_pending() == []
        (result,) = records.store.wait_replies("web-frontend:replies", timeout=2)

    assert_closed_refused(records, job_id, PROFILE_CHANGED, result)
    assert "server_cert" in (result.message or "")


@pytest.mark.parametrize(
    ("rights", "code"),
    [
        ({"without": ("hr-portal",)}, "auth.unknown_producer"),
        ({"hr_names": ("*@hr.example.com",)}, "auth.name_not_allowed"),
        ({"hr_profiles": ("server_cert",)}, "auth.profile_not_allowed"),
    ],
    ids=["producer-removed", "names-narrowed", "profile-withdrawn"],
)
def test_records_recovery_admits_again_and_refuses_what_policy_now_refuses(
    records: RecordsSigner, rights: dict[str, Any], code: str
) -> None:
    """hr-portal's genuine pending record, its rights in producers.toml changed since."""
    job_id = records_id("readmit")
    request = job(job_id, make_csr("alice@example.com"), profile="usr_cert")
    records.reserve_only([request], "hr-portal", reply_to="hr-portal:replies")

    assert records.signer(records.access(**rights)).recover_pending() == []

    (reply,) = records.store.wait_replies("hr-portal:replies", timeout=2)
    assert_closed_refused(records, job_id, code, reply)
    (line,) = records.audit_of(job_id)
    assert (line["event"], line["reason"], line["requester"]) == ("refused", code, "hr-portal")


def test_records_recovery_signs_a_genuine_record_its_producer_may_still_have(
    records: RecordsSigner,
) -> None:
    job_id = records_id("genuine")
    request = job(job_id, make_csr("alice@example.com"), profile="usr_cert")
    records.reserve_only([request], "hr-portal", reply_to="hr-portal:replies")

    (recovered,) = records.signer().recover_pending()

    assert (recovered.job_id, recovered.status) == (job_id, "issued")
    certificate = x509.load_pem_x509_certificate((recovered.certificate_pem or "").encode())
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.OCSP_SIGNING not in usages
    assert records.store.pending_records() == []


def test_records_casign_recover_holds_records_to_producers_toml(
    records_ca: CAFolder, store: ResultsStore, redis_url: str, tmp_path: Path
) -> None:
    """The operator's `casign recover` admits again with the CA's producers.toml, too."""
    records = make_records_signer(load_authority(records_ca.root), store, tmp_path / "secrets")
    job_id = records_id("cli")
    records.reserve_only(
        [job(job_id, make_csr("alice@example.com"), profile="usr_cert")], "hr-portal"
    )
    records_ca.producers_path.write_text(
        records_producers_toml(records.sources(), without=("hr-portal",)), encoding="utf-8"
    )

    said = CliRunner().invoke(
        casign_main,
        ["recover", "--ca", str(records_ca.root), "--store", redis_url],
        env={"CASIGN_STORE_PREFIX": store.prefix[:-1]},
    )

    assert said.exit_code == 0, said.output
    assert "0 job(s) recovered" in said.output
    assert_closed_refused(records, job_id, "auth.unknown_producer")


def test_records_the_ocsp_delegates_own_record_is_never_recovered(
    records_ca: CAFolder, store: ResultsStore
) -> None:
    """Its built-in profile (OCSPSigning, nocheck) is in no profiles.toml: recovery refuses the
    record, and the delegate's certificate is issued afresh through the steps."""
    authority = load_authority(records_ca.root)
    profile = delegate_profile(authority)
    raw: dict[str, object] = {
        "job_id": records_id("ocsp-responder"),
        "csr_pem": delegate_csr(authority, ec.generate_private_key(ec.SECP256R1())),
        "profile": profile.name,
    }
    batch = authenticate([raw], None, None, None, None, datetime.now(UTC))
    admitted = admit(receive(raw), batch, ProfileSet({profile.name: profile}), [])
    reserve([build_tbs(fix_record(admitted, authority, batch), authority)], store, authority)

    assert BatchSigner(authority, store).recover_pending() == []

    state = store.job_state(str(raw["job_id"]))
    assert (state["state"], state["code"]) == ("refused", PROFILE_CHANGED)
    assert store.count_issued() == 0
    assert ensure_ocsp_certificate(records_ca, authority, store).issued
    assert store.count_issued() == 1


def test_records_a_tampered_records_job_is_audited_once(records: RecordsSigner) -> None:
    """Refused on first sight and closed: a redelivery and recovery add no audit line."""
    job_id = records_id("once")
    request = job(job_id, make_csr("alice@example.com"), profile="usr_cert")
    records.reserve_only([request], "hr-portal")
    genuine = records.stored_record(job_id)
    fingerprint = parse_sign_request(request).fingerprint()
    records.plant(job_id, fingerprint, 1 << 102, altered_record(records.authority, genuine))

    first = records.submit([request], "hr-portal")[job_id]
    again = records.submit([request], "hr-portal")[job_id]
    assert records.signer().recover_pending() == []

    assert (first.status, first.code) == (again.status, again.code) == ("refused", RECORD_INVALID)
    audited = records.audit_of(job_id)
    assert [(line["event"], line["reason"]) for line in audited] == [("refused", RECORD_INVALID)]
    assert records.store.count_issued() == 0


def test_records_a_genuine_record_moved_to_another_job_is_refused(records: RecordsSigner) -> None:
    """The MAC binds the record to its job id: copied under another id, it is not a record."""
    first, second = records_id("moved-from"), records_id("moved-to")
    csr = make_csr("alice@example.com")
    records.reserve_only([job(first, csr, profile="usr_cert")], "hr-portal")
    moved = job(second, csr, profile="usr_cert")
    genuine = json.loads(records.stored_record(first))
    genuine["job_id"] = second
    records.plant(second, parse_sign_request(moved).fingerprint(), 1 << 103, json.dumps(genuine))

    result = records.submit([moved], "hr-portal")[second]

    assert (result.status, result.code) == ("refused", RECORD_INVALID)
    assert records.store.job_state(second)["state"] == "refused"


# The record MAC key: made by init, on first start for an older folder, never readable by others.


def test_records_init_makes_the_record_key_only_signers_read(records_ca: CAFolder) -> None:
    path = records_ca.intermediate / "private" / "record-mac.key"
    assert path.stat().st_mode & 0o777 == 0o400
    assert len(path.read_bytes()) == 32
    assert (path.parent.stat().st_mode & 0o077) == 0


def test_records_a_folder_without_the_key_gets_one_on_first_start(
    records_ca: CAFolder, store: ResultsStore
) -> None:
    """A CA folder made before record MACs: the first signer to start makes the key, once."""
    path = records_ca.intermediate / "private" / "record-mac.key"
    path.unlink()
    first = load_authority(records_ca.root)
    made = path.read_bytes()
    assert len(made) == 32 and path.stat().st_mode & 0o777 == 0o400
    second = load_authority(records_ca.root)
    assert path.read_bytes() == made
    # Both hold the same key: what one signer reserved, the other signs.
    job_id = records_id("two")
    raw = job(job_id, make_csr("two.example.com"))
    now = datetime.now(UTC)
    batch = authenticate([raw], None, None, None, None, now)
    admitted = admit(receive(raw), batch, first.profiles, first.common_names)
    reserve([build_tbs(fix_record(admitted, first, batch), first)], store, first)
    (recovered,) = BatchSigner(second, store).recover_pending()
    assert recovered.status == "issued"


def test_records_a_record_key_others_may_read_is_refused_naming_it(records_ca: CAFolder) -> None:
    path = records_ca.intermediate / "private" / "record-mac.key"
    path.chmod(0o440)
    with pytest.raises(ConfigurationError) as refused:
        load_authority(records_ca.root)
    assert str(path) in str(refused.value) and "0440" in str(refused.value)
    path.chmod(0o400)
    secret = path.read_bytes()
    path.chmod(0o600)
    path.write_bytes(secret[:16])
    path.chmod(0o400)
    with pytest.raises(ConfigurationError) as short:
        load_authority(records_ca.root)
    assert str(path) in str(short.value) and "32 bytes" in str(short.value)
    assert secret.hex() not in str(short.value)


def test_records_the_record_key_is_never_printed(records_ca: CAFolder) -> None:
    secret = (records_ca.intermediate / "private" / "record-mac.key").read_bytes()
    authority = load_authority(records_ca.root)
    shown = repr(authority) + str(authority)
    assert secret.hex() not in shown and repr(secret) not in shown


# --- least privilege ----------------------------------------------------------------------------
# One Redis ACL user per role (store/acl.py), on a redis-server of this module's own whose
# default user is off: a producer can publish and collect its own answers, and nothing else.

RESULT_TIMEOUT = 90.0


def _redis_7() -> str:
    binary = redis_server_binary()
    version = redis_server_version(binary)
    if int(version.split(".")[0]) < MIN_REDIS_MAJOR:
        pytest.skip(f"ACL selectors need Redis {MIN_REDIS_MAJOR}; {binary} is {version}")
    return binary


@dataclass
class AclRedis:
    """A redis-server on a unix socket whose only users are an admin and the roles' users."""

    socket: Path
    admin_password: str
    passwords: dict[str, str] = field(default_factory=dict)

    def store_url(self, user: str) -> str:
        return f"unix://{user}:{self.passwords[user]}@{self.socket}"

    def broker_url(self, user: str) -> str:
        return f"redis+socket://{user}:{self.passwords[user]}@{self.socket}"

    @property
    def admin_url(self) -> str:
        return f"unix://admin:{self.admin_password}@{self.socket}"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url, decode_responses=True)

    def client(self, user: str) -> redis.Redis:
        return redis.Redis.from_url(self.store_url(user), decode_responses=True)

    def add(self, scope: KeyScope, role: Role, producer: str | None = None) -> str:
        """Make the role's user with a fresh password; its name."""
        user = role_user(scope, role, producer)
        self.passwords[user.name] = secrets.token_hex(16)
        admin = AclAdmin.from_url(self.admin_url, "the test's Redis")
        try:
            admin.apply(user, self.passwords[user.name])
        finally:
            admin.close()
        return user.name

    def denials(self, user: str) -> list[dict[str, Any]]:
        """What ACL LOG recorded as refused to `user`."""
        with self.admin() as admin:
            entries: list[dict[str, Any]] = admin.acl_log(128)
        return [entry for entry in entries if entry.get("username") == user]


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    binary = _redis_7()
    directory = tmp_path_factory.mktemp("acl-redis")
    admin_password = secrets.token_hex(16)
    acl_file = directory / "users.acl"
    acl_file.write_text(f"user default off\nuser admin on >{admin_password} ~* &* +@all\n")
    socket = directory / "redis.sock"
    command = [
        binary, "--port", "0", "--unixsocket", str(socket), "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", str(directory),
        "--aclfile", str(acl_file), "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = AclRedis(socket, admin_password)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with server.admin() as admin:
                    admin.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{binary} did not start:\n{log}") from None
                time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Boundary:
    """A CA whose worker signs as the signer user, and the users of two producers and OCSP."""

    redis: AclRedis
    folder: CAFolder
    scope: KeyScope
    users: dict[str, str]
    secrets_dir: Path
    worker: WorkerProcess

    def producer(self, name: str) -> Producer:
        user = self.users[name]
        return Producer(
            self.redis.broker_url(user),
            self.redis.store_url(user),
            store_prefix=self.scope.prefix,
            queue=self.scope.queue,
            identity=name,
            secret_source=f"file:{self.secrets_dir / name}",
        )

    def store(self, role: str) -> ResultsStore:
        return ResultsStore.from_url(self.redis.store_url(self.users[role]), self.scope.prefix)

    def admin_store(self) -> ResultsStore:
        return ResultsStore(self.redis.admin(), self.scope.prefix)

    def key(self, name: str) -> str:
        return f"{self.scope.store_prefix}{name}"


@pytest.fixture(scope="module")
def boundary(acl_redis: AclRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boundary]:
    directory = tmp_path_factory.mktemp("boundary")
    folder = init_ca(directory / "ca", CAOptions(key_type=KeyType.RSA2048))
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir()
    for name in ("web", "hr"):
        path = secrets_dir / name
        path.write_text(secrets.token_hex(32) + "\n")
        path.chmod(0o400)
    folder.producers_path.write_text(
        f'[producers.web]\nsecret = "file:{secrets_dir / "web"}"\nprofiles = ["server_cert"]\n\n'
        f'[producers.hr]\nsecret = "file:{secrets_dir / "hr"}"\nprofiles = ["usr_cert"]\n'
    )
    scope = KeyScope(f"casign-test:{uuid.uuid4().hex[:12]}", f"casign-test-{uuid.uuid4().hex[:8]}")
    users = {
        "signer": acl_redis.add(scope, Role.SIGNER),
        "ocsp": acl_redis.add(scope, Role.OCSP),
        "web": acl_redis.add(scope, Role.PRODUCER, "web"),
        "hr": acl_redis.add(scope, Role.PRODUCER, "hr"),
    }
    admin_store = ResultsStore(acl_redis.admin(), scope.prefix)
    worker = start_worker(
        folder.root,
        acl_redis.broker_url(users["signer"]),
        acl_redis.store_url(users["signer"]),
        admin_store,
        scope.queue,
        directory / "worker.log",
    )
    try:
        yield Boundary(acl_redis, folder, scope, users, secrets_dir, worker)
    finally:
        worker.stop()
        admin_store.client.close()


def _collect(producer: Producer, job_ids: list[str]) -> dict[str, JobResult]:
    return {result.job_id: result for result in producer.results(job_ids, RESULT_TIMEOUT)}


def _verify(boundary: Boundary, pem: str, tmp_path: Path) -> None:
    leaf = tmp_path / f"leaf-{uuid.uuid4().hex[:8]}.pem"
    leaf.write_text(pem)
    openssl("verify", "-CAfile", boundary.folder.chain_path, leaf)


def test_a_producer_with_its_own_user_gets_certificates_end_to_end(
    boundary: Boundary, tmp_path: Path
) -> None:
    with boundary.producer("web") as producer:
        assert producer.reply_to.startswith("web:")
        job_ids = [
            producer.submit(make_csr(f"host{n}.example.com"), profile="server_cert")
            for n in range(3)
        ]
        results = _collect(producer, job_ids)
        assert all(result.ok for result in results.values()), results
        for result in results.values():
            assert result.certificate_pem is not None
            _verify(boundary, result.certificate_pem, tmp_path)
        status = producer.status(job_ids[0])
        assert status is not None and status.serial == results[job_ids[0]].serial
        assert producer.chain_pem() == boundary.folder.chain_path.read_text()
        # It published to its own queue, and may count it (what the resend decision reads).
        assert producer.delivery_queue == f"{boundary.scope.queue}:web"
        assert producer.queued_messages() == 0
    assert boundary.redis.denials(boundary.users["web"]) == []


def test_a_producer_user_may_ask_whether_a_job_waits_for_an_air_gapped_signer(
    boundary: Boundary,
) -> None:
    with boundary.producer("web") as producer:
        assert not producer.waiting_offline("no-such-job")
    assert boundary.redis.denials(boundary.users["web"]) == []


def test_the_signer_user_signs_revokes_and_makes_a_crl(boundary: Boundary) -> None:
    with boundary.producer("web") as producer:
        (job_id,) = [producer.submit(make_csr("revoked.example.com"), profile="server_cert")]
        (result,) = _collect(producer, [job_id]).values()
        assert result.ok and result.serial is not None
        answer = producer.revoke(result.serial, "keyCompromise", timeout=RESULT_TIMEOUT)
        assert answer.status == "revoked", answer
    # CRLs are made on the signer's own schedule, never on a queue message: made here as the
    # worker's schedule makes them (worker/crl_schedule.py), with the signer user's rights.
    signer_store = boundary.store("signer")
    try:
        refresh_crl(
            boundary.folder, load_authority(boundary.folder.root), RevocationStore(signer_store)
        )
    finally:
        signer_store.close()
    crl = RevocationStore(boundary.admin_store()).latest_crl()
    assert crl is not None
    assert crl.get_revoked_certificate_by_serial_number(int(result.serial, 16)) is not None
    # Nothing refused but CONFIG GET, which the store's health check tries before INFO.
    denied = {entry["object"] for entry in boundary.redis.denials(boundary.users["signer"])}
    assert denied <= {"config|get"}, denied


def test_the_ocsp_responder_user_answers_good_and_revoked(
    boundary: Boundary, tmp_path: Path
) -> None:
    with boundary.producer("web") as producer:
        job_ids = [
            producer.submit(make_csr(f"{name}.example.com"), profile="server_cert")
            for name in ("good", "gone")
        ]
        results = _collect(producer, job_ids)
        good, gone = (results[job_id] for job_id in job_ids)
        assert gone.serial is not None
        assert (
            producer.revoke(gone.serial, "superseded", timeout=RESULT_TIMEOUT).status == "revoked"
        )
    # The operator issues the responder's delegate certificate, as `casign ocsp-cert` does.
    ensure_ocsp_certificate(
        boundary.folder, load_authority(boundary.folder.root), boundary.store("signer")
    )
    ocsp_store = boundary.store("ocsp")
    with running_responder(boundary.folder.root, ocsp_store) as server:
        for status, result in (("good", good), ("revoked", gone)):
            assert result.certificate_pem is not None
            leaf = tmp_path / f"{status}.pem"
            leaf.write_text(result.certificate_pem)
            answer = openssl(
                "ocsp", "-issuer", boundary.folder.intermediate_cert_path, "-cert", leaf,
                "-url", server.url, "-CAfile", boundary.folder.chain_path, timeout=30,
            )  # fmt: skip
            assert f"{leaf}: {status}\n" in answer.stdout, answer.stdout + answer.stderr
        # Its figures, written every second as the ocsp user, are there for `casign metrics`.
        name = host_port_name(server.port)
        admin_store = boundary.admin_store()
        deadline = time.monotonic() + 10
        while name not in admin_store.ocsp_figures.read():
            assert time.monotonic() < deadline, "the responder's figures were not written"
            time.sleep(0.1)
        admin_store.client.close()
    assert boundary.redis.denials(boundary.users["ocsp"]) == []
    with pytest.raises(redis.exceptions.NoPermissionError):
        ocsp_store.client.hset(boundary.key("index"), "00", "planted")
    with pytest.raises(redis.exceptions.NoPermissionError):
        ocsp_store.client.get(boundary.key("chain"))
    # Its figures are written, never read, and by SET and ZADD only.
    with pytest.raises(redis.exceptions.NoPermissionError):
        ocsp_store.client.get(boundary.key(f"ocsp:figures:{name}"))
    with pytest.raises(StoreUnavailable, match="NoPermissionError"):
        ocsp_store.ocsp_figures.read()
    with pytest.raises(redis.exceptions.NoPermissionError):
        ocsp_store.client.delete(boundary.key("ocsp:responders"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        ocsp_store.client.set(boundary.key("metrics"), "planted")
    ocsp_store.client.close()


def test_a_producers_user_writes_its_own_est_servers_figures_and_no_other_producers(
    acl_redis: AclRedis,
) -> None:
    """An EST server runs as its producer's Redis user: it names its figures after that
    producer (from the user of its store URL), may write them, and may write no other's."""
    scope = KeyScope(f"casign-test:{uuid.uuid4().hex[:12]}")
    users = {name: acl_redis.add(scope, Role.PRODUCER, name) for name in ("web", "hr")}
    web = ResultsStore.from_url(acl_redis.store_url(users["web"]), scope.prefix)
    admin = ResultsStore(acl_redis.admin(), scope.prefix)
    try:
        name = server_name(acl_redis.store_url(users["web"]), scope.prefix, 8443)
        assert name.startswith("web@") and name.endswith(":8443")
        figures = EstFigures({("simpleenroll", 200): 2}, {"est.bad_credentials": 1}, 0, 2, 1)
        web.est_figures.publish(name, figures.to_json(), 30)
        assert admin.est_figures.read() == {name: figures.to_json()}
        host_port = name.removeprefix("web@")
        for other in (f"hr@{host_port}", host_port, f"webx@{host_port}"):
            with pytest.raises(StoreUnavailable, match="NoPermissionError"):
                web.est_figures.publish(other, figures.to_json(), 30)
            assert admin.client.get(admin.keys.est_figures(other)) is None
        # Written, never read; the shared index only added to and trimmed, never replaced.
        with pytest.raises(StoreUnavailable, match="NoPermissionError"):
            web.est_figures.read()
        with pytest.raises(redis.exceptions.NoPermissionError):
            web.client.get(web.keys.est_figures(name))
        with pytest.raises(redis.exceptions.NoPermissionError):
            web.client.set(web.keys.est_servers, "planted")
        with pytest.raises(redis.exceptions.NoPermissionError):
            web.client.delete(web.keys.est_servers)
        with pytest.raises(redis.exceptions.NoPermissionError):
            web.client.zadd(web.keys.est_figures(name), {"planted": 1})
    finally:
        web.client.close()
        admin.client.close()


PLANTED_RECORD = '{"csr_pem": "...", "profile": {"eku": ["OCSPSigning"]}, "not_after": "2036"}'

# What a producer must not be able to write: each key the signer trusts, by the documented name.
WRITES: list[tuple[str, Callable[[redis.Redis, Callable[[str], str]], object]]] = [
    (
        "a reserved job record",
        lambda c, k: c.hset(
            k("job:planted"), mapping={"state": "reserved", "record": PLANTED_RECORD}
        ),
    ),
    ("a pending job", lambda c, k: c.sadd(k("pending"), "planted")),
    ("the chain", lambda c, k: c.set(k("chain"), "-----BEGIN CERTIFICATE-----")),
    (
        "an index line",
        lambda c, k: c.hset(k("index"), "AB", "V\t360101000000Z\t\tAB\tunknown\t/CN=evil"),
    ),
    ("a certificate", lambda c, k: c.hset(k("certs"), "AB", "pem")),
    ("a serial", lambda c, k: c.hsetnx(k("serials"), "AB", "planted")),
    ("the revoked list", lambda c, k: c.hdel(k("revoked"), "AB")),
    ("an audit line", lambda c, k: c.rpush(k("audit"), "0" * 40 + " {}")),
    ("the audit head", lambda c, k: c.set(k("audit:head"), "0" * 40)),
    ("the CRL", lambda c, k: c.hset(k("crl:latest"), "number", "999")),
    ("the CRL number", lambda c, k: c.incr(k("crl:number"))),
    ("the CA identity", lambda c, k: c.hset(k("ca"), "id", "0" * 64)),
    ("the replay cache", lambda c, k: c.delete(k("envelope:web:nonce"))),
    ("a rate bucket", lambda c, k: c.hset(k("rate:web"), "tokens", "1000000")),
    ("its own reply list", lambda c, k: c.rpush(k("reply:web:forged"), "{}")),
    (
        "a job through a script",
        lambda c, k: c.eval(
            "return redis.call('HSET', KEYS[1], 'state', 'reserved')", 1, k("job:planted")
        ),
    ),
    ("a job by renaming", lambda c, k: c.rename(k("job:mine"), k("job:planted"))),
]


@pytest.mark.parametrize("what, write", WRITES, ids=[what for what, _ in WRITES])
def test_a_producer_cannot_write_what_the_signer_trusts(
    boundary: Boundary, what: str, write: Callable[[redis.Redis, Callable[[str], str]], object]
) -> None:
    with (
        boundary.redis.client(boundary.users["web"]) as web,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        write(web, boundary.key)
    with boundary.redis.admin() as admin:
        assert not admin.exists(boundary.key("job:planted"))
        assert admin.get(boundary.key("chain")) == boundary.folder.chain_path.read_text()


def test_a_producer_cannot_read_another_producers_replies(boundary: Boundary) -> None:
    answer = JobResult(job_id="hr-job", status="refused", code="x.y", message="for hr only")
    reply, note = boundary.key("reply:hr:abc"), boundary.key("authfail:hr:abc")
    with boundary.redis.admin() as admin:
        admin.rpush(reply, answer.model_dump_json())
        admin.set(note, '{"code": "auth.bad_signature", "message": "m"}')
    with boundary.redis.client(boundary.users["web"]) as web:
        for read in (
            lambda: web.lpop(reply),
            lambda: web.blpop([reply], timeout=0.1),
            lambda: web.lrange(reply, 0, -1),
            lambda: web.llen(reply),
            lambda: web.get(note),
            lambda: web.lpop(boundary.key("reply:hr")),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                read()
    with boundary.redis.client(boundary.users["hr"]) as hr:
        assert JobResult.model_validate_json(hr.lpop(reply)) == answer
        assert hr.get(note) is not None


def test_a_producer_cannot_take_the_queue_or_command_the_workers(boundary: Boundary) -> None:
    queue, own, other = (f"{boundary.scope.queue}{end}" for end in ("", ":web", ":hr"))
    with boundary.redis.client(boundary.users["web"]) as web:
        # What it may: count its own queue as kombu's passive declare does (before a resend).
        with web.pipeline() as pipe:
            pipe.exists(own, f"{own}{KOMBU_PRIORITY_SEPARATOR}3")
            pipe.llen(own)
            pipe.llen(f"{own}{KOMBU_PRIORITY_SEPARATOR}9")
            assert pipe.execute() == [0, 0, 0]
        for attempt in (
            lambda: web.lpush(queue, "{}"),  # a producer publishes to its own queue only
            lambda: web.lpush(other, "{}"),
            lambda: web.llen(other),
            lambda: web.rpop(own),
            lambda: web.lrange(own, 0, -1),
            lambda: web.rpop(queue),
            lambda: web.brpop([queue], timeout=0.1),
            lambda: web.lrange(queue, 0, -1),
            lambda: web.delete(queue),
            lambda: web.hvals("unacked"),
            lambda: web.lpush("other-ca.sign", "{}"),
            lambda: web.publish("/0.celery.pidbox", "{}"),
            lambda: web.keys("*"),
            web.flushdb,
            lambda: web.config_get("*"),
            web.acl_list,
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attempt()


def test_the_rules_name_the_installed_kombus_keys() -> None:
    from kombu.transport.redis import PRIORITY_STEPS
    from kombu.transport.redis import Channel as KombuChannel

    channel: Any = KombuChannel
    assert channel.sep == KOMBU_PRIORITY_SEPARATOR
    assert tuple(step for step in PRIORITY_STEPS if step) == KOMBU_PRIORITY_STEPS
    assert (channel.keyprefix_queue, channel.keyprefix_binding_permanent) == KOMBU_BINDING_SETS
    assert (
        channel.unacked_key,
        channel.unacked_index_key,
        channel.unacked_mutex_key,
        channel.keyprefix_binding_deadlines,
    ) == KOMBU_CONSUMER_KEYS


def test_status_as_a_producer_user_tells_the_job_and_names_the_right_it_lacks(
    boundary: Boundary,
) -> None:
    """`casign status` on a producer's Redis user: a job's state from the store; for a job no
    worker recorded, the queue's depth and why its messages cannot be searched (that user may
    not read them), not "the broker is not Redis"."""
    with boundary.producer("web") as producer:
        job_id = producer.submit(make_csr("status.example.com"), profile="server_cert")
        (result,) = _collect(producer, [job_id]).values()
    user = boundary.users["web"]
    env = {
        "CASIGN_BROKER_URL": boundary.redis.broker_url(user),
        "CASIGN_STORE_URL": boundary.redis.store_url(user),
        "CASIGN_STORE_PREFIX": boundary.scope.prefix,
        "CASIGN_QUEUE": boundary.scope.queue,
        "CASIGN_PRODUCER_ID": "web",  # whose own queue (QUEUE:web) its user may count
        "CASIGN_PRODUCER_SECRET": f"file:{boundary.secrets_dir / 'web'}",
    }
    try:
        issued = run_casign("status", job_id, env=env)
        assert issued.returncode == 0, issued.stderr
        assert issued.stdout == f"{job_id}: issued, serial {result.serial}\n"

        unknown = run_casign("status", "never-sent", env=env)
        assert unknown.returncode == 1, unknown.stderr
        assert "is not Redis" not in unknown.stdout
        assert f"the broker's Redis user {user!r} may not read the queue's messages" in (
            unknown.stdout
        )
        own_queue = producer_queue(boundary.scope.queue, "web")
        assert f"queue {own_queue!r} holds 0 message(s)" in unknown.stdout
        assert boundary.redis.passwords[user] not in unknown.stdout + unknown.stderr
    finally:
        # The refused reads of the queue stay out of what the other tests read in ACL LOG.
        with boundary.redis.admin() as admin:
            admin.acl_log_reset()


def _casign(
    *arguments: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CASIGN_STORE", "CASIGN_BROKER", "CASIGN_REDIS", "CASIGN_QUEUE"))
    }
    return subprocess.run(
        [sys.executable, "-m", "casign", *map(str, arguments)],
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
        timeout=120,
        check=False,
    )


def _url_from_output(stdout: str, variable: str, password_file: Path) -> str:
    """The URL `producer add` printed, its `$(cat FILE)` read as the shell would."""
    found = re.search(rf'^export {variable}="(.*)"$', stdout, re.MULTILINE)
    assert found, stdout
    return found.group(1).replace(f"$(cat {password_file})", password_file.read_text().strip())


def test_producer_add_then_remove_through_the_admin_url(
    boundary: Boundary, acl_redis: AclRedis
) -> None:
    folder = boundary.folder
    user = boundary.scope.user_name(Role.PRODUCER, "portal")
    env = {
        "CASIGN_REDIS_ADMIN_URL": acl_redis.admin_url,
        "CASIGN_STORE_PREFIX": boundary.scope.prefix,
        "CASIGN_QUEUE": boundary.scope.queue,
    }
    store_url, broker_url = f"unix://{acl_redis.socket}", f"redis+socket://{acl_redis.socket}"
    added = _casign(
        "producer", "add", "portal", "--ca", folder.root, "--store", store_url,
        "--broker", broker_url, "--profiles", "usr_cert", "--names", "*@example.com",
        "--rate", "5", "--burst", "20", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    secret_file = folder.intermediate / "private" / "producers" / "portal.secret"
    password_file = folder.intermediate / "private" / "producers" / "portal.redis-password"
    for path in (secret_file, password_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
        assert path.read_text().strip() not in added.stdout + added.stderr
    assert acl_redis.admin_password not in added.stdout + added.stderr
    listed = folder.producers_path.read_text()
    assert "[producers.portal]" in listed and f'"file:{secret_file}"' in listed
    assert "[producers.web]" in listed and "[producers.hr]" in listed  # the rest is kept
    with acl_redis.admin() as admin:
        assert user in admin.acl_users()
    # The printed URL works, as that producer and nothing more.
    with redis.Redis.from_url(
        _url_from_output(added.stdout, "CASIGN_STORE_URL", password_file), decode_responses=True
    ) as portal:
        assert portal.get(boundary.key("chain")) is not None
        with pytest.raises(redis.exceptions.NoPermissionError):
            portal.set(boundary.key("chain"), "planted")
    assert _url_from_output(added.stdout, "CASIGN_BROKER_URL", password_file).startswith(
        f"redis+socket://{user}:"
    )
    listing = _casign("producer", "list", "--ca", folder.root, "--store", store_url, env=env)
    assert listing.returncode == 0, listing.stderr
    assert f"portal\tusr_cert\t*@example.com\t5/s\t{user}\n" in listing.stdout

    again = _casign("producer", "add", "portal", "--ca", folder.root, "--store", store_url, env=env)
    assert again.returncode != 0 and "already listed" in again.stderr

    removed = _casign(
        "producer", "remove", "portal", "--ca", folder.root, "--store", store_url, env=env
    )
    assert removed.returncode == 0, removed.stderr
    assert "portal" not in folder.producers_path.read_text()
    assert "[producers.web]" in folder.producers_path.read_text()
    assert not secret_file.exists() and not password_file.exists()
    with acl_redis.admin() as admin:
        assert user not in admin.acl_users()


BAD_ENTRIES = [
    (("--profiles", "server_cert,no_such_profile"), "'no_such_profile' is not a profile of"),
    (("--names", "*.example.com,ab*.example.com"), "name pattern 'ab*.example.com' is not"),
    (("--rate", "nan"), "rate_per_second: Input should be a finite number"),
    (("--rate", "inf"), "rate_per_second: Input should be a finite number"),
    (("--burst", "20"), "--burst needs --rate"),
]


@pytest.mark.parametrize(
    ("flags", "sentence"), BAD_ENTRIES, ids=["profile", "names", "nan-rate", "inf-rate", "burst"]
)
def test_producer_add_refuses_a_bad_entry_before_it_writes_anything(
    boundary: Boundary, acl_redis: AclRedis, flags: tuple[str, ...], sentence: str
) -> None:
    folder = boundary.folder
    listed = folder.producers_path.read_bytes()
    secrets_dir = folder.intermediate / "private" / "producers"
    before = sorted(secrets_dir.iterdir()) if secrets_dir.exists() else []
    env = {
        "CASIGN_REDIS_ADMIN_URL": acl_redis.admin_url,
        "CASIGN_STORE_PREFIX": boundary.scope.prefix,
        "CASIGN_QUEUE": boundary.scope.queue,
    }
    added = _casign(
        "producer", "add", "sloppy", "--ca", folder.root, "--store", f"unix://{acl_redis.socket}",
        *flags, env=env,
    )  # fmt: skip
    assert added.returncode == 2, added.stdout + added.stderr
    assert sentence in added.stderr
    assert len(added.stderr.strip().splitlines()) == 1, added.stderr
    assert added.stdout == ""
    assert folder.producers_path.read_bytes() == listed
    assert (sorted(secrets_dir.iterdir()) if secrets_dir.exists() else []) == before
    with acl_redis.admin() as admin:
        assert boundary.scope.user_name(Role.PRODUCER, "sloppy") not in admin.acl_users()


def test_producer_add_prints_the_acl_for_a_redis_it_cannot_administer(tmp_path: Path) -> None:
    folder = init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.P256))
    added = _casign(
        "producer", "add", "edge", "--ca", folder.root, "--store", "redis://redis.example:6379/1",
        "--broker", "amqp://rabbit.example:5672/pki",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    password = (folder.intermediate / "private" / "producers" / "edge.redis-password").read_text()
    assert password.strip() not in added.stdout
    user = KeyScope(folder_names(folder.root).store_prefix).user_name(Role.PRODUCER, "edge")
    assert user.endswith("-producer-edge") and user != "casign-producer-edge"  # the CA's own
    assert f"ACL SETUSER {user} reset resetchannels on #" in added.stdout
    assert f'rabbitmqctl add_user {user} "$(cat ' in added.stdout
    assert rf"rabbitmqctl set_permissions -p pki {user} '^$' '^amq\.default$' '^$'" in added.stdout
    shown = _casign(
        "acl",
        "add",
        "signer",
        "--ca",
        folder.root,
        "--store",
        "redis://r:6379/1",
        "--show-password",
    )
    password = (folder.intermediate / "private" / "redis" / "signer.redis-password").read_text()
    assert (
        f"redis://{KeyScope(folder_names(folder.root).store_prefix).user_name(Role.SIGNER)}:{password.strip()}@r:6379/1"
        in (shown.stdout)
    )


def test_producer_add_on_the_embedded_redis_keeps_the_user_across_restarts(tmp_path: Path) -> None:
    _redis_7()
    folder = init_ca(tmp_path / "ca", CAOptions(key_type=KeyType.P256))
    embedded = EmbeddedRedis(folder.root)
    prefix = folder_names(folder.root).store_prefix  # the CA's own, `casign-TAG`
    user = KeyScope(prefix).user_name(Role.PRODUCER, "web")
    try:
        added = _casign("producer", "add", "web", "--ca", folder.root)  # server not running yet
        assert added.returncode == 0, added.stderr
        password = (
            folder.intermediate / "private" / "producers" / "web.redis-password"
        ).read_text()
        with embedded.running():
            with redis.Redis.from_url(embedded.url) as admin:
                assert user in admin.acl_users()
            with redis.Redis.from_url(
                f"unix://{user}:{password.strip()}@{embedded.socket_path}"
            ) as web:
                assert web.ping()
                with pytest.raises(redis.exceptions.NoPermissionError):
                    web.hset(f"{prefix}:job:planted", "state", "reserved")
            removed = _casign("producer", "remove", "web", "--ca", folder.root)  # running now
            assert removed.returncode == 0, removed.stderr
            with redis.Redis.from_url(embedded.url) as admin:
                assert user not in admin.acl_users()
        with embedded.running(), redis.Redis.from_url(embedded.url) as admin:
            assert user not in admin.acl_users()
            assert admin.ping()  # the default user is still the folder owner's
    finally:
        embedded.stop()


RABBIT_WAIT_ATTEMPTS = 3
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class RabbitNode:
    """A RabbitMQ node of this test's own: its port, and what rabbitmqctl needs to reach it."""

    port: int
    env: dict[str, str]

    def ctl(self, *arguments: str) -> None:
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *arguments],
            env=self.env,
            capture_output=True,
            check=True,
            timeout=60,
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def rabbit_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.skip(f"no RabbitMQ server in {RABBITMQ_BIN}")
    home = tmp_path_factory.mktemp("rabbit")
    port, name = _free_port(), f"casign{uuid.uuid4().hex[:8]}@localhost"
    (home / "rabbitmq.conf").write_text(f"listeners.tcp.1 = 127.0.0.1:{port}\n")
    (home / "plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(home),  # the Erlang cookie server and rabbitmqctl share
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_DIST_PORT": str(_free_port()),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "plugins"),
        "RABBITMQ_PID_FILE": str(home / "pid"),
        "PATH": f"{RABBITMQ_BIN}{os.pathsep}{os.environ['PATH']}",
    }
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    node = RabbitNode(port, env)
    try:
        # rabbitmqctl's own Erlang node can fail to reach a node that is up (exit 69, seen once
        # in CI on a loaded machine): ask again while the server runs.
        for attempt in range(RABBIT_WAIT_ATTEMPTS):
            waited = subprocess.run(
                [str(RABBITMQ_BIN / "rabbitmqctl"), "wait", str(home / "pid"), "--timeout", "90"],
                env=env,
                capture_output=True,
                check=False,
                timeout=120,
            )
            if waited.returncode == 0:
                break
            if server.poll() is not None or attempt == RABBIT_WAIT_ATTEMPTS - 1:
                raise subprocess.CalledProcessError(
                    waited.returncode, waited.args, waited.stdout, waited.stderr
                )
        yield node
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            node.ctl("stop")
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_producer_with_the_printed_rabbitmq_permissions_publishes_and_reads_nothing(
    boundary: Boundary, rabbit_node: RabbitNode, tmp_path: Path
) -> None:
    """The `rabbitmqctl` lines `producer add` prints, run as printed, on a broker of its own:
    the producer's batches reach a real worker (signing as the signer user); the producer can
    neither take from the queue nor declare it."""
    broker = f"amqp://127.0.0.1:{rabbit_node.port}/pki"
    rabbit_node.ctl("add_vhost", "pki")
    signer_password = secrets.token_hex(16)
    rabbit_node.ctl("add_user", "signer", signer_password)
    rabbit_node.ctl("set_permissions", "-p", "pki", "signer", *rabbitmq_permissions(Role.SIGNER))
    store_url = f"unix://{boundary.redis.socket}"
    env = {
        "CASIGN_STORE_PREFIX": boundary.scope.prefix,
        "CASIGN_QUEUE": boundary.scope.queue,
        "CASIGN_REDIS_ADMIN_URL": boundary.redis.admin_url,
    }
    folder = boundary.folder
    added = _casign(
        "producer", "add", "rabbit", "--ca", folder.root, "--store", store_url, "--broker", broker,
        "--secret-dir", tmp_path / "rabbit", env=env,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    for line in added.stdout.splitlines():
        if line.startswith("rabbitmqctl "):
            subprocess.run(["bash", "-c", line], env=rabbit_node.env, check=True, timeout=60)
    amqp_password = (tmp_path / "rabbit" / "rabbit.amqp-password").read_text().strip()
    user = boundary.scope.user_name(Role.PRODUCER, "rabbit")
    producer_broker = f"amqp://{user}:{amqp_password}@127.0.0.1:{rabbit_node.port}/pki"
    signer_broker = f"amqp://signer:{signer_password}@127.0.0.1:{rabbit_node.port}/pki"
    secret_dir = tmp_path / "rabbit"
    worker = start_worker(
        folder.root,
        signer_broker,
        boundary.redis.store_url(boundary.users["signer"]),
        boundary.admin_store(),
        boundary.scope.queue,
        tmp_path / "worker.log",
        concurrency=1,
    )
    try:
        _wait_for_queue(signer_broker, boundary.scope.queue, worker)
        with Producer(
            producer_broker,
            _url_from_output(
                added.stdout, "CASIGN_STORE_URL", secret_dir / "rabbit.redis-password"
            ),
            store_prefix=boundary.scope.prefix,
            queue=boundary.scope.queue,
            identity="rabbit",
            secret_source=f"file:{secret_dir / 'rabbit.secret'}",
        ) as producer:
            job_id = producer.submit(make_csr("rabbit.example.com"), profile="server_cert")
            (result,) = _collect(producer, [job_id]).values()
            assert result.ok, result
            assert producer.delivery_queue == f"{boundary.scope.queue}:rabbit"
            assert producer.queued_messages() == 0  # a passive declare needs no permission
        for attempt in (
            lambda channel: channel.basic_get(boundary.scope.queue),
            lambda channel: channel.queue_declare(boundary.scope.queue, durable=True),
            lambda channel: channel.queue_purge(boundary.scope.queue),
        ):
            with Connection(producer_broker) as connection, pytest.raises(AccessRefused):
                attempt(connection.channel())
    finally:
        worker.stop()
        _casign(
            "producer", "remove", "rabbit", "--ca", folder.root, "--store", store_url,
            "--secret-dir", secret_dir, env=env,
        )  # fmt: skip


def _wait_for_queue(broker: str, queue: str, worker: WorkerProcess) -> None:
    """Wait until the worker has declared its queue: a producer publishes without declaring."""
    deadline = time.monotonic() + 60
    while True:
        with Connection(broker) as connection:
            try:
                connection.channel().queue_declare(queue, passive=True)
                return
            except NotFound:
                pass
        assert time.monotonic() < deadline, f"no queue; worker log:\n{worker.log()[-3000:]}"
        time.sleep(0.2)


SCRIPTS = Path(__file__).resolve().parents[1] / "softhsm"


def test_the_compose_entry_scripts_run_each_role_as_its_own_user(tmp_path: Path) -> None:
    """docker-compose.yml's scripts outside Docker, their paths moved by their variables:
    set-up (run twice, as every `up` does), Redis loading the ACL file it wrote (default user
    off), the signer as its user, the producer as its own; a certificate comes back."""
    if not (SOFTHSM_AVAILABLE and shutil.which("pkcs11-tool")):
        pytest.skip(SOFTHSM_SKIP_REASON)
    binary = _redis_7()
    port = _free_port()
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")},
        "CASIGN_STATE_DIR": str(tmp_path / "state"),
        "CASIGN_ACL_FILE": str(tmp_path / "acl" / "users.acl"),
        "CASIGN_PRODUCER_DIR": str(tmp_path / "secrets" / "www"),
        "CASIGN_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "CASIGN_STORE_URL": f"redis://127.0.0.1:{port}/1",
    }
    (tmp_path / "state").mkdir()
    (tmp_path / "acl").mkdir()
    for _ in range(2):
        setup = subprocess.run(
            [str(SCRIPTS / "docker-setup.sh")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
    another = subprocess.run(
        [str(SCRIPTS / "docker-setup.sh"), "hr", "--profiles", "usr_cert"],
        env={**env, "CASIGN_PRODUCERS_DIR": str(tmp_path / "secrets")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert another.returncode == 0, another.stdout + another.stderr
    assert (tmp_path / "secrets" / "hr" / "hr.env").exists()
    # The signer's volume holds neither the root key nor its passphrase (issue 10, item 6).
    assert not CAFolder(tmp_path / "state" / "ca").root_key_path.exists()
    kept = [path.name for path in (tmp_path / "state").rglob("*") if path.is_file()]
    assert not [name for name in kept if "root" in name and "pass" in name], kept
    acl_text = (tmp_path / "acl" / "users.acl").read_text()
    assert re.match(r"user default on #[0-9a-f]{64} ~\* &\* \+@all\n", acl_text), acl_text
    stem = KeyScope(folder_names(tmp_path / "state" / "ca").store_prefix).user_stem
    for role in ("signer", "operator", "producer-www", "producer-hr"):
        assert f"\nuser {stem}-{role} " in acl_text
    for env_file in (
        tmp_path / "state" / "ca" / "intermediate" / "private" / "redis" / "signer.env",
        tmp_path / "secrets" / "www" / "www.env",
    ):
        assert "$(cat " in env_file.read_text()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--aclfile", env["CASIGN_ACL_FILE"],
        "--save", "", "--appendonly", "no", "--dir", str(redis_dir),
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    roles = {name: value for name, value in env.items() if not name.endswith("_URL")}
    signer_log = tmp_path / "signer.log"
    try:
        with signer_log.open("wb") as log:
            signer = subprocess.Popen(
                [str(SCRIPTS / "docker-signer.sh"), "--concurrency", "1"],
                env=roles,
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_for_the_ca_record(tmp_path, port, signer_log)
            producer_command = [
                str(SCRIPTS / "docker-producer.sh"), "request", "--cn", "www.example.com",
                "--profile", "server_cert", "--out", str(tmp_path / "out"), "--timeout", "90",
            ]  # fmt: skip
            request = subprocess.run(
                producer_command,
                env=roles,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert request.returncode == 0, (
                request.stdout + request.stderr + signer_log.read_text(errors="replace")[-3000:]
            )
        finally:
            stop_process_group(signer, timeout=30)
        openssl(
            "verify", "-CAfile", tmp_path / "out" / "ca-chain.cert.pem",
            tmp_path / "out" / "www.example.com.cert.pem",
        )  # fmt: skip
        with (
            redis.Redis(host="127.0.0.1", port=port) as anonymous,
            pytest.raises(redis.exceptions.AuthenticationError),
        ):
            anonymous.get("casign:chain")
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_script_writes_outlive_a_kill_on_a_redis_loading_the_acl_file_casign_writes(
    tmp_path: Path, authority: SigningAuthority
) -> None:
    """Redis replays its AOF as the default user and (redis/redis#14541, 7.0.15 here) checks
    each MULTI/EXEC command against that user's rights: behind `user default off` every Lua
    script's writes (a batch published, its serials) were gone after a restart. The file casign
    writes keeps a default user no client can log in as, with the rights replay needs."""
    server = OwnedRedis(tmp_path / "redis", admin_password=secrets.token_hex(16))
    server.start()  # its ACL file begun by store.acl.write_user_line, as casign begins one
    try:
        assert server.acl_path.read_text().startswith("user default on #")
        with server.client() as admin, pytest.raises(redis.exceptions.AuthenticationError):
            admin.execute_command("AUTH", "default", "")
        store = ResultsStore.from_url(server.url, "aof-acl")
        jobs = [job(f"aof-{n}", make_csr(f"aof-{n}.example.com")) for n in range(3)]
        issued = BatchSigner(authority, store).sign_batch(jobs)
        assert all(result.ok for result in issued)
        store.close()
        server.restart(signal.SIGKILL, down_seconds=0.2)
        store = ResultsStore.from_url(server.url, "aof-acl")
        try:
            assert store.count_issued() == store.count_serials() == len(jobs)
            for result in issued:
                assert result.serial is not None
                assert store.certificate(result.serial) == result.certificate_pem
        finally:
            store.close()
        assert server.acl_denials() == []
    finally:
        server.stop()


def _wait_for_the_ca_record(state: Path, port: int, signer_log: Path) -> None:
    """Wait, as the operator, until the signer has recorded its CA (a producer names it)."""
    ca = state / "state" / "ca"
    password = (ca / "intermediate" / "private" / "redis" / "operator.redis-password").read_text()
    scope = KeyScope(folder_names(ca).store_prefix)  # the CA's own names, `casign-TAG`
    deadline = time.monotonic() + 60
    with redis.Redis(
        host="127.0.0.1",
        port=port,
        db=1,
        username=scope.user_name(Role.OPERATOR),
        password=password.strip(),
    ) as operator:
        while not operator.hget(scope.keys.ca, "id"):
            assert time.monotonic() < deadline, signer_log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)


def test_producers_toml_edits_keep_what_the_operator_wrote(tmp_path: Path) -> None:
    from casign.producers_file import ProducerEntry, add_producer, read_producers, remove_producer

    path = tmp_path / "producers.toml"
    written = (
        "# the operator's own notes\n"
        '[producers.web]\nsecret = "env:WEB"\n\n'
        '[producers."ops.team"]\nsecret = "env:OPS"\nnames = [\n  "a.example.com",\n]\n\n'
        '[producers."ops.team".subject]\nO = ["Ops"]\n\n'
        '[producers.hr]\nsecret = "env:HR"  # kept\n'
    )
    path.write_text(written)
    add_producer(path, ProducerEntry("new.one", "file:/s", ("usr_cert",), ("*@x.test",), 2.5, 5))
    assert path.read_text().startswith(written)
    assert read_producers(path)["new.one"] == {
        "secret": "file:/s",
        "profiles": ["usr_cert"],
        "names": ["*@x.test"],
        "rate_per_second": 2.5,
        "burst": 5,
    }
    assert remove_producer(path, "ops.team")
    assert remove_producer(path, "nobody") is False
    text = path.read_text()
    assert "Ops" not in text and "a.example.com" not in text
    assert "# the operator's own notes" in text and 'secret = "env:HR"  # kept' in text
    assert sorted(read_producers(path)) == ["hr", "new.one", "web"]


# --- anchors, rights, secrets ------------------------------------------------------------------
# Producers trust an anchor, not the store; producers revoke only what they obtained; CRLs are
# never made on a producer's message; the signer starts only when told to serve anyone, and
# never beside the root key; passwords stay off command lines; secret files stay private.
PRODUCER_QUEUE = "casign.sign"


def _cli(store: ResultsStore, queue: str, *args: str | Path) -> Result:
    """`casign ARGS` in this process, on the test's store prefix and queue."""
    env = {"CASIGN_STORE_PREFIX": store.prefix.rstrip(":"), "CASIGN_QUEUE": queue}
    return CliRunner().invoke(casign_main, [str(arg) for arg in args], env=env)


def _place(store: ResultsStore, queue: str, broker_url: str, redis_url: str) -> dict[str, str]:
    """The environment that points a `casign` process at the test's broker, store and queue."""
    return {
        "CASIGN_BROKER_URL": broker_url,
        "CASIGN_STORE_URL": redis_url,
        "CASIGN_STORE_PREFIX": store.prefix.rstrip(":"),
        "CASIGN_QUEUE": queue,
    }


def _certificates(pem: str | bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem if isinstance(pem, bytes) else pem.encode())


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.fixture
def own_ca(tmp_path: Path) -> CAFolder:
    """A CA of this test's own: some tests move its root key, or add files to it."""
    return make_alice_ca(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    """Another CA, whose chain an attacker with write access to the store would swap in."""
    return make_alice_ca(
        tmp_path_factory.mktemp("other") / "ca",
        root_cn="Mallory Root CA",
        intermediate_cn="Mallory Intermediate CA",
    )


@pytest.fixture
def drained(redis_url: str, queue: str) -> Iterator[str]:
    """The test's queue, emptied afterwards of what no worker took."""
    yield queue
    client = redis.Redis.from_url(redis_url)
    client.delete(queue)
    client.close()


def _signed_in_store(
    authority: SigningAuthority, store: ResultsStore, job_id: str, csr_pem: str
) -> JobResult:
    """What a worker leaves in the store for one job (signed in this process), chain included."""
    store.set_chain(authority.chain_pem)
    (result,) = BatchSigner(authority, store).sign_batch([job(job_id, csr_pem)])
    assert result.ok, result
    return result


# The swapped chain: the store's chain is another CA's.


def test_a_swapped_chain_is_reported_untrusted_and_no_chain_is_written(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    other_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    csr = tmp_path / "www.example.com.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    _signed_in_store(authority, store, "swapped-chain", csr.read_text())
    store.set_chain(other_ca.chain_pem())  # what a writer to the store could do
    out = tmp_path / "out"
    place = ["--broker", broker_url, "--store", redis_url]
    anchor = ["--trust-anchor", ca_folder.root_cert_path]

    done = _cli(
        store, queue, "submit", *place, *anchor, "--job-id", "swapped-chain", csr, "--out", out
    )
    assert done.exit_code == 3, done.output
    assert "[result.untrusted]" in done.output and "trust anchor" in done.output
    assert not (out / "ca-chain.cert.pem").exists()
    assert not (out / "www.example.com.cert.pem").exists()

    # With the chain put back, `collect` checks the same answer, and writes the chain it
    # validated: the real intermediate and the anchor.
    store.set_chain(ca_folder.chain_pem())
    done = _cli(store, queue, "collect", "--store", redis_url, *anchor, out)
    assert done.exit_code == 0, done.output
    written = _certificates((out / "ca-chain.cert.pem").read_bytes())
    assert written == _certificates(ca_folder.chain_pem())
    assert (out / "www.example.com.cert.pem").exists()


def test_a_fingerprint_anchor_takes_the_root_only_from_a_chain_that_holds_it(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    other_ca: CAFolder,
    store: ResultsStore,
) -> None:
    root_der = ca_folder.root_certificate().public_bytes(serialization.Encoding.DER)
    anchor = TrustAnchor.parse(hashlib.sha256(root_der).hexdigest())
    request_pem = make_csr("fp.example.com")
    result = _signed_in_store(authority, store, "fingerprint-anchor", request_pem)
    wanted = SignRequest.model_validate(job("fingerprint-anchor", request_pem))
    chains = {"real": ca_folder.chain_pem(), "other": other_ca.chain_pem()}
    swapped = ResultCheck(anchor, lambda: chains["other"]).check(result, wanted)
    assert swapped.code == RefusalCode.RESULT_UNTRUSTED and swapped.certificate_pem is None
    check = ResultCheck(anchor, lambda: chains["real"])
    assert check.check(result, wanted) == result
    assert _certificates(check.chain_pem() or "") == _certificates(ca_folder.chain_pem())


def test_later_certificates_of_a_validated_issuer_skip_the_path_until_it_expires(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    store: ResultsStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a path is validated, the next certificate its issuer signed is checked by that
    signature; once the clock is past the path's end, the path is validated again."""
    check = ResultCheck(TrustAnchor.parse(ca_folder.root_cert_path), store.chain)
    answers = []
    for name in ("first", "second", "third"):
        pem = make_csr(f"{name}.example.com")
        answers.append((_signed_in_store(authority, store, name, pem), job(name, pem)))
    (first, first_job), (second, second_job), (third, third_job) = answers
    assert check.check(first, SignRequest.model_validate(first_job)) == first
    validated: list[bool] = []
    offered_chain = check._offered_chain

    def counted(anchor: TrustAnchor, fresh: bool) -> object:
        validated.append(fresh)
        return offered_chain(anchor, fresh)

    monkeypatch.setattr(check, "_offered_chain", counted)
    assert check.check(second, SignRequest.model_validate(second_job)) == second
    assert validated == []
    later = authority.intermediate.not_valid_after_utc + timedelta(days=1)

    class AfterTheIntermediate(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> AfterTheIntermediate:
            return cls.fromtimestamp(later.timestamp(), tz)

    monkeypatch.setattr(producers.trust, "datetime", AfterTheIntermediate)
    assert check.check(third, SignRequest.model_validate(third_job)) == third  # the path's clock
    assert validated == [False]
    assert _certificates(check.chain_pem() or "") == _certificates(ca_folder.chain_pem())


def test_an_answer_that_is_the_anchor_itself_is_checked_without_failing(
    ca_folder: CAFolder, store: ResultsStore
) -> None:
    """Path validation takes the anchor itself as a path of one: there is no issuer above it
    to keep, and the check answers (here: the job was not this producer's request, so its
    certificate is checked against the anchor only) instead of failing."""
    store.set_chain(ca_folder.chain_pem())
    check = ResultCheck(TrustAnchor.parse(ca_folder.root_cert_path), store.chain)
    root = ca_folder.root_certificate()
    answer = JobResult(
        job_id="the-root",
        status="issued",
        serial=format_serial(root.serial_number),
        certificate_pem=root.public_bytes(serialization.Encoding.PEM).decode(),
    )
    assert check.check_unrequested(answer) == answer
    assert check._issuer is None


def test_after_a_validated_certificate_another_ca_s_is_still_untrusted(
    ca_folder: CAFolder, authority: SigningAuthority, other_ca: CAFolder, store: ResultsStore
) -> None:
    """The issuer of a validated path vouches for what it signed only, not for what the store
    offers next (here another CA's certificate and chain)."""
    check = ResultCheck(TrustAnchor.parse(ca_folder.root_cert_path), store.chain)
    ours_pem = make_csr("ours.example.com")
    ours = _signed_in_store(authority, store, "ours", ours_pem)
    assert check.check(ours, SignRequest.model_validate(job("ours", ours_pem))) == ours
    theirs_pem = make_csr("theirs.example.com")
    theirs = _signed_in_store(load_authority(other_ca.root), store, "theirs", theirs_pem)
    answer = check.check(theirs, SignRequest.model_validate(job("theirs", theirs_pem)))
    assert answer.code == RefusalCode.RESULT_UNTRUSTED and answer.certificate_pem is None
    assert _certificates(check.chain_pem() or "") == _certificates(ca_folder.chain_pem())


def test_an_answer_for_another_usage_or_under_another_serial_is_untrusted(
    ca_folder: CAFolder, authority: SigningAuthority, store: ResultsStore
) -> None:
    """The same key's certificate of another profile (a client certificate handed to a server
    request), or a true certificate under a serial it does not have, is not reported issued."""
    pem = make_csr("both.example.com")
    store.set_chain(authority.chain_pem)
    (client,) = BatchSigner(authority, store).sign_batch(
        [job("as-client", pem, "usr_cert", san=["email:both@example.com"])]
    )
    assert client.ok, client
    check = ResultCheck(TrustAnchor.parse(ca_folder.root_cert_path), store.chain)
    as_server = SignRequest.model_validate(job("as-client", pem, "server_cert"))
    wrong_usage = check.check(client, as_server)
    assert wrong_usage.code == RefusalCode.RESULT_UNTRUSTED
    assert "serverAuth" in (wrong_usage.message or "")
    as_client = SignRequest.model_validate(
        job("as-client", pem, "usr_cert", san=["email:both@example.com"])
    )
    assert check.check(client, as_client) == client
    renamed = check.check(client.model_copy(update={"serial": "0BADC0DE"}), as_client)
    assert renamed.code == RefusalCode.RESULT_UNTRUSTED and "serial" in (renamed.message or "")


def test_without_an_anchor_answers_are_still_taken_and_a_warning_is_logged_once(
    authority: SigningAuthority,
    store: ResultsStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producers.trust, "_warned_without_anchor", False)
    pem = make_csr("no-anchor.example.com")
    result = _signed_in_store(authority, store, "no-anchor", pem)
    request = SignRequest.model_validate(job("no-anchor", pem))
    check = ResultCheck(None, store.chain)
    with caplog.at_level(logging.WARNING, logger="casign.producer"):
        assert check.check(result, request) == result
        assert check.check(result, request) == result
        assert check.chain_pem() == store.chain()
    warned = [record for record in caplog.records if "no trust anchor" in record.getMessage()]
    assert len(warned) == 1


# A certificate for another key: an answer pushed by whoever can write to the store.


def test_a_certificate_for_another_key_is_reported_untrusted(
    ca_folder: CAFolder,
    authority: SigningAuthority,
    store: ResultsStore,
    drained: str,
    broker_url: str,
    redis_url: str,
) -> None:
    theirs = _signed_in_store(
        authority,
        store,
        "someone-else",
        make_csr("a.example.com", key=ec.generate_private_key(ec.SECP256R1())),
    )
    mine = ec.generate_private_key(ec.SECP256R1())
    with Producer(
        broker_url,
        redis_url,
        store_prefix=store.prefix,
        queue=drained,
        trust_anchor=ca_folder.root_cert_path,
    ) as producer:
        csr_pem = make_csr("a.example.com", key=mine)
        job_id = producer.submit(csr_pem)
        request = producer.request(csr_pem, job_id=job_id)
        reply_list = store.reply_key(producer.reply_to)

        def push(**fields: object) -> None:
            forged = JobResult(job_id=job_id, status="issued", **fields)  # type: ignore[arg-type]
            store.client.rpush(reply_list, forged.model_dump_json(exclude_none=True))

        # Without the request's fingerprint an answer is not one: it is ignored.
        push(serial=theirs.serial, certificate_pem=theirs.certificate_pem)
        with pytest.raises(TimeoutError):
            list(producer.results([job_id], timeout=2.5))
        # With it, the certificate is checked: another key's is reported, not handed out.
        push(
            serial=theirs.serial,
            certificate_pem=theirs.certificate_pem,
            fingerprint=request.fingerprint(),
        )
        (answer,) = producer.results([job_id], timeout=10)
        assert not answer.ok and answer.code == RefusalCode.RESULT_UNTRUSTED
        assert "another key" in (answer.message or "") and answer.certificate_pem is None
        assert producer.chain_pem() is None  # nothing validated, so no chain to hand out

        # A job it neither sent nor was told to expect cannot be waited for at all.
        with pytest.raises(ValueError, match="expect"):
            list(producer.results(["never-sent"], timeout=1))

        # The real answer, from the signer, passes every check.
        second = producer.submit(csr_pem)
        sent = producer.request(csr_pem, job_id=second)
        BatchSigner(authority, store).sign_batch([sent.model_dump()], reply_to=producer.reply_to)
        (issued,) = producer.results([second], timeout=10)
        assert issued.ok, issued
        assert _certificates(producer.chain_pem() or "") == _certificates(ca_folder.chain_pem())


# Reply lists: a sealed message's answers go to a list of its own producer's (`NAME:...`, the
# lists its Redis user pops), never to another producer's.

FOREIGN_REPLY_LIST = RefusalCode.AUTH_FOREIGN_REPLY_LIST


def test_a_batch_sealed_for_another_producers_reply_list_is_refused(
    records: RecordsSigner,
) -> None:
    """web-frontend seals a batch whose answers would go to hr-portal's list: one audit line,
    nothing under the job ids, no reply and no note on hr-portal's list."""
    hr_list = reply_list_name("hr-portal")
    job_ids = [records_id("misdirected") for _ in range(3)]
    jobs = [job(job_id, make_csr(f"{job_id}.example.com")) for job_id in job_ids]
    before = len(list(records.store.audit_entries()))

    results = records.submit(jobs, "web-frontend", reply_to=hr_list)

    assert {(r.status, r.code) for r in results.values()} == {("refused", FOREIGN_REPLY_LIST)}
    assert "not its own" in results[job_ids[0]].message
    assert all(records.store.job_state(job_id) == {} for job_id in job_ids)
    assert records.store.wait_replies(hr_list, timeout=0.2) == []
    assert EnvelopeLedger(records.store).refusal_note(hr_list) is None
    lines = [json.loads(e.partition(" ")[2]) for e in list(records.store.audit_entries())[before:]]
    assert [(line["reason"], line["claimed_by"]) for line in lines] == [
        (FOREIGN_REPLY_LIST, "web-frontend")
    ]
    # The same jobs sealed for a list of web-frontend's own are issued.
    own = reply_list_name("web-frontend")
    assert {r.status for r in records.submit(jobs, "web-frontend", reply_to=own).values()} == {
        "issued"
    }
    assert len(records.store.wait_replies(own, timeout=2)) == len(jobs)


def test_a_revocation_sealed_for_another_producers_reply_list_is_refused(
    records: RecordsSigner,
) -> None:
    """The same for a revocation: nothing revoked, one audit line, nothing on hr-portal's list."""
    request = job(records_id("revocable"), make_csr("revocable.example.com"))
    (issued,) = records.submit(
        [request], "web-frontend", reply_to=reply_list_name("web-frontend")
    ).values()
    assert issued.ok and issued.serial is not None
    hr_list = reply_list_name("hr-portal")
    revocation = RevokeRequest(
        request_id=uuid.uuid4().hex, serial=issued.serial, reason="superseded", reply_to=hr_list
    )
    envelope = seal(
        records.secrets["web-frontend"],
        MessageKind.REVOKE,
        producer="web-frontend",
        ca=ca_identity(records.authority.intermediate),
        queue=SIGN_QUEUE,
        reply_to=hr_list,
        payload=revocation.sealed_payload(),
    )
    sealed = revocation.model_copy(update={"envelope": envelope}).model_dump()
    revocations = RevocationStore(records.store)
    before = len(list(records.store.audit_entries()))

    assert handle_revoke(sealed, revocations, records.access()) is None

    assert records.store.index_entry(issued.serial).status is Status.VALID  # type: ignore[union-attr]
    assert records.store.wait_replies(hr_list, timeout=0.2) == []
    assert EnvelopeLedger(records.store).refusal_note(hr_list) is None
    lines = [json.loads(e.partition(" ")[2]) for e in list(records.store.audit_entries())[before:]]
    assert [(line["reason"], line["claimed_by"]) for line in lines] == [
        (FOREIGN_REPLY_LIST, "web-frontend")
    ]


# Revocation rights: a producer revokes what it obtained; the OCSP delegate only the operator.


def _seal_revocation(
    name: str, secret: bytes, ca: str, serial: str, reason: str
) -> dict[str, object]:
    request = RevokeRequest(
        request_id=uuid.uuid4().hex, serial=serial, reason=reason, reply_to=f"{name}:replies"
    )
    envelope = seal(
        secret,
        MessageKind.REVOKE,
        producer=name,
        ca=ca,
        queue=PRODUCER_QUEUE,
        reply_to=request.reply_to,
        payload=request.sealed_payload(),
    )
    return request.model_copy(update={"envelope": envelope}).model_dump()


def test_a_producer_revokes_only_what_it_obtained_and_never_the_ocsp_delegate(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    authority = load_authority(own_ca.root)
    ca = ca_identity(authority.intermediate)
    secrets_of = {name: (name * 32)[:32].encode() for name in ("web", "hr", "ops")}
    producers = {}
    for name, secret in secrets_of.items():
        monkeypatch.setenv(f"TEST_{name.upper()}_SECRET", secret.decode())
        rights = {"revoke": "any"} if name == "ops" else {}
        policy = ProducerPolicy(secret=f"env:TEST_{name.upper()}_SECRET", **rights)  # type: ignore[arg-type]
        producers[name] = AllowedProducer(name, secret, policy)
    access = AccessPolicy(producers, ca, PRODUCER_QUEUE)
    jobs = [job("web-order-1", make_csr("shop.example.com"))]
    envelope = seal(
        secrets_of["web"],
        MessageKind.SIGN,
        producer="web",
        ca=ca,
        queue=PRODUCER_QUEUE,
        reply_to="web:replies",
        payload=jobs,
    )
    (issued,) = BatchSigner(authority, store, access).sign_batch(jobs, "web:replies", envelope)
    assert issued.ok and issued.serial is not None
    serial = issued.serial
    revocations = RevocationStore(store)

    def revoke_as(name: str, target: str, reason: str = "keyCompromise") -> str | None:
        raw = _seal_revocation(name, secrets_of[name], ca, target, reason)
        result = handle_revoke(raw, revocations, access)
        assert result is not None
        return result.code

    def status(target: str) -> Status:
        entry = store.index_entry(target)
        assert entry is not None
        return entry.status

    assert revoke_as("hr", serial) == "revoke.not_allowed"  # web's certificate, not hr's
    assert revoke_as("web", serial, "CACompromise") == "revoke.not_allowed"  # not its reason
    assert status(serial) is Status.VALID
    assert '"reason":"revoke.not_allowed"' in list(store.audit_entries())[-1]
    assert revoke_as("web", serial) is None and status(serial) is Status.REVOKED

    delegate = ensure_ocsp_certificate(own_ca, authority, store)
    delegate_serial = f"{delegate.certificate.serial_number:X}"
    delegate_serial = delegate_serial.rjust(len(delegate_serial) + len(delegate_serial) % 2, "0")
    assert revoke_as("ops", delegate_serial) == "revoke.not_allowed"  # revoke = "any" or not
    unsealed = RevokeRequest(request_id="open-1", serial=delegate_serial, reply_to="anyone")
    open_signer = handle_revoke(unsealed.model_dump(), revocations, None)
    assert open_signer is not None and open_signer.code == "revoke.not_allowed"
    assert status(delegate_serial) is Status.VALID

    done = _cli(
        store, queue, "revoke", delegate_serial, "--in-process", "--ca", own_ca.root,
        "--store", redis_url, "--reason", "keyCompromise",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert status(delegate_serial) is Status.REVOKED
    assert '"requester":"operator"' in list(store.audit_entries())[-1]


# CRLs: on the signer's own schedule, never on a producer's message.


def _crl_number(revocations: RevocationStore) -> int | None:
    crl = revocations.latest_crl()
    if crl is None:
        return None
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_a_crl_message_from_a_producer_is_not_acted_on(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    revocations = RevocationStore(store)
    worker = start_worker(
        own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1, flags=["--beat"]
    )
    try:
        deadline = time.monotonic() + 60
        while (scheduled := _crl_number(revocations)) is None:
            assert time.monotonic() < deadline, worker.log()[-2000:]
            time.sleep(0.2)
        app = Celery("a-producer", set_as_current=False)
        app.conf.update(celery_settings(broker_url, queue))
        app.send_task(CRL_TASK, queue=queue, ignore_result=True)
        app.close()
        # A job queued behind it is answered, so the worker has been past the CRL message.
        with Producer(broker_url, redis_url, store_prefix=store.prefix, queue=queue) as producer:
            (result,) = producer.results([producer.submit(make_csr("after.example.com"))], 60)
        assert result.ok, result
        time.sleep(1.0)
    finally:
        worker.stop()
    assert _crl_number(revocations) == scheduled
    assert "unregistered task" in worker.log() and CRL_TASK in worker.log()


# Open mode only when asked; never beside the root key.


def test_without_producers_toml_the_worker_refuses_to_start_unless_open(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    place = _place(store, queue, broker_url, redis_url)
    refused = run_casign(
        "worker", "--ca", own_ca.root, "--no-restart", "--allow-root-key", env=place, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{own_ca.producers_path} is absent" in refused.stderr and "--open" in refused.stderr
    assert "celery@" not in refused.stdout + refused.stderr  # refused before Celery started

    worker = start_worker(own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1)
    worker.stop()
    assert "open mode (--open)" in worker.log()


def test_a_readable_root_key_stops_the_worker(
    own_ca: CAFolder,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    place = _place(store, queue, broker_url, redis_url)
    refused = run_casign(
        "worker", "--ca", own_ca.root, "--no-restart", "--open", env=place, timeout=60
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert str(own_ca.root_key_path) in refused.stderr and "--allow-root-key" in refused.stderr

    offline = tmp_path / "offline-media"
    offline.mkdir()
    shutil.move(own_ca.root_key_path, offline / "ca.key.pem")
    worker = start_worker(
        own_ca.root, broker_url, redis_url, store, queue, tmp_path / "w.log", 1,
        allow_root_key=False,
    )  # fmt: skip
    worker.stop()


def test_init_keeps_the_root_passphrase_apart_and_writes_it_nowhere(tmp_path: Path) -> None:
    intermediate_pass = _private(tmp_path / "intermediate.pass", "intermediate passphrase\n")
    root_pass = _private(tmp_path / "root.pass", "a root passphrase of its own\n")
    same = run_casign(
        "init", tmp_path / "same", "--key-type", "p256",
        "--passphrase-file", intermediate_pass, "--root-passphrase-file", intermediate_pass,
    )  # fmt: skip
    assert same.returncode == 2 and "a passphrase of its own" in same.stderr
    done = run_casign(
        "init", tmp_path / "ca", "--key-type", "p256",
        "--passphrase-file", intermediate_pass, "--root-passphrase-file", root_pass,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "offline media" in done.stdout
    folder = CAFolder(tmp_path / "ca")
    root_pem = folder.root_key_path.read_bytes()
    serialization.load_pem_private_key(root_pem, b"a root passphrase of its own")
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(root_pem, b"intermediate passphrase")
    load_signing_key(folder.intermediate_key_uri())  # the intermediate's, from casign.toml
    for path in folder.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"a root passphrase of its own" not in data
            assert str(root_pass).encode() not in data, path


# Secrets and files.


def test_a_planted_symlink_at_the_chain_file_leaves_the_key_untouched(
    authority: SigningAuthority,
    store: ResultsStore,
    queue: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    csr = tmp_path / "www.example.com.csr.pem"
    csr.write_text(make_csr("www.example.com"))
    _signed_in_store(authority, store, "planted-link", csr.read_text())
    out = tmp_path / "out"
    out.mkdir()
    key = out / "www.example.com.key.pem"
    write_private_key(key, KeyType.P256.generate(), None)  # 0400
    before = key.read_bytes()
    (out / "ca-chain.cert.pem").symlink_to(key)

    done = _cli(
        store, queue, "submit", "--broker", broker_url, "--store", redis_url,
        "--job-id", "planted-link", csr, "--out", out,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert key.read_bytes() == before and (key.stat().st_mode & 0o777) == 0o400
    chain = out / "ca-chain.cert.pem"
    assert not chain.is_symlink() and (chain.stat().st_mode & 0o777) == 0o444
    assert _certificates(chain.read_bytes()) == _certificates(authority.chain_pem)


def test_a_planted_symlink_at_the_embedded_redis_conf_leaves_its_target_untouched(
    own_ca: CAFolder, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.key.pem"
    write_private_key(victim, KeyType.P256.generate(), None)  # 0400
    before = victim.read_bytes()
    (own_ca.root / "redis.conf").symlink_to(victim)
    with EmbeddedRedis(own_ca.root).running() as embedded:
        assert embedded.is_running()
    assert victim.read_bytes() == before and (victim.stat().st_mode & 0o777) == 0o400
    assert not (own_ca.root / "redis.conf").is_symlink()


def _with_password(redis_url: str, user: str, password: str) -> str:
    parts = urlsplit(redis_url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _process_tree(pid: int) -> list[int]:
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == parent:
                tree.append(int(stat_file.parent.name))
                frontier.append(int(stat_file.parent.name))
    return tree


def test_the_supervised_worker_child_has_no_password_on_its_command_line(
    own_ca: CAFolder, store: ResultsStore, queue: str, redis_url: str, tmp_path: Path
) -> None:
    if not redis_url.startswith("redis://"):
        pytest.skip("needs a Redis on TCP to give a password to")
    user, password = f"casign-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all"],
    )
    url = _with_password(redis_url, user, password)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASIGN_")}
    env |= _place(store, queue, url, url)
    log_path = tmp_path / "supervisor.log"
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen(
            [*CASIGN, "worker", "--ca", str(own_ca.root), "--open", "--allow-root-key",
             "--concurrency", "1", "--loglevel", "WARNING"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while store.chain() is None:  # a pool process of the child has opened the key
            assert supervisor.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        tree = _process_tree(supervisor.pid)
        assert len(tree) >= 3  # the supervisor, its Celery worker, a pool process
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in tree]
    finally:
        stop_process_group(supervisor, timeout=30)
        admin.acl_deluser(user)
        admin.close()
    assert any(b"--no-restart" in line for line in command_lines)  # the child was seen
    for line in command_lines:
        assert password.encode() not in line, line.replace(b"\0", b" ")


def test_a_secret_file_open_to_its_group_or_others_is_refused(
    broker_url: str, redis_url: str, tmp_path: Path
) -> None:
    secret = _private(tmp_path / "web.secret", "w" * 32 + "\n", 0o640)
    with pytest.raises(ConfigurationError, match=f"{secret}.* mode 0640") as refused:
        Producer(broker_url, redis_url, identity="web", secret_source=f"file:{secret}")
    assert "chmod 600" in str(refused.value) and "w" * 16 not in str(refused.value)
    pin = parse_key_uri(f"file:{tmp_path / 'k.pem'}?pin-source=file:{secret}")
    with pytest.raises(ConfigurationError, match=str(secret)):
        pin.read_pin()
    secret.chmod(0o604)
    init = run_casign("init", tmp_path / "ca", "--key-type", "p256", "--passphrase-file", secret)
    assert init.returncode == 2 and f"{secret}' is mode 0604" in init.stderr
    assert not (tmp_path / "ca").exists()
    secret.chmod(0o600)
    Producer(broker_url, redis_url, identity="web", secret_source=f"file:{secret}").close()


def test_an_empty_passphrase_file_is_refused_everywhere(
    own_ca: CAFolder,
    store: ResultsStore,
    drained: str,
    broker_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    empty = _private(tmp_path / "empty.pass", "\n")
    out = tmp_path / "out"
    request = run_casign(
        "request", "--cn", "www.example.com", "--passphrase-file", empty, "--out", out,
        "--timeout", "3", env=_place(store, drained, broker_url, redis_url),
    )  # fmt: skip
    assert request.returncode == 2, request.stdout + request.stderr
    assert f"{empty}' is empty" in request.stderr
    assert not out.exists() or not any(out.iterdir())

    init = run_casign("init", tmp_path / "new-ca", "--passphrase-file", empty)
    assert init.returncode == 2 and "is empty" in init.stderr
    with pytest.raises(ConfigurationError, match="is empty"):
        adopt_ca(own_ca.root, store, empty)
    with pytest.raises(ConfigurationError, match="is empty"):
        parse_key_uri(f"file:{own_ca.intermediate_key_path}?pin-source=file:{empty}").read_pin()
    with pytest.raises(ValueError, match="unencrypted"):
        write_private_key(tmp_path / "k.pem", KeyType.P256.generate(), "")


def test_a_batch_delivered_again_after_it_was_served_leaves_no_note(
    records: RecordsSigner,
) -> None:
    """A worker that died after remembering a batch's seal, before the broker heard it was done,
    gets the batch back as a replay: refused with one audit line, and no note on the producer's
    reply list, which would report the producer's other waiting jobs refused."""
    web_list = reply_list_name("web-frontend")
    signer = records.signer()
    job_id = records_id("served")
    jobs = [job(job_id, make_csr("served.example.com"))]
    envelope = records.sealed(signer, jobs, "web-frontend", web_list)
    (served,) = signer.sign_batch(jobs, web_list, envelope)
    assert served.status == "issued"
    before = len(list(records.store.audit_entries()))

    (again,) = signer.sign_batch(jobs, web_list, envelope)

    assert (again.status, again.code) == ("refused", RefusalCode.AUTH_REPLAYED)
    assert EnvelopeLedger(records.store).refusal_note(web_list) is None
    assert len(list(records.store.audit_entries())) == before + 1
    assert records.store.job_state(job_id)["state"] == "issued"
