"""The EST front-end's parts on their own: bodies, CSR attributes, passwords, settings, who may
enroll, the re-enrollment name check and the batching of concurrent enrollments."""

from __future__ import annotations

import asyncio
import base64
import email
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError, RefusalCode
from core.messages import JobResult, SignRequest
from est.admission import Admission, EstClient
from est.batching import Batcher, Identity, StillSigning
from est.csrattrs import csr_attributes, encode_oid
from est.enrollment import csr_for_key, job_digest, key_like
from est.figures import EstCounts
from est.labels import LabelProfile
from est.passwords import ProvenHeaders, ProvenPasswords, hash_password, verify_password
from est.reenroll import check_same_names, client_of_job, job_id_for
from est.refusals import EstRefusal, status_for
from est.settings import (
    ClientEntry,
    EstSettings,
    ServerSettings,
    parse_settings,
    render_settings,
)
from est.wire import (
    ServerKeygenAnswer,
    certs_only,
    certs_only_der,
    check_content_type,
    csr_to_pem,
    decode_base64,
    load_certs_only,
    parse_csr,
    pem_to_der,
    serverkeygen_body,
    split_serverkeygen,
)
from tests.est_service import Bootstrap, csr_der

# --- bodies ----------------------------------------------------------------------------------


def refusal_code(call: object) -> str:
    assert callable(call)
    with pytest.raises(EstRefusal) as caught:
        call()
    return caught.value.code


def test_a_base64_body_may_carry_line_breaks_and_spaces() -> None:
    der = csr_der("a@example.com")
    text = base64.b64encode(der)
    broken = b"\r\n".join(text[i : i + 60] for i in range(0, len(text), 60)) + b"\n "
    assert decode_base64(broken) == der
    assert parse_csr(decode_base64(broken)).subject.rfc4514_string() == "CN=a@example.com"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", RefusalCode.EST_NOT_BASE64),
        (b"not base64!", RefusalCode.EST_NOT_BASE64),
        (b"QUJD=A", RefusalCode.EST_NOT_BASE64),
        (base64.b64encode(b"\0" * (64 * 1024 + 1)), RefusalCode.CSR_TOO_LARGE),
    ],
)
def test_a_body_that_is_not_base64_or_too_large_is_refused(body: bytes, code: str) -> None:
    assert refusal_code(lambda: decode_base64(body)) == code


def test_certs_only_from_der_is_the_pkcs7_cryptography_writes() -> None:
    """The enrollment path wraps DER it holds without parsing it: the same bytes either way."""
    one, two = self_signed_certificate(), self_signed_certificate()
    ders = [certificate.public_bytes(serialization.Encoding.DER) for certificate in (one, two)]
    assert certs_only_der(ders[:1]) == certs_only([one])
    assert certs_only_der(ders) == certs_only([one, two])
    pem = one.public_bytes(serialization.Encoding.PEM).decode()
    assert pem_to_der(pem) == ders[0]
    csr = parse_csr(csr_der("a@example.com"))
    assert (
        csr_to_pem(csr.public_bytes(serialization.Encoding.DER))
        == csr.public_bytes(serialization.Encoding.PEM).decode()
    )


def test_der_that_is_not_a_csr_is_malformed() -> None:
    assert refusal_code(lambda: parse_csr(b"hello")) == RefusalCode.CSR_MALFORMED
    certificate = load_certs_only(certs_only([self_signed_certificate()]))[0]
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert refusal_code(lambda: parse_csr(der)) == RefusalCode.CSR_MALFORMED


def self_signed_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    "content_type", ["application/pkcs10", "Application/PKCS10; charset=us-ascii"]
)
def test_pkcs10_is_the_content_type(content_type: str) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize("content_type", ["", "text/plain", "application/pkcs10x"])
def test_another_content_type_is_refused(content_type: str) -> None:
    assert refusal_code(lambda: check_content_type(content_type)) == RefusalCode.EST_CONTENT_TYPE
    assert status_for(RefusalCode.EST_CONTENT_TYPE) == 415


def test_a_serverkeygen_answer_is_multipart_a_mime_parser_reads(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certificate = self_signed_certificate()
    body, content_type = serverkeygen_body(
        key_der, certificate.public_bytes(serialization.Encoding.DER)
    )
    message = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert [part.get_content_type() for part in parts] == [
        "application/pkcs8",
        "application/pkcs7-mime",
    ]
    assert parts[0].get_payload(decode=True) == key_der
    assert split_serverkeygen(body, content_type) == ServerKeygenAnswer(
        key_der, False, [certificate]
    )


# --- csrattrs --------------------------------------------------------------------------------


def test_oids_are_encoded_as_x690_says() -> None:
    assert encode_oid("1.2.840.113549.1.9.14").hex() == "06092a864886f70d01090e"
    assert encode_oid("2.5.29.17").hex() == "0603551d11"
    with pytest.raises(ValueError):
        encode_oid("3.1")


def asn1parse(der: bytes, tmp_path: Path) -> str:
    path = tmp_path / "attrs.der"
    path.write_bytes(der)
    return subprocess.run(
        ["openssl", "asn1parse", "-inform", "DER", "-in", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_csrattrs_name_the_key_types_and_the_san_extension_openssl_reads(tmp_path: Path) -> None:
    profile = LabelProfile("usr_cert", ("email", "DNS"), False, "any", "sha256")
    text = asn1parse(csr_attributes(profile), tmp_path)
    for name in (
        "commonName",
        "rsaEncryption",
        "id-ecPublicKey",
        "prime256v1",
        "secp384r1",
        "secp521r1",
        "ED25519",
        "Extension Request",
        "X509v3 Subject Alternative Name",
    ):
        assert name in text
    without_san = LabelProfile("no_san", (), False, "any", "sha256")
    assert "Subject Alternative Name" not in asn1parse(csr_attributes(without_san), tmp_path)


# --- passwords -------------------------------------------------------------------------------


def test_a_password_hash_verifies_only_its_password() -> None:
    stored = hash_password(b"correct horse battery")
    assert stored.startswith("scrypt$15$8$1$")
    assert verify_password(b"correct horse battery", stored)
    assert not verify_password(b"correct horse batterY", stored)
    assert hash_password(b"correct horse battery") != stored  # a fresh salt each time
    with pytest.raises(ConfigurationError):
        hash_password(b"short")
    with pytest.raises(ConfigurationError):
        verify_password(b"x", "md5$abc")


def test_a_proved_password_is_remembered_not_hashed_again() -> None:
    stored = hash_password(b"correct horse battery")
    proven = ProvenPasswords()
    started = time.perf_counter()
    assert proven.check("fleet", b"correct horse battery", stored)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(50):
        assert proven.check("fleet", b"correct horse battery", stored)
    assert time.perf_counter() - started < first  # 50 checks cost less than one scrypt
    assert not proven.check("fleet", b"wrong password!!", stored)
    assert not proven.check("fleet", b"correct horse battery", hash_password(b"another one!!"))


# --- settings --------------------------------------------------------------------------------


def test_settings_written_read_back_the_same() -> None:
    settings = EstSettings(
        server=ServerSettings(default_label="server_cert", wait_seconds=3.5, lanes=2),
        clients={
            "fleet.a": ClientEntry(password="scrypt$15$8$1$AA$AA", labels=["usr_cert"]),
            "factory": ClientEntry(
                issuers=["/etc/ca.pem"], producer="p", secret="env:P", rate_per_second=2
            ),
        },
    )
    assert parse_settings(render_settings(settings), "est.toml") == settings


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[clients.a]\nlabels = ['usr_cert']\n", "clients.a"),
        ("[clients.a]\npassword = 'x'\nproducer = 'p'\n", "clients.a"),
        ("[server]\nwait_seconds = -1\n", "server.wait_seconds"),
        ("[server]\nunknown = 1\n", "server.unknown"),
        ("[clients.'bad name']\npassword = 'x'\n", "clients.bad name"),
    ],
)
def test_bad_settings_name_the_field(text: str, where: str) -> None:
    with pytest.raises(ConfigurationError, match=where.replace(".", r"\.")):
        parse_settings(text, "est.toml")


# --- who may enroll --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def admission(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Admission, Bootstrap]]:
    bootstrap = Bootstrap.make(tmp_path_factory.mktemp("bootstrap"), "acme")
    settings = EstSettings(
        clients={
            "fleet": ClientEntry(password=hash_password(b"fleet password"), labels=["usr_cert"]),
            "factory": ClientEntry(issuers=[str(bootstrap.ca_path)], rate_per_second=1, burst=2),
        }
    )
    yield Admission(settings), bootstrap


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def authenticate(
    admission: Admission, authorization: str | None, peer: x509.Certificate | None = None
) -> EstClient:
    return asyncio.run(admission.authenticate(authorization, peer))


def test_basic_credentials_name_the_client(admission: tuple[Admission, Bootstrap]) -> None:
    client = authenticate(admission[0], basic("fleet", "fleet password"))
    assert (client.name, client.proof) == ("fleet", "password")


@pytest.mark.parametrize(
    "authorization",
    [
        basic("fleet", "wrong password"),
        basic("nobody", "fleet password"),
        basic("factory", "fleet password"),  # a client without a password
        "Basic !!!",
        "Bearer abc",
        "Basic " + base64.b64encode(b"no colon").decode(),
    ],
)
def test_bad_credentials_are_refused_with_a_challenge(
    admission: tuple[Admission, Bootstrap], authorization: str
) -> None:
    with pytest.raises(EstRefusal) as caught:
        authenticate(admission[0], authorization)
    assert caught.value.code == RefusalCode.EST_BAD_CREDENTIALS
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith("Basic realm=")


def test_concurrent_requests_with_one_password_cost_one_scrypt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import est.passwords

    calls: list[bytes] = []
    real = est.passwords.verify_password

    def counted(password: bytes, stored: str) -> bool:
        calls.append(password)
        return real(password, stored)

    monkeypatch.setattr(est.passwords, "verify_password", counted)
    policy = Admission(
        EstSettings(clients={"fleet": ClientEntry(password=hash_password(b"fleet password"))})
    )

    async def many() -> list[object]:
        good = [policy.authenticate(basic("fleet", "fleet password"), None) for _ in range(20)]
        bad = [policy.authenticate(basic("fleet", "guessed wrong"), None) for _ in range(5)]
        return await asyncio.gather(*good, *bad, return_exceptions=True)

    outcomes = asyncio.run(many())
    assert all(isinstance(outcome, EstClient) for outcome in outcomes[:20])
    assert all(isinstance(outcome, EstRefusal) for outcome in outcomes[20:])
    assert sorted(calls) == [b"fleet password", b"guessed wrong"]


def test_a_proved_header_is_remembered_exactly_and_for_its_time_only() -> None:
    header = basic("fleet", "fleet password")
    proven = ProvenHeaders()
    assert proven.proven_client(header) is None
    proven.remember(header, "fleet")
    assert proven.proven_client(header) == "fleet"
    assert proven.proven_client(basic("fleet", "fleet passwore")) is None
    assert proven.proven_client(header + " ") is None
    assert proven.proven_client("Basic \u00e9t\u00e9") is None  # never proved: not base64
    brief = ProvenHeaders(seconds=0)
    brief.remember(header, "fleet")
    assert brief.proven_client(header) is None


def test_a_header_that_proved_a_client_is_not_checked_again_until_the_settings_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same header again costs no password check; another password for the same client
    is checked (and refused); new settings (a changed password) forget every header."""
    checked: list[bytes] = []  # each password looked at, remembered or hashed
    real = ProvenPasswords.tag

    def counted(self: ProvenPasswords, stored: str, password: bytes) -> bytes:
        checked.append(password)
        return real(self, stored, password)

    monkeypatch.setattr(ProvenPasswords, "tag", counted)
    header = basic("fleet", "fleet password")
    settings = EstSettings(
        clients={"fleet": ClientEntry(password=hash_password(b"fleet password"))}
    )
    policy = Admission(settings)
    assert authenticate(policy, header).name == "fleet"
    first = len(checked)
    for _ in range(3):
        assert authenticate(policy, header).name == "fleet"
    assert len(checked) == first
    with pytest.raises(EstRefusal) as caught:
        authenticate(policy, basic("fleet", "guessed wrong"))
    assert caught.value.code == RefusalCode.EST_BAD_CREDENTIALS
    changed = settings.with_client("fleet", ClientEntry(password=hash_password(b"a new one!!!")))
    with pytest.raises(EstRefusal) as caught:
        authenticate(Admission(changed), header)
    assert caught.value.code == RefusalCode.EST_BAD_CREDENTIALS


def test_a_certificate_from_a_listed_issuer_names_its_client(
    admission: tuple[Admission, Bootstrap],
) -> None:
    policy, bootstrap = admission
    device = x509.load_pem_x509_certificate(bootstrap.cert_path.read_bytes())
    assert authenticate(policy, None, device).name == "factory"
    with pytest.raises(EstRefusal) as caught:
        authenticate(policy, None, self_signed_certificate())  # issued by no listed CA
    assert caught.value.code == RefusalCode.EST_UNAUTHENTICATED
    assert policy.issuer_certificates == [
        x509.load_pem_x509_certificate(bootstrap.ca_path.read_bytes())
    ]


def test_labels_and_rate_are_held_per_client(admission: tuple[Admission, Bootstrap]) -> None:
    policy = admission[0]
    fleet = EstClient("fleet", policy.clients["fleet"], "password")
    policy.admit(fleet, "usr_cert")
    with pytest.raises(EstRefusal) as caught:
        policy.admit(fleet, "server_cert")
    assert caught.value.code == RefusalCode.AUTH_PROFILE_NOT_ALLOWED
    factory = EstClient("factory", policy.clients["factory"], "certificate")
    policy.admit(factory, "usr_cert")
    policy.admit(factory, "usr_cert")  # the burst of 2
    with pytest.raises(EstRefusal) as caught:
        policy.admit(factory, "usr_cert")
    assert (caught.value.code, caught.value.status) == (RefusalCode.AUTH_RATE_LIMITED, 429)
    assert caught.value.headers["Retry-After"] == "1"


def test_one_issuer_may_not_name_two_clients(tmp_path: Path) -> None:
    bootstrap = Bootstrap.make(tmp_path, "twice")
    entry = ClientEntry(issuers=[str(bootstrap.ca_path)])
    with pytest.raises(ConfigurationError, match="same issuer"):
        Admission(EstSettings(clients={"a": entry, "b": entry}))


# --- re-enrollment ---------------------------------------------------------------------------


def certificate_for(
    subject: str, names: list[x509.GeneralName] | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256()), key


def csr(subject: str, names: list[x509.GeneralName] | None) -> x509.CertificateSigningRequest:
    return parse_csr(csr_der(subject, san=names))


def test_a_renewal_must_keep_the_subject_and_names() -> None:
    names = [x509.DNSName("a.example.com"), x509.DNSName("b.example.com")]
    current, _ = certificate_for("a.example.com", names)
    check_same_names(csr("a.example.com", list(reversed(names))), current)
    mismatches = {
        "another subject": (csr("b.example.com", names), RefusalCode.EST_SUBJECT_MISMATCH),
        "a name more": (
            csr("a.example.com", [*names, x509.DNSName("c.example.com")]),
            RefusalCode.EST_SAN_MISMATCH,
        ),
        "no names": (csr("a.example.com", None), RefusalCode.EST_SAN_MISMATCH),
    }
    for request, code in mismatches.values():
        assert refusal_code(lambda request=request: check_same_names(request, current)) == code


def test_a_renewal_without_san_matches_the_san_the_signer_made_from_the_cn() -> None:
    current, _ = certificate_for("www.example.com", [x509.DNSName("www.example.com")])
    check_same_names(csr("www.example.com", None), current)
    bare, _ = certificate_for("alice@example.com", None)
    check_same_names(csr("alice@example.com", None), bare)


def test_a_job_id_names_its_client() -> None:
    assert client_of_job(job_id_for("fleet.a", "ab12")) == "fleet.a"
    assert client_of_job("est-server-abc") is None
    assert client_of_job("est::ab") is None
    assert client_of_job(None) is None
    assert job_digest(b"a", b"bc") != job_digest(b"ab", b"c")


def test_serverkeygen_makes_a_key_like_the_csr_s() -> None:
    rsa_csr = parse_csr(
        csr_der("k.example.com", key=rsa.generate_private_key(public_exponent=65537, key_size=2048))  # type: ignore[arg-type]
    )
    made = key_like(rsa_csr.public_key())
    assert isinstance(made, rsa.RSAPrivateKey) and made.key_size == 2048
    p384 = parse_csr(csr_der("k.example.com", key=ec.generate_private_key(ec.SECP384R1())))
    made = key_like(p384.public_key())
    assert isinstance(made, ec.EllipticCurvePrivateKey) and made.curve.name == "secp384r1"
    renewed = csr_for_key(csr("k.example.com", [x509.DNSName("k.example.com")]), made)
    assert renewed.is_signature_valid
    assert renewed.public_key() == made.public_key()
    small = parse_csr(
        csr_der("k.example.com", key=rsa.generate_private_key(public_exponent=65537, key_size=1024))  # type: ignore[arg-type]
    )
    assert refusal_code(lambda: key_like(small.public_key())) == RefusalCode.KEY_UNSUPPORTED


# --- batching --------------------------------------------------------------------------------


class RecordingProducer:
    """Stands in for `Producer` to count queue messages; answers each job at once."""

    def __init__(self, store: FinishedJobs) -> None:
        self.store = store
        self.sent: list[list[str]] = []
        self.expected: list[str] = []
        self.closed = False

    def expect(self, requests: Iterable[SignRequest]) -> None:
        self.expected += [request.job_id for request in requests]

    def answers_in_store(self, requests: Iterable[SignRequest]) -> dict[str, JobResult]:
        return self.store.job_results(request.job_id for request in requests)

    def submit_many(
        self, requests: Iterable[SignRequest], batch_size: int | None = None
    ) -> list[str]:
        ids = [request.job_id for request in requests]
        self.sent.append(ids)
        return ids

    def results(self, job_ids: Iterable[str], timeout: float) -> Iterator[JobResult]:
        for job_id in job_ids:
            if job_id.endswith("slow"):
                time.sleep(timeout)
                raise TimeoutError("slow")
            yield JobResult(job_id=job_id, status="issued", serial="01", certificate_pem="x")

    @property
    def messages_sent(self) -> int:
        return len(self.sent)

    def close(self) -> None:
        self.closed = True


class FinishedJobs:
    """The two store calls a lane makes before it sends."""

    def __init__(self, finished: dict[str, JobResult]) -> None:
        self.finished = finished

    def job_results(
        self, job_ids: Iterable[str], fingerprints: dict[str, str] | None = None
    ) -> dict[str, JobResult]:
        return {job_id: self.finished[job_id] for job_id in job_ids if job_id in self.finished}

    def known_jobs(self, job_ids: Iterable[str]) -> set[str]:
        return set()


def request(job_id: str) -> SignRequest:
    return SignRequest(job_id=job_id, csr_pem="-----BEGIN CERTIFICATE REQUEST-----", profile="p")


def run_batcher(
    settings: ServerSettings,
    finished: dict[str, JobResult],
    job_ids: list[str],
    wait: float = 5,
    counts: EstCounts | None = None,
) -> tuple[list[object], list[RecordingProducer]]:
    producers: list[RecordingProducer] = []
    lock = threading.Lock()

    def connect(identity: Identity) -> RecordingProducer:
        producer = RecordingProducer(FinishedJobs(finished))
        with lock:
            producers.append(producer)
        return producer

    batcher = Batcher(connect, settings, counts)  # type: ignore[arg-type]

    async def main() -> list[object]:
        deadline = time.monotonic() + wait
        return list(
            await asyncio.gather(
                *(batcher.submit(Identity(), request(job_id), deadline) for job_id in job_ids)
            )
        )

    try:
        return asyncio.run(main()), producers
    finally:
        batcher.close()


def test_concurrent_enrollments_travel_in_one_queue_message() -> None:
    settings = ServerSettings(batch_window_ms=200, batch_max=100, lanes=3)
    ids = [f"job-{index}" for index in range(40)]
    outcomes, producers = run_batcher(settings, {}, ids)
    assert [outcome.job_id for outcome in outcomes] == ids  # type: ignore[attr-defined]
    messages = [batch for producer in producers for batch in producer.sent]
    assert messages == [ids]


def run_arriving(settings: ServerSettings, count: int, every: float) -> list[list[str]]:
    """The queue messages for `count` enrollments arriving one every `every` seconds."""
    producers: list[RecordingProducer] = []

    def connect(identity: Identity) -> RecordingProducer:
        producers.append(RecordingProducer(FinishedJobs({})))
        return producers[-1]

    batcher = Batcher(connect, settings)  # type: ignore[arg-type]

    async def main() -> None:
        waiting = []
        for index in range(count):
            enrollment = batcher.submit(Identity(), request(f"job-{index}"), time.monotonic() + 30)
            waiting.append(asyncio.ensure_future(enrollment))
            await asyncio.sleep(every)
        await asyncio.gather(*waiting)

    try:
        asyncio.run(main())
    finally:
        batcher.close()
    return [batch for producer in producers for batch in producer.sent]


def test_enrollments_that_keep_arriving_are_gathered_window_after_window() -> None:
    """Arrivals closer together than the window make one message (the whole wave), not one
    per window; past `batch_window_max_ms`, the group goes anyway."""
    wave = ServerSettings(batch_window_ms=150, batch_window_max_ms=5000, lanes=1)
    assert run_arriving(wave, 12, 0.02) == [[f"job-{index}" for index in range(12)]]
    bounded = ServerSettings(batch_window_ms=150, batch_window_max_ms=300, lanes=1)
    messages = run_arriving(bounded, 60, 0.02)
    assert len(messages) >= 3
    assert all(len(message) <= 30 for message in messages)  # 300 ms of arrivals and a few
    assert sorted(job for message in messages for job in message) == sorted(
        f"job-{index}" for index in range(60)
    )


def test_a_group_stops_at_its_lane_s_share_of_the_enrollments_in_hand() -> None:
    """With a second lane carrying nothing, the wave is not gathered by one lane alone: the
    group goes after a window, and the next lane takes what follows."""
    settings = ServerSettings(batch_window_ms=150, batch_window_max_ms=5000, lanes=2)
    messages = run_arriving(settings, 12, 0.02)
    assert len(messages) >= 2
    assert sorted(job for message in messages for job in message) == sorted(
        f"job-{index}" for index in range(12)
    )


def test_a_group_never_exceeds_batch_max() -> None:
    settings = ServerSettings(batch_window_ms=200, batch_max=8, lanes=1)
    ids = [f"job-{index}" for index in range(20)]
    _, producers = run_batcher(settings, {}, ids)
    sizes = [len(batch) for producer in producers for batch in producer.sent]
    assert sizes == [8, 8, 4]


def test_a_finished_job_is_answered_from_the_store_and_not_sent() -> None:
    done = JobResult(job_id="job-done", status="issued", serial="0A", certificate_pem="pem")
    settings = ServerSettings(batch_window_ms=50, lanes=1)
    outcomes, producers = run_batcher(settings, {"job-done": done}, ["job-done", "job-new"])
    assert outcomes[0] == done
    assert [batch for producer in producers for batch in producer.sent] == [["job-new"]]


def test_the_lanes_count_the_enrollments_they_send_and_the_messages_they_go_in() -> None:
    done = JobResult(job_id="job-done", status="issued", serial="0A", certificate_pem="pem")
    counts = EstCounts()
    ids = ["job-done", *(f"job-{index}" for index in range(24))]
    settings = ServerSettings(batch_window_ms=50, batch_max=10, lanes=2)
    _, producers = run_batcher(settings, {"job-done": done}, ids, counts=counts)
    messages = [batch for producer in producers for batch in producer.sent]
    figures = counts.figures()
    assert figures.enrollments_queued == 24  # the finished one was answered, never sent
    assert figures.messages_sent == len(messages) >= 3  # batch_max 10: three messages or more


def test_a_job_past_its_deadline_is_still_signing_and_its_lane_reconnects() -> None:
    settings = ServerSettings(batch_window_ms=0, lanes=1)
    outcomes, producers = run_batcher(settings, {}, ["job-slow"], wait=0.3)
    assert outcomes == [StillSigning("job-slow")]
    assert producers[0].closed  # the producer that still waits for it is dropped


def test_an_enrollment_on_an_idle_service_does_not_wait_out_the_window() -> None:
    """After a group of one (nobody else enrolling), the next goes at once; under load the
    window gathers (the tests above)."""
    settings = ServerSettings(batch_window_ms=1000, lanes=1)
    batcher = Batcher(lambda identity: RecordingProducer(FinishedJobs({})), settings)  # type: ignore[arg-type,return-value]

    async def one(job_id: str) -> float:
        started = time.monotonic()
        await batcher.submit(Identity(), request(job_id), time.monotonic() + 5)
        return time.monotonic() - started

    try:
        first = asyncio.run(one("job-first"))  # no group before it: the window is waited
        second = asyncio.run(one("job-second"))
    finally:
        batcher.close()
    assert first >= 0.9
    assert second < 0.5
