"""Each issuance step on its own, a batch where one job's signature fails, the OCSP delegate
through the steps, and the time rules (backdated notBefore, clamp, CA expiry).

Steps run against the real Redis of the other tests (a fresh key prefix each) and the session's
RSA-2048 CA; a CA key that misbehaves for one marked subject stands in for a failing token.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from core.audit import verify_chain
from core.auth import MessageKind, seal
from core.errors import ConfigurationError, IssuanceFault, RefusalCode, Rejected, Retryable
from core.files import CERT_MODE, write_file_atomically
from core.index import IndexEntry, format_serial
from core.messages import Envelope
from store.envelopes import EnvelopeLedger
from store.results import ResultsStore
from tests.cas import make_alice_ca
from tests.csrs import job, make_csr
from worker.access import AccessPolicy, AllowedProducer, ProducerPolicy
from worker.authority import SigningAuthority, load_authority
from worker.cafolder import CAFolder
from worker.issuance import BatchSigner
from worker.issuance.record import SERIAL_BITS, StoredRecord
from worker.issuance.steps import (
    Admitted,
    Answered,
    Authenticated,
    Built,
    Decided,
    Fixed,
    Received,
    Refused,
    Reserved,
    Signed,
    admit,
    authenticate,
    build_tbs,
    fix_record,
    publish,
    receive,
    reserve,
    sign,
    validity,
    verify,
    within_rate,
)
from worker.ocsp_delegate import ensure_ocsp_certificate
from worker.profiles import ProfileSet, default_profiles_toml

# A little ahead of the clock: the session's test CA is made after this module is imported, and
# a record is never dated before its CA's notBefore (a NOW before the CA existed would be one).
NOW = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
WEB_SECRET = secrets.token_bytes(32)


def open_batch(
    *jobs: dict[str, object], now: datetime = NOW, reply_to: str | None = None
) -> Authenticated:
    return authenticate(list(jobs), reply_to, None, None, None, now)


def admitted(authority: SigningAuthority, raw: dict[str, object], now: datetime = NOW) -> Admitted:
    batch = open_batch(raw, now=now)
    return admit(receive(raw), batch, authority.profiles, authority.common_names)


def built_from(authority: SigningAuthority, raw: dict[str, object]) -> Built:
    """Steps 2 to 4 for one job of an open signer."""
    return build_tbs(fix_record(admitted(authority, raw), authority, open_batch(raw)), authority)


def built(authority: SigningAuthority, name: str, **fields: object) -> Built:
    return built_from(authority, job(name, make_csr(f"{name}.example.com"), **fields))


def reserved_one(authority: SigningAuthority, store: ResultsStore, name: str) -> Reserved:
    (outcome,) = reserve([built(authority, name)], store, authority)
    assert isinstance(outcome, Reserved)
    return outcome


def web_access(**policy: Any) -> AccessPolicy:
    settings = ProducerPolicy(secret="env:UNUSED", **policy)
    return AccessPolicy({"web": AllowedProducer("web", WEB_SECRET, settings)}, "c" * 64, "q")


def sealed_by_web(jobs: list[object], reply_to: str | None, access: AccessPolicy) -> Envelope:
    return seal(
        WEB_SECRET,
        MessageKind.SIGN,
        producer="web",
        ca=access.ca,
        queue=access.queue,
        reply_to=reply_to,
        payload=jobs,
        now=NOW.timestamp(),
    )


def web_batch(
    jobs: list[object], reply_to: str | None, access: AccessPolicy, store: ResultsStore
) -> Authenticated:
    envelope = sealed_by_web(jobs, reply_to, access)
    return authenticate(jobs, reply_to, envelope, access, EnvelopeLedger(store), NOW)


# -- 1. authenticate ---------------------------------------------------------------------------


def test_authenticate_names_the_producer_whose_seal_covers_the_batch(store: ResultsStore) -> None:
    jobs: list[object] = [job("a", make_csr("a.example.com"))]
    access, ledger = web_access(), EnvelopeLedger(store)
    envelope = sealed_by_web(jobs, "web:replies", access)
    batch = authenticate(jobs, "web:replies", envelope, access, ledger, NOW)
    assert batch.producer is not None and batch.producer.name == "web"
    assert (batch.jobs, batch.reply_to, batch.now) == (tuple(jobs), "web:replies", NOW)

    with pytest.raises(Rejected) as unsigned:
        authenticate(jobs, "web:replies", None, access, ledger, NOW)
    assert unsigned.value.code == RefusalCode.AUTH_UNSIGNED
    with pytest.raises(Rejected) as forged:
        authenticate(jobs, "elsewhere", envelope, access, ledger, NOW)
    assert forged.value.code == RefusalCode.AUTH_BAD_SIGNATURE
    ledger.remember("web", envelope.nonce, envelope.expires_at)
    with pytest.raises(Rejected) as replayed:
        authenticate(jobs, "web:replies", envelope, access, ledger, NOW)
    assert replayed.value.code == RefusalCode.AUTH_REPLAYED
    assert authenticate(jobs, None, None, None, None, NOW).producer is None


# -- 2. admit ----------------------------------------------------------------------------------


def test_receive_validates_and_fingerprints_once() -> None:
    raw = job("r", make_csr("r.example.com"), san=["DNS:r.example.com"])
    received = receive(raw)
    assert isinstance(received, Received)
    assert received.fingerprint == received.request.fingerprint()
    with pytest.raises(ValueError, match="job_id"):
        receive({"job_id": "", "csr_pem": "x"})


def test_admit_keeps_the_names_as_general_name_objects(authority: SigningAuthority) -> None:
    raw = job("names", make_csr("names.example.com"), san=["DNS:alt.example.com", "IP:192.0.2.7"])
    result = admitted(authority, raw)
    assert result.job_id == "names"
    assert result.fingerprint == receive(raw).fingerprint
    assert result.checked.subject_alternative_names == (
        x509.DNSName("alt.example.com"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
    )
    with pytest.raises(Rejected) as refused:
        admitted(authority, job("nope", make_csr("nope.example.com"), "no_such_profile"))
    assert refused.value.code == RefusalCode.PROFILE_UNKNOWN


def test_admit_applies_the_producers_names(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    raw = job("elsewhere", make_csr("www.elsewhere.test"))
    access = web_access(names=["*.example.com"])
    batch = web_batch([raw], None, access, store)
    with pytest.raises(Rejected) as refused:
        admit(receive(raw), batch, authority.profiles, authority.common_names)
    assert refused.value.code == RefusalCode.AUTH_NAME_NOT_ALLOWED
    allowed = job("allowed", make_csr("www.example.com"))
    batch = web_batch([allowed], None, access, store)
    assert (
        admit(receive(allowed), batch, authority.profiles, authority.common_names).requester
        == "web"
    )


def test_within_rate_grants_the_bucket_and_known_jobs_cost_nothing(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    access = web_access(rate_per_second=0.001, burst=2)
    raws = [job(f"rate-{n}", make_csr(f"rate-{n}.example.com")) for n in range(3)]
    batch = web_batch(list(raws), None, access, store)
    jobs = [admit(receive(raw), batch, authority.profiles, authority.common_names) for raw in raws]
    granted, over = within_rate(jobs, batch, access, store)
    assert [job.job_id for job in granted] == ["rate-0", "rate-1"]
    assert [(o.job_id, o.refusal.code, o.recorded) for o in over] == [
        ("rate-2", RefusalCode.AUTH_RATE_LIMITED, False)
    ]
    # Once the store knows a job (a redelivery), the empty bucket does not refuse it.
    reserve([build_tbs(fix_record(jobs[0], authority, batch), authority)], store, authority)
    granted, over = within_rate(jobs[:1], batch, access, store)
    assert [job.job_id for job in granted] == ["rate-0"] and over == []
    assert within_rate(jobs, open_batch(*raws), None, store) == (jobs, [])


# -- 3. fix the record -------------------------------------------------------------------------


def test_fix_record_draws_a_serial_and_fixes_a_backdated_validity(
    authority: SigningAuthority,
) -> None:
    now = authority.intermediate.not_valid_before_utc + timedelta(days=1, microseconds=1234)
    raw = job("fix", make_csr("fix.example.com"), days=90)
    batch = open_batch(raw, now=now, reply_to="replies")
    fixed = fix_record(admitted(authority, raw, now), authority, batch)
    record = fixed.record
    assert isinstance(fixed, Fixed) and fixed.job_id == "fix"
    assert 1 << 64 <= record.serial < 1 << SERIAL_BITS
    assert record.not_before == now.replace(microsecond=0) - timedelta(minutes=5)
    assert record.not_after - record.not_before == timedelta(days=90)
    assert (record.reply_to, record.profile.name) == ("replies", "server_cert")
    assert record.subject_alternative_names == (x509.DNSName("fix.example.com"),)
    assert fixed.applicant.subject.rfc4514_string() == "CN=fix.example.com"


def test_the_record_stores_names_as_text_and_reads_them_back(authority: SigningAuthority) -> None:
    raw = job("text", make_csr("text.example.com"), san=["DNS:text.example.com", "IP:2001:db8::1"])
    record = fix_record(admitted(authority, raw), authority, open_batch(raw)).record
    digest = authority.profile_digest(record.profile)
    sealed = record.sealed(authority.record_key, "prefix:", digest)
    stored = json.loads(sealed)
    assert stored["san"] == ["DNS:text.example.com", "IP:2001:db8::1"]
    assert stored["profile"] == {"name": "server_cert", "sha256": digest}  # never the profile
    opened = StoredRecord.opened(sealed, "text", authority.record_key, "prefix:")
    assert opened.with_profile(record.profile, digest) == record
    # Sealed for one job under one store prefix: read as another's, it is no record.
    for job_id, prefix in (("other", "prefix:"), ("text", "other:")):
        with pytest.raises(Rejected) as moved:
            StoredRecord.opened(sealed, job_id, authority.record_key, prefix)
        assert moved.value.code == RefusalCode.STORE_RECORD_INVALID


def test_fix_record_refuses_a_validity_past_the_ca_naming_its_expiry(
    authority: SigningAuthority,
) -> None:
    expires = authority.intermediate.not_valid_after_utc
    late = expires - timedelta(days=10)
    raw = job("late", make_csr("late.example.com"), days=30)
    with pytest.raises(Rejected) as refused:
        fix_record(admitted(authority, raw, late), authority, open_batch(raw, now=late))
    assert refused.value.code == RefusalCode.VALIDITY_TOO_LONG
    assert f"expires {expires:%Y-%m-%d}" in refused.value.message


# -- 4. build the TBS --------------------------------------------------------------------------


def test_build_tbs_is_the_record_and_the_profile(authority: SigningAuthority) -> None:
    item = built(authority, "tbs", san=["DNS:alt.example.com"])
    certificate = item.tbs.sign(authority.key, hashes.SHA256())
    record = item.record
    assert certificate.serial_number == record.serial
    assert certificate.not_valid_before_utc == record.not_before
    assert certificate.not_valid_after_utc == record.not_after
    assert certificate.issuer == authority.intermediate.subject
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("alt.example.com")]  # asked for: the CN is not added
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


# -- 5. reserve --------------------------------------------------------------------------------


def test_reserve_records_before_signing_and_settles_redeliveries(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    raw = job("res", make_csr("res.example.com"))
    first = built_from(authority, raw)
    (outcome,) = reserve([first], store, authority)
    assert isinstance(outcome, Reserved) and outcome.record == first.record
    assert store.job_state("res")["state"] == "reserved"
    assert [job_id for job_id, _ in store.pending_records()] == ["res"]

    # The same job again, with a freshly drawn serial: the stored record wins, byte for byte.
    again = built_from(authority, raw)
    (outcome,) = reserve([again], store, authority)
    assert isinstance(outcome, Reserved)
    assert outcome.record.serial == first.record.serial != again.record.serial

    # Another request under the same job id is refused, and not recorded over the first.
    other = built_from(authority, job("res", make_csr("other.example.com")))
    (refused,) = reserve([other], store, authority)
    assert isinstance(refused, Refused)
    assert (refused.refusal.code, refused.recorded) == (RefusalCode.JOB_ID_REUSED, False)


def test_reserve_draws_again_when_the_serial_is_taken(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    item = built(authority, "taken")
    store.client.hset(store.key("serials"), item.record.serial_hex, "someone-else")
    (outcome,) = reserve([item], store, authority)
    assert isinstance(outcome, Reserved)
    assert outcome.record.serial != item.record.serial
    assert outcome.tbs.sign(authority.key, hashes.SHA256()).serial_number == outcome.record.serial


def test_reserve_answers_a_published_job_from_the_store(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    raw = job("done", make_csr("done.example.com"))
    (result,) = BatchSigner(authority, store).sign_batch([raw])
    (outcome,) = reserve([built_from(authority, raw)], store, authority)
    assert isinstance(outcome, Answered)
    assert (outcome.result.serial, outcome.result.certificate_pem) == (
        result.serial,
        result.certificate_pem,
    )


# -- 6, 7. sign and verify ---------------------------------------------------------------------


def test_sign_then_verify(authority: SigningAuthority, store: ResultsStore) -> None:
    reserved = reserved_one(authority, store, "sv")
    signed = sign(reserved, authority)
    assert isinstance(signed, Signed)
    assert signed.certificate.serial_number == reserved.record.serial
    verified = verify(signed, authority, NOW)
    assert verified.certificate is signed.certificate


def test_verify_refuses_what_differs_from_its_record(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    signed = sign(reserved_one(authority, store, "differs"), authority)
    moved = dataclasses.replace(signed.record, not_after=signed.record.not_after + timedelta(1))
    with pytest.raises(IssuanceFault, match="differs from its record"):
        verify(dataclasses.replace(signed, record=moved), authority, NOW)
    # A record dated later than now + a few seconds: a clock gone wrong.
    with pytest.raises(IssuanceFault, match="differs from its record"):
        verify(signed, authority, signed.record.not_before - timedelta(minutes=1))


def test_verify_refuses_a_foreign_signature_and_a_ca_certificate(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    reserved = reserved_one(authority, store, "foreign")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = Signed(
        reserved.record, reserved.applicant, reserved.tbs.sign(stranger, hashes.SHA256())
    )
    with pytest.raises(IssuanceFault, match="does not verify"):
        verify(forged, authority, NOW)
    ca_tbs = x509.CertificateBuilder(
        issuer_name=authority.intermediate.subject,
        subject_name=reserved.applicant.subject,
        public_key=reserved.applicant.public_key,
        serial_number=reserved.record.serial,
        not_valid_before=reserved.record.not_before,
        not_valid_after=reserved.record.not_after,
    ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    as_ca = Signed(reserved.record, reserved.applicant, ca_tbs.sign(authority.key, hashes.SHA256()))
    with pytest.raises(IssuanceFault, match="CA certificate"):
        verify(as_ca, authority, NOW)


# -- 8. publish --------------------------------------------------------------------------------


def test_publish_stores_certificate_index_line_and_audit_line(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    verified = verify(sign(reserved_one(authority, store, "pub"), authority), authority, NOW)
    (issued,) = publish([verified], Decided(), store, None, NOW)
    serial = verified.record.serial_hex
    assert issued.serial == serial
    assert store.certificate(serial) == issued.certificate_pem
    assert store.job_state("pub")["state"] == "issued"
    assert store.pending_records() == []
    entry = IndexEntry.from_openssl_line(next(iter(store.index_lines())))
    assert (entry.serial, entry.subject) == (verified.record.serial, "/CN=pub.example.com")
    (line,) = [json.loads(e.partition(" ")[2]) for e in store.audit_entries()]
    assert (line["event"], line["job_id"], line["serial"]) == ("issued", "pub", serial)


# -- one job fails in sign or verify, the batch goes on ------------------------------------------


class MarkedKey(rsa.RSAPrivateKey):
    """The CA key, except for a TBS holding `marker`: then `on_marked` signs (or raises)."""

    def __init__(
        self,
        real: rsa.RSAPrivateKey,
        marker: bytes,
        on_marked: Callable[[bytes, asym_padding.AsymmetricPadding, Any], bytes],
    ) -> None:
        self.real, self.marker, self.on_marked = real, marker, on_marked

    def sign(self, data: Any, padding: Any, algorithm: Any) -> bytes:
        if self.marker in bytes(data):
            return self.on_marked(bytes(data), padding, algorithm)
        return self.real.sign(data, padding, algorithm)

    def public_key(self) -> rsa.RSAPublicKey:
        return self.real.public_key()

    @property
    def key_size(self) -> int:
        return self.real.key_size

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        return self.real.decrypt(ciphertext, padding)

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self.real.private_numbers()

    def private_bytes(self, *args: Any) -> bytes:
        return self.real.private_bytes(*args)

    def __copy__(self) -> MarkedKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> MarkedKey:
        return self


def token_refuses(*_: object) -> NoReturn:
    raise ConfigurationError("pkcs11:token=ca: the token refuses SHA256_RSA_PKCS (injected)")


def token_unavailable(*_: object) -> NoReturn:
    raise Retryable("pkcs11:token=ca: the token failed while signing (injected)")


def wrong_key_signs(data: bytes, padding: Any, algorithm: Any) -> bytes:
    return _STRANGER.sign(data, padding, algorithm)


_STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def with_key(
    authority: SigningAuthority, marker: str, on_marked: Callable[..., bytes]
) -> SigningAuthority:
    assert isinstance(authority.key, rsa.RSAPrivateKey)
    return dataclasses.replace(authority, key=MarkedKey(authority.key, marker.encode(), on_marked))


def three_jobs(tag: str) -> list[dict[str, object]]:
    return [job(f"{tag}-{n}", make_csr(f"{tag}-{n}.example.com")) for n in ("a", "bad", "c")]


@pytest.mark.parametrize(
    ("on_marked", "error"),
    [(token_refuses, "ConfigurationError"), (wrong_key_signs, "IssuanceFault")],
    ids=["sign-raises", "verify-fails"],
)
def test_one_job_failing_in_sign_or_verify_fails_alone(
    authority: SigningAuthority,
    store: ResultsStore,
    on_marked: Callable[..., bytes],
    error: str,
) -> None:
    jobs = three_jobs("alone")
    faulty = with_key(authority, "alone-bad.example.com", on_marked)
    results = {r.job_id: r for r in BatchSigner(faulty, store).sign_batch(jobs, "replies")}

    assert [results[f"alone-{n}"].status for n in ("a", "bad", "c")] == [
        "issued",
        "failed",
        "issued",
    ]
    failed = results["alone-bad"]
    assert failed.code == "internal.error" and error in (failed.message or "")
    assert store.count_issued() == 2
    for name in ("alone-a", "alone-c"):
        assert store.certificate(results[name].serial or "") == results[name].certificate_pem
    # Reported failed only after the reservation was closed: nothing is left for recovery.
    state = store.job_state("alone-bad")
    assert (state["state"], state["code"]) == ("failed", "internal.error")
    assert store.pending_records() == []
    assert BatchSigner(authority, store).recover_pending() == []
    assert store.count_issued() == 2
    replies = {r.job_id: r for r in store.wait_replies("replies", timeout=2)}
    assert {job_id: r.status for job_id, r in replies.items()} == {
        "alone-a": "issued",
        "alone-bad": "failed",
        "alone-c": "issued",
    }
    # Delivered again with a working key: the same answers, the failed job still failed.
    again = {r.job_id: r for r in BatchSigner(authority, store).sign_batch(jobs)}
    assert again["alone-bad"].status == "failed"
    assert again["alone-a"].certificate_pem == results["alone-a"].certificate_pem
    assert store.count_issued() == 2
    entries = list(store.audit_entries())
    assert verify_chain(entries, store.audit_head()).ok
    events = [json.loads(e.partition(" ")[2]) for e in entries]
    assert [(e["event"], e["job_id"]) for e in events if e["event"] == "failed"] == [
        ("failed", "alone-bad")
    ]
    serial = state["serial"]
    assert store.client.hget(store.key("serials"), serial) == "alone-bad"  # never drawn again


def test_a_retryable_key_error_leaves_the_whole_batch_for_a_retry(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    jobs = three_jobs("retry")
    with pytest.raises(Retryable):
        BatchSigner(with_key(authority, "retry-bad", token_unavailable), store).sign_batch(jobs)
    assert store.count_issued() == 0
    assert len(store.pending_records()) == 3
    results = BatchSigner(authority, store).sign_batch(jobs)
    assert [r.status for r in results] == ["issued"] * 3
    assert store.pending_records() == []


def test_a_record_failing_in_recovery_is_closed_not_issued(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    reserved_one(authority, store, "rec-a")
    reserved_one(authority, store, "rec-bad")
    faulty = with_key(authority, "rec-bad.example.com", token_refuses)
    recovered = BatchSigner(faulty, store).recover_pending()
    assert [r.job_id for r in recovered] == ["rec-a"]
    assert store.job_state("rec-bad")["state"] == "failed"
    assert store.pending_records() == []
    assert BatchSigner(authority, store).recover_pending() == []


def test_report_failure_closes_reservations_and_keeps_published_answers(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    done = job("rf-done", make_csr("rf-done.example.com"))
    (issued,) = BatchSigner(authority, store).sign_batch([done])
    pending = job("rf-pending", make_csr("rf-pending.example.com"))
    reserve([built_from(authority, pending)], store, authority)
    unknown = job("rf-unknown", make_csr("rf-unknown.example.com"))

    failing = BatchSigner(authority, store)
    failing.report_failure([done, pending, unknown], "rf-replies", RuntimeError("boom"))

    replies = {r.job_id: r for r in store.wait_replies("rf-replies", timeout=2)}
    assert (replies["rf-done"].status, replies["rf-done"].certificate_pem) == (
        "issued",
        issued.certificate_pem,
    )
    for job_id in ("rf-pending", "rf-unknown"):
        assert (replies[job_id].status, replies[job_id].code) == ("failed", "internal.error")
        assert "RuntimeError: boom" in (replies[job_id].message or "")
        assert store.job_state(job_id)["state"] == "failed"
    assert BatchSigner(authority, store).recover_pending() == []
    # Told `failed`, so a later delivery of those jobs is answered `failed`, never issued.
    again = {
        r.job_id: r.status for r in BatchSigner(authority, store).sign_batch([pending, unknown])
    }
    assert again == {"rf-pending": "failed", "rf-unknown": "failed"}
    assert store.count_issued() == 1


# -- the OCSP delegate goes through the same steps -----------------------------------------------


def test_the_ocsp_delegate_has_a_record_an_index_line_and_an_audit_line(
    tmp_path: Path, store: ResultsStore
) -> None:
    folder = make_alice_ca(tmp_path / "ca")
    authority = load_authority(folder.root)
    delegate = ensure_ocsp_certificate(folder, authority, store)
    certificate = delegate.certificate
    serial = format_serial(certificate.serial_number)

    (line,) = store.index_lines()
    entry = IndexEntry.from_openssl_line(line)
    assert entry.serial == certificate.serial_number
    assert entry.subject.endswith("/CN=Alice Ltd Intermediate CA OCSP Responder")
    assert entry.expires == certificate.not_valid_after_utc
    (audit,) = [json.loads(e.partition(" ")[2]) for e in store.audit_entries()]
    assert (audit["event"], audit["serial"], audit["profile"]) == ("issued", serial, "ocsp")
    job_id = store.client.hget(store.key("serials"), serial)
    assert job_id is not None and job_id.startswith("ocsp-responder:")
    assert store.job_state(job_id)["state"] == "issued"
    assert (
        store.certificate(serial) == certificate.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert certificate.extensions.get_extension_for_class(x509.OCSPNoCheck)
    # Backdated like every certificate, never before the intermediate's own notBefore.
    assert certificate.not_valid_before_utc >= authority.intermediate.not_valid_before_utc
    assert not ensure_ocsp_certificate(folder, authority, store).issued


def test_no_producer_may_ask_for_the_ocsp_profile(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    (result,) = BatchSigner(authority, store).sign_batch(
        [job("sneaky", make_csr("sneaky.example.com"), "ocsp")]
    )
    assert (result.status, result.code) == ("refused", "request.unknown_profile")


# -- time: backdating, the clamp, the CA's expiry ----------------------------------------------


def test_validity_is_backdated_but_never_before_the_cas_notbefore(
    authority: SigningAuthority,
) -> None:
    profile = authority.profiles.get("server_cert")
    assert profile is not None and profile.backdate_seconds == 300
    ca = authority.intermediate
    later = ca.not_valid_before_utc + timedelta(days=2)
    assert validity(profile, 10, later, ca)[0] == later - timedelta(minutes=5)
    early = ca.not_valid_before_utc + timedelta(seconds=30)
    not_before, not_after = validity(profile, 10, early, ca)
    assert not_before == ca.not_valid_before_utc
    assert not_after - not_before == timedelta(days=10)
    exact = profile.model_copy(update={"backdate_seconds": 0})
    assert validity(exact, 10, later, ca)[0] == later


def test_clamp_not_after_to_ca_cuts_instead_of_refusing(authority: SigningAuthority) -> None:
    profile = authority.profiles.get("usr_cert")
    assert profile is not None and not profile.clamp_not_after_to_ca
    ca = authority.intermediate
    late = ca.not_valid_after_utc - timedelta(days=3)
    with pytest.raises(Rejected) as refused:
        validity(profile, 30, late, ca)
    assert refused.value.code == RefusalCode.VALIDITY_TOO_LONG
    assert f"{ca.not_valid_after_utc:%Y-%m-%d}" in refused.value.message
    clamped = profile.model_copy(update={"clamp_not_after_to_ca": True})
    not_before, not_after = validity(clamped, 30, late, ca)
    assert not_after == ca.not_valid_after_utc
    assert not_before == late.replace(microsecond=0) - timedelta(minutes=5)


def test_profiles_toml_documents_and_checks_the_time_settings() -> None:
    template = default_profiles_toml()
    assert "backdate_seconds" in template and "clamp_not_after_to_ca" in template
    custom = template + "\n[profiles.quick]\nbackdate_seconds = 60\nclamp_not_after_to_ca = true\n"
    quick = ProfileSet.from_toml(custom).get("quick")
    assert quick is not None and (quick.backdate_seconds, quick.clamp_not_after_to_ca) == (60, True)
    with pytest.raises(ConfigurationError, match="backdate_seconds"):
        ProfileSet.from_toml(template + "\n[profiles.bad]\nbackdate_seconds = -1\n")


def reissue_intermediate(folder: CAFolder, not_before: datetime, not_after: datetime) -> None:
    """The intermediate certificate again, same key and names, with another validity."""
    root_key = serialization.load_pem_private_key(folder.root_key_path.read_bytes(), None)
    assert isinstance(root_key, rsa.RSAPrivateKey)
    old = x509.load_pem_x509_certificate(folder.intermediate_cert_path.read_bytes())
    builder = x509.CertificateBuilder(
        issuer_name=old.issuer,
        subject_name=old.subject,
        public_key=old.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=not_before,
        not_valid_after=not_after,
        extensions=list(old.extensions),
    )
    pem = builder.sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    write_file_atomically(folder.intermediate_cert_path, pem, CERT_MODE)


@pytest.fixture(scope="module")
def dated_ca(tmp_path_factory: pytest.TempPathFactory) -> CAFolder:
    return make_alice_ca(tmp_path_factory.mktemp("dated") / "ca")


def test_a_ca_expiring_soon_is_logged_at_start(
    dated_ca: CAFolder, caplog: pytest.LogCaptureFixture
) -> None:
    now = datetime.now(UTC)
    reissue_intermediate(dated_ca, now - timedelta(days=1), now + timedelta(days=12))
    with caplog.at_level(logging.WARNING, logger="casign.authority"):
        load_authority(dated_ca.root)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "casign.authority"]
    assert "expires on" in warning and "in 11 day(s)" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="casign.authority"):
        load_authority(dated_ca.root, expiry_warning_days=7)
    assert not [r for r in caplog.records if r.name == "casign.authority"]


def test_an_expired_ca_refuses_to_start_with_its_expiry_date(dated_ca: CAFolder) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    ended = now - timedelta(days=2)
    reissue_intermediate(dated_ca, now - timedelta(days=30), ended)
    with pytest.raises(ConfigurationError) as refused:
        load_authority(dated_ca.root)
    assert f"expired on {ended:%Y-%m-%d %H:%M} UTC" in str(refused.value)


def test_casign_worker_refuses_to_start_with_an_expired_ca(dated_ca: CAFolder) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    reissue_intermediate(dated_ca, now - timedelta(days=30), now - timedelta(days=1))
    unreachable = "redis://127.0.0.1:1/0"  # refused before any connection is tried
    started = subprocess.run(
        [sys.executable, "-m", "casign", "worker", "--ca", str(dated_ca.root), "--no-restart",
         "--broker", unreachable, "--store", unreachable, "--open", "--allow-root-key"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2, started.stderr
    assert "the intermediate CA certificate expired on" in started.stderr


def test_signing_with_an_expired_ca_says_so(authority: SigningAuthority) -> None:
    after = authority.intermediate.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(ConfigurationError, match="expired on"):
        authority.check_own_chain(after)
