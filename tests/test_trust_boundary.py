"""The trust boundary (issue 10): each attack on "producers only ask, the signer decides", as a test.

One section per part of the boundary, each with its own fixtures and helpers, against the real
Redis of the other tests (a fresh key prefix each).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from casign.cli import main as casign_main
from core.audit import verify_chain
from core.auth import MessageKind, ca_identity, seal
from core.errors import ConfigurationError
from core.index import format_serial
from core.keys import KeyType
from core.messages import JobResult, parse_sign_request
from core.queue import SIGN_QUEUE
from producers import Producer
from store.envelopes import EnvelopeLedger
from store.results import ResultsStore
from tests.csrs import job, make_csr
from tests.workers import start_worker
from worker.access import AccessPolicy
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder, CAOptions, init_ca
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

    results = records.submit([request], "hr-portal", reply_to="hr-replies")

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
    records.reserve_only([request], "web-frontend", reply_to="web-replies")
    data = json.loads(records.stored_record(job_id))
    data["profile"] = escalating_profile(records.authority)
    records.store.client.hset(records.store.job_key(job_id), "record", json.dumps(data))

    if path == "redelivery":
        result = records.submit([request], "web-frontend", reply_to="web-replies")[job_id]
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
    records.reserve_only([request], "web-frontend", reply_to="web-replies")
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
        result = records.submit([request], "web-frontend", "web-replies", signer=changed)[job_id]
    else:
        assert changed.recover_pending() == []
        (result,) = records.store.wait_replies("web-replies", timeout=2)

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
    records.reserve_only([request], "hr-portal", reply_to="hr-replies")

    assert records.signer(records.access(**rights)).recover_pending() == []

    (reply,) = records.store.wait_replies("hr-replies", timeout=2)
    assert_closed_refused(records, job_id, code, reply)
    (line,) = records.audit_of(job_id)
    assert (line["event"], line["reason"], line["requester"]) == ("refused", code, "hr-portal")


def test_records_recovery_signs_a_genuine_record_its_producer_may_still_have(
    records: RecordsSigner,
) -> None:
    job_id = records_id("genuine")
    request = job(job_id, make_csr("alice@example.com"), profile="usr_cert")
    records.reserve_only([request], "hr-portal", reply_to="hr-replies")

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
