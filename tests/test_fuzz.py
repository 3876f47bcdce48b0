"""Property tests: whatever arrives, the policy and the message schema answer with a refusal
they own (Rejected / ValueError / ValidationError), never with another exception; a mutated CSR
is never accepted unless its signed bytes are untouched; and whatever the policy accepts, the
signer really issues (no name that passes policy may break build_tbs after the serial is drawn)."""

from __future__ import annotations

import ipaddress
import itertools
from functools import cache
from typing import Any

import pydantic
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import Rejected
from core.messages import SignBatch, SignRequest, parse_sign_request
from store.results import ResultsStore
from tests import hostile_csrs as hostile
from tests.csrs import make_csr
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.policy import CheckedRequest, check_request
from worker.profiles import DEFAULT_PROFILES_TOML, ProfileSet

PROFILES = ProfileSet.from_toml(DEFAULT_PROFILES_TOML)
CA_NAMES = frozenset({"Alice Ltd Root CA", "Alice Ltd Intermediate CA"})
PROFILE_NAMES = ["server_cert", "usr_cert", "tls_server"]

bounded = settings(
    max_examples=200,
    deadline=None,
    database=None,  # no example database in the working tree; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
pytestmark = pytest.mark.filterwarnings("ignore:Attribute.s length must be:UserWarning")


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@cache
def seed_csrs() -> tuple[bytes, ...]:
    """Valid CSRs (DER) that the server_cert or usr_cert profile accepts, to mutate."""
    pems = [
        make_csr("www.example.com"),
        make_csr("www.example.com", key=rsa_key()),
        make_csr(
            "api.example.com",
            key=rsa_key(),
            san=[
                x509.DNSName("api.example.com"),
                x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            ],
            extra_attributes=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Alice Ltd")],
            extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)],
        ),
        hostile.edwards_request(ed25519.Ed25519PrivateKey.generate(), "ed.example.com"),
        make_csr("p384.example.com", key=ec.generate_private_key(ec.SECP384R1())),
    ]
    return tuple(hostile.pem_to_der(pem) for pem in pems)


def refused_or_checked(
    csr_pem: str, profile: str = "server_cert", **fields: Any
) -> CheckedRequest | None:
    """Run the policy; a Rejected is an answer, any other exception fails the test."""
    request = SignRequest.model_validate(
        {"job_id": "fuzz", "csr_pem": csr_pem, "profile": profile, **fields}
    )
    try:
        return check_request(request, PROFILES, CA_NAMES)
    except Rejected as refusal:
        assert refusal.code and refusal.message
        return None


def verifies_independently(csr: x509.CertificateSigningRequest) -> bool:
    """Check the CSR's signature with the key directly, not through is_signature_valid."""
    key = csr.public_key()
    data, signature = csr.tbs_certrequest_bytes, csr.signature
    try:
        if isinstance(key, rsa.RSAPublicKey):
            assert csr.signature_hash_algorithm is not None
            key.verify(signature, data, padding.PKCS1v15(), csr.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            assert csr.signature_hash_algorithm is not None
            key.verify(signature, data, ec.ECDSA(csr.signature_hash_algorithm))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            return False
    except Exception:
        return False
    return True


# --- random input where a CSR belongs -------------------------------------------------------


@bounded
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused(data: bytes) -> None:
    assert refused_or_checked(data.decode("latin-1") or "x") is None


@bounded
@given(st.text(max_size=2000))
def test_random_text_is_refused(text: str) -> None:
    assert refused_or_checked(text or "x") is None


@bounded
@given(
    st.binary(max_size=3000), st.sampled_from(["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"])
)
def test_random_der_in_pem_armour_is_refused(data: bytes, label: str) -> None:
    assert refused_or_checked(hostile.to_pem(data, label)) is None


@bounded
@given(
    st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n -",
        max_size=3000,
    )
)
def test_random_base64ish_bodies_are_refused(body: str) -> None:
    pem = f"-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
    assert refused_or_checked(pem) is None


# --- mutated valid CSRs ----------------------------------------------------------------------


mutations = st.lists(
    st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(1, 255)),
    min_size=1,
    max_size=8,
)


def mutate(der: bytes, flips: list[tuple[float, int]]) -> bytes:
    data = bytearray(der)
    for where, xor in flips:
        data[int(where * len(data))] ^= xor
    return bytes(data)


@bounded
@given(st.integers(0, 4), mutations, st.sampled_from(PROFILE_NAMES[:2]))
def test_a_mutated_csr_is_refused_unless_its_signed_bytes_are_intact(
    seed: int, flips: list[tuple[float, int]], profile: str
) -> None:
    original = x509.load_der_x509_csr(seed_csrs()[seed])
    mutated = mutate(seed_csrs()[seed], flips)
    checked = refused_or_checked(hostile.to_pem(mutated), profile)
    if checked is None:
        return
    # Only bytes outside the signed data (an unsigned signatureAlgorithm parameter, say) may
    # change; the accepted CSR must carry the original TBS and signature and verify by itself.
    assert checked.csr.tbs_certrequest_bytes == original.tbs_certrequest_bytes
    assert checked.csr.signature == original.signature
    assert verifies_independently(checked.csr)


@bounded
@given(st.integers(0, 4), st.floats(min_value=0, max_value=1), st.binary(min_size=1, max_size=16))
def test_a_csr_with_bytes_inserted_or_cut_is_refused(
    seed: int, where: float, insert: bytes
) -> None:
    der = seed_csrs()[seed]
    at = int(where * len(der))
    for variant in (der[:at] + insert + der[at:], der[:at] + der[at + len(insert) :]):
        if variant == der:
            continue
        checked = refused_or_checked(hostile.to_pem(variant))
        if checked is not None:
            assert (
                checked.csr.tbs_certrequest_bytes
                == x509.load_der_x509_csr(der).tbs_certrequest_bytes
            )
            assert verifies_independently(checked.csr)


# --- hostile names: refused, or something the issuance steps can really build ------------------


hostile_characters = st.sampled_from(
    [*"abcxyz019-._*@:/=,+ %[]\\", "\x00", "\t", "\n", "\u212a", "\u00fc", "\u200b"]
)
hostile_text = st.text(alphabet=hostile_characters, min_size=0, max_size=40)
domainish = st.builds(
    lambda labels, wildcard: ("*." if wildcard else "") + ".".join(labels),
    st.lists(st.text(alphabet=hostile_characters, min_size=0, max_size=12), min_size=1, max_size=4),
    st.booleans(),
)
san_text = st.one_of(
    st.builds(
        lambda kind, value: f"{kind}:{value}",
        st.sampled_from(["DNS", "IP", "email", "URI", "dns", "Ip Address", "X400", ""]),
        st.one_of(hostile_text, domainish, st.ip_addresses().map(str)),
    ),
    hostile_text,
).filter(lambda text: 0 < len(text) <= 512)


_job_numbers = itertools.count()


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    common_name=st.one_of(domainish, hostile_text, st.ip_addresses().map(str)),
    organization=st.one_of(st.none(), hostile_text),
    requested=st.lists(san_text, max_size=4),
    profile=st.sampled_from(PROFILE_NAMES),
)
def test_whatever_the_policy_accepts_the_signer_issues(
    authority: SigningAuthority,
    store: ResultsStore,
    common_name: str,
    organization: str | None,
    requested: list[str],
    profile: str,
) -> None:
    organizations = [] if organization is None else [organization]
    csr = make_csr(
        None,
        extra_attributes=[
            *(hostile.name_attribute(NameOID.ORGANIZATION_NAME, text) for text in organizations),
            hostile.common_name(common_name),
        ],
    )
    raw = {
        "job_id": f"names-{next(_job_numbers)}",
        "csr_pem": csr,
        "profile": profile,
        "san": requested,
    }
    try:
        checked: CheckedRequest | None = check_request(parse_sign_request(raw), PROFILES, CA_NAMES)
        code = None
    except Rejected as refusal:
        checked, code = None, refusal.code
    # What used to crash after the serial was reserved: names build_tbs could not rebuild.
    (result,) = BatchSigner(authority, store).sign_batch([raw])
    if checked is None:
        assert (result.status, result.code) == ("refused", code)
        return
    assert result.status == "issued", result.message
    assert result.certificate_pem is not None
    certificate = x509.load_pem_x509_certificate(result.certificate_pem.encode())
    try:
        names = list(
            certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        )
    except x509.ExtensionNotFound:
        names = []
    assert names == list(checked.subject_alternative_names)
    assert all(str(name.value).isascii() for name in names)
    assert not store.pending_records()


# --- random job messages -------------------------------------------------------------------------


json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True),
        st.text(max_size=50),
    ),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
job_fields = st.sampled_from(
    ["schema_version", "job_id", "csr_pem", "profile", "days", "san", "requester", "extra"]
)
job_like = st.dictionaries(st.one_of(job_fields, st.text(max_size=12)), json_values, max_size=8)


@bounded
@given(st.one_of(job_like, json_values))
def test_parse_sign_request_only_raises_value_error(raw: object) -> None:
    try:
        request = parse_sign_request(raw)
    except ValueError as exc:
        assert str(exc)
        assert not isinstance(exc, pydantic.ValidationError)
        return
    assert isinstance(request, SignRequest)
    refused_or_checked(request.csr_pem, "server_cert")


@bounded
@given(
    st.fixed_dictionaries(
        {
            "job_id": st.from_regex(r"\A[A-Za-z0-9._:@+-]{1,20}\Z"),
            "csr_pem": st.text(min_size=1, max_size=200),
        },
        optional={
            "profile": st.one_of(st.sampled_from(PROFILE_NAMES), st.text(max_size=20)),
            "days": st.one_of(st.integers(), st.text(max_size=5), st.none()),
            "san": st.lists(san_text, max_size=3),
            "requester": st.one_of(st.none(), st.text(max_size=200)),
        },
    )
)
def test_well_shaped_random_jobs_are_parsed_or_refused(raw: dict[str, Any]) -> None:
    try:
        request = parse_sign_request(raw)
    except ValueError:
        return
    try:
        check_request(request, PROFILES, CA_NAMES)
    except Rejected:
        return
    pytest.fail("random text was accepted as a CSR")


@bounded
@given(
    st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["schema_version", "reply_to", "jobs", "extra"]),
            json_values,
            max_size=4,
        ),
        st.fixed_dictionaries(
            {"jobs": st.lists(job_like, max_size=5)}, optional={"reply_to": json_values}
        ),
    )
)
def test_sign_batch_validation_only_raises_validation_error(raw: object) -> None:
    try:
        batch = SignBatch.model_validate(raw)
    except pydantic.ValidationError:
        return
    assert 1 <= len(batch.jobs) <= 10_000


# --- the whole signer, fed random batches ---------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw_jobs=st.lists(
        st.one_of(
            job_like,
            st.builds(
                lambda n, mutated: {"job_id": f"fz{n}", "csr_pem": mutated},
                st.integers(0, 10**6),
                st.builds(
                    lambda seed, flips: hostile.to_pem(mutate(seed_csrs()[seed], flips)),
                    st.integers(0, 4),
                    mutations,
                ),
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_signer_answers_every_random_batch(
    raw_jobs: list[Any], authority: SigningAuthority, store: ResultsStore
) -> None:
    # One store for all examples: it only grows, and every certificate in it is accounted for.
    signer = BatchSigner(authority, store)
    good = {"job_id": f"good-{store.count_issued()}", "csr_pem": make_csr("good.example.com")}
    results = signer.sign_batch([*raw_jobs, good])
    assert results[-1].status == "issued"
    assert all(result.status in {"issued", "refused"} for result in results)
    assert store.count_issued() == store.count_serials()
    assert not store.pending_records()
