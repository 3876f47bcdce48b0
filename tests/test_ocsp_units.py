"""The OCSP responder's parts alone: request parsing, GET paths, lifetimes, the cache, signing."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from asn1crypto import core as asn1_core
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import ConfigurationError
from core.layout import ocsp_cert_path, ocsp_key_path
from ocsp.cache import AnswerCache, CachedAnswer
from ocsp.der import integer as der_integer
from ocsp.figures import AnswerCounts, ResponderFigures, figures_by_responder
from ocsp.identity import ResponderIdentity
from ocsp.lifetime import (
    LATEST_RENEWAL,
    MAX_VALIDITY,
    MIN_VALIDITY,
    RENEWAL_LEAD,
    ResponseLifetime,
    renew_at,
)
from ocsp.request import CertID, MalformedRequest, StatusRequest, parse_request
from ocsp.response import CertStatus, Status, response_data, signed_response
from ocsp.server import request_from_path
from store.figures_board import check_ttl
from tests.cas import make_alice_ca
from tests.openssl_cli import openssl
from worker.authority import load_authority

NAME_HASH, KEY_HASH = b"n" * 20, b"k" * 20


def one_request(serial: int = 0x1000, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        NAME_HASH, KEY_HASH, serial, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def several_request(
    serials: list[int], nonce: bytes | None = None, algorithm: str = "sha1"
) -> bytes:
    tbs: dict[str, object] = {
        "request_list": [
            {
                "req_cert": {
                    "hash_algorithm": {"algorithm": algorithm},
                    "issuer_name_hash": NAME_HASH,
                    "issuer_key_hash": KEY_HASH,
                    "serial_number": serial,
                }
            }
            for serial in serials
        ]
    }
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "critical": False, "extn_value": nonce}]
    return bytes(asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump())


def test_one_and_several_certificates_read_alike() -> None:
    assert parse_request(one_request(0x1000, b"n" * 16)) == StatusRequest(
        (CertID("sha1", NAME_HASH, KEY_HASH, 0x1000),), b"n" * 16
    )
    assert parse_request(several_request([1, 2, 3], b"x")) == StatusRequest(
        tuple(CertID("sha1", NAME_HASH, KEY_HASH, serial) for serial in (1, 2, 3)), b"x"
    )
    assert parse_request(several_request([7])).nonce is None


def test_an_unknown_hash_algorithm_is_read_as_its_oid() -> None:
    (cert_id,) = parse_request(several_request([5], algorithm="1.2.3.4")).cert_ids
    assert cert_id.algorithm == "1.2.3.4"


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        several_request([]),
        several_request([1, 2], b""),
        several_request([1, 2], b"n" * 33),
        one_request(1, b"n" * 33),
        one_request(1) + b"\x00",  # trailing bytes
    ],
)
def test_malformed_requests(der: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_request(der)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from([one_request(0x1234, b"n" * 16), several_request([1, 2], b"n" * 16)]),
    position=st.integers(min_value=0, max_value=200),
    value=st.integers(min_value=0, max_value=255),
    cut=st.integers(min_value=0, max_value=200),
)
def test_damaged_requests_are_read_or_refused_never_crash(
    base: bytes, position: int, value: int, cut: int
) -> None:
    damaged = bytearray(base)
    damaged[position % len(damaged)] = value
    for der in (bytes(damaged), base[: cut % len(base)]):
        with contextlib.suppress(MalformedRequest):  # anything else fails the test
            parse_request(der)


def test_get_paths_under_any_prefix() -> None:
    der = several_request([0x10, 0x20], b"n" * 16)
    encoded = base64.b64encode(der).decode()
    quoted = urllib.parse.quote(encoded, safe="")
    for path in (
        f"/{encoded}",
        f"/ocsp/{quoted}",
        f"/a/b/c/{encoded}?cache=no",
        f"/ocsp/{encoded.rstrip('=')}",  # padding dropped
        "/ocsp/" + encoded.replace("/", "%2F"),
    ):
        assert request_from_path(path) == der, path
    for path in ("/", "/ocsp", "/ocsp/", "/%%%", "/MEIw", "/" + "a/" * 20 + encoded):
        assert request_from_path(path) is None, path
    # A prefix that looks like base64 is skipped: only a whole DER SEQUENCE is taken.
    assert request_from_path(f"/MEIwQDA/{quoted}") == der


def test_the_lifetime_is_refused_outside_the_br_window() -> None:
    for validity in (timedelta(0), MIN_VALIDITY - timedelta(seconds=1), MAX_VALIDITY * 2):
        with pytest.raises(ConfigurationError, match=r"outside the Baseline Requirements"):
            ResponseLifetime(validity)
    this_update = datetime(2027, 1, 1, tzinfo=UTC)
    far = this_update + timedelta(days=365)
    assert ResponseLifetime().next_update(this_update, far) == this_update + timedelta(
        days=4, seconds=-1
    )
    # An answer never outlives the delegate that signs it.
    soon = this_update + timedelta(days=2)
    assert ResponseLifetime().next_update(this_update, soon) == soon


@pytest.mark.parametrize(
    "validity",
    [MIN_VALIDITY, timedelta(hours=15), timedelta(hours=16), timedelta(days=4), MAX_VALIDITY],
)
def test_renewal_times_meet_the_br(validity: timedelta) -> None:
    """Under 16 h: before half; else at least 8 h before nextUpdate and within 4 days."""
    this_update = datetime(2027, 1, 1, tzinfo=UTC)
    next_update = ResponseLifetime(validity).next_update(
        this_update, this_update + MAX_VALIDITY * 2
    )
    when = renew_at(this_update, next_update)
    assert this_update < when
    if validity < timedelta(hours=16):
        assert when <= this_update + validity / 2 - RENEWAL_LEAD
    else:
        assert when <= next_update - timedelta(hours=8)
        assert when <= this_update + LATEST_RENEWAL - RENEWAL_LEAD


def entry(size: int, renew: float = 1e12, this_update: float = 1e9) -> CachedAnswer:
    return CachedAnswer(bytes(size), ("V\tline",), this_update, 2e12, renew, object())


def test_the_cache_keeps_within_its_bytes_and_evicts_the_least_recently_asked() -> None:
    one = entry(1000).size
    cache = AnswerCache(max_bytes=10 * one)
    for serial in range(10):
        cache.put((("sha1", serial),), entry(1000))
    assert cache.get((("sha1", 0),), time.time()) is not None  # asked: now the most recent
    for serial in range(10, 15):
        cache.put((("sha1", serial),), entry(1000))
    assert len(cache) == 10 and cache.bytes <= cache.max_bytes
    assert (("sha1", 0),) in cache
    assert all((("sha1", serial),) not in cache for serial in range(1, 6))
    for serial in range(100_000):  # and it stays bounded, renewal heap included
        cache.put((("sha1", serial),), entry(1000))
    assert len(cache) == 10 and len(cache._renewals) <= 2 * 10 + 1024
    assert len(cache._signings) <= 2 * 10 + 1024


def test_an_expired_answer_is_not_served_and_due_ones_come_out_in_order() -> None:
    cache = AnswerCache(max_bytes=1 << 20)
    now = time.time()
    cache.put((("sha1", 1),), CachedAnswer(b"x", (None,), now - 9, now - 1, now - 2, object()))
    assert cache.get((("sha1", 1),), now) is None
    cache.put((("sha1", 2),), entry(10, renew=now - 5))
    cache.put((("sha1", 3),), entry(10, renew=now - 10))
    cache.put((("sha1", 4),), entry(10, renew=now + 100))
    due = [key for key, _ in cache.due(now, limit=10)]
    assert due == [(("sha1", 3),), (("sha1", 2),), (("sha1", 1),)]  # soonest first
    assert cache.due(now, limit=10) == []
    cache.requeue((("sha1", 2),))  # a renewal that failed is due again
    assert [key for key, _ in cache.due(now, limit=10)] == [(("sha1", 2),)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_the_cache_knows_its_oldest_answer_through_replacements_and_evictions() -> None:
    one = entry(100).size
    cache = AnswerCache(max_bytes=3 * one)
    assert cache.oldest_this_update() is None
    for serial, signed in ((1, 500.0), (2, 300.0), (3, 400.0)):
        cache.put((("sha1", serial),), entry(100, this_update=signed))
    assert cache.oldest_this_update() == 300.0
    cache.put((("sha1", 2),), entry(100, this_update=900.0))  # signed again
    assert cache.oldest_this_update() == 400.0
    cache.get((("sha1", 1),), 0.0)  # asked: 3 is now the least recently asked
    cache.put((("sha1", 4),), entry(100, this_update=800.0))  # evicts 3
    assert (("sha1", 3),) not in cache and cache.oldest_this_update() == 500.0
    cache.discard((("sha1", 1),))
    assert cache.oldest_this_update() == 800.0
    cache.clear()
    assert cache.oldest_this_update() is None


def test_responder_figures_read_back_and_anything_else_is_left_out() -> None:
    counts = AnswerCounts(from_cache=7, signed=3, renewed_due=2, renewed_changed=1)
    figures = ResponderFigures.of(4, 5000, 1_700_000_000.5, counts)
    assert ResponderFigures.from_json(figures.to_json()) == figures
    assert figures.cache_age(1_700_000_010.5) == 10.0
    assert figures.cache_age(1_699_999_999.0) == 0.0  # a reader's clock behind the writer's
    empty = ResponderFigures.of(0, 0, None, AnswerCounts())
    assert ResponderFigures.from_json(empty.to_json()) == empty and empty.cache_age(1.0) is None
    document = json.loads(figures.to_json())
    for damaged in (
        "not json",
        "[]",
        json.dumps({**document, "signed": -1}),
        json.dumps({**document, "signed": True}),
        json.dumps({**document, "cache_bytes": "5000"}),
        json.dumps({**document, "oldest_this_update": "yesterday"}),
        json.dumps({key: value for key, value in document.items() if key != "from_cache"}),
    ):
        assert ResponderFigures.from_json(damaged) is None, damaged
    assert figures_by_responder({"a:1": figures.to_json(), "b:2": "[]"}) == {"a:1": figures}


@pytest.mark.parametrize("ttl", [0.0, 1.5, -3.0])
def test_a_figures_ttl_under_two_writes_is_refused(ttl: float) -> None:
    with pytest.raises(ConfigurationError, match="shorter than two writes"):
        check_ttl(ttl)


def test_an_rsa_delegate_signs_answers_openssl_accepts(tmp_path: Path) -> None:
    ca = make_alice_ca(tmp_path / "ca")
    authority = load_authority(ca.root)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    delegate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RSA responder")]))
        .issuer_name(authority.intermediate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=True)
        .add_extension(x509.OCSPNoCheck(), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    ocsp_cert_path(ca.root).write_bytes(delegate.public_bytes(serialization.Encoding.PEM))
    ocsp_key_path(ca.root).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    identity = ResponderIdentity.load(ca.root)
    name_hash, key_hash = identity.issuer_hashes["sha1"]
    revoked_at = now.replace(microsecond=0) - timedelta(days=1)
    answers = [
        (CertID("sha1", name_hash, key_hash, 0x1001), CertStatus(Status.GOOD)),
        (
            CertID("sha1", name_hash, key_hash, 0x1002),
            CertStatus(Status.REVOKED, revoked_at, x509.ReasonFlags.key_compromise),
        ),
    ]
    this_update = now.replace(microsecond=0)
    der = signed_response(identity, answers, this_update, this_update + timedelta(days=1))

    response = ocsp.load_der_ocsp_response(der)
    key.public_key().verify(
        response.signature, response.tbs_response_bytes, padding.PKCS1v15(), hashes.SHA256()
    )
    assert response.responder_key_hash == identity.key_hash
    revoked = list(response.responses)[1]
    assert revoked.revocation_time_utc == revoked_at
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    path = tmp_path / "answer.der"
    path.write_bytes(der)
    shown = openssl(
        "ocsp", "-respin", path, "-CAfile", ca.chain_path, "-resp_text", check=False
    )  # fmt: skip
    assert "Response verify OK" in shown.stderr, shown.stdout + shown.stderr
    assert "Revocation Reason: keyCompromise" in shown.stdout


@pytest.mark.parametrize(
    "value", [0, 1, 127, 128, 255, 256, -1, -128, -129, 2**159 - 1, 2**159, -(2**64)]
)
def test_integers_are_encoded_as_asn1crypto_does(value: int) -> None:
    assert der_integer(value) == asn1_core.Integer(value).dump()


def _reference_status(status: CertStatus) -> asn1_ocsp.CertStatus:
    if status.status is not Status.REVOKED:
        return asn1_ocsp.CertStatus(name=status.status.value, value=asn1_core.Null())
    revoked: dict[str, object] = {"revocation_time": status.revoked_at}
    if status.reason is not None:
        revoked["revocation_reason"] = status.reason.name
    return asn1_ocsp.CertStatus(name="revoked", value=revoked)


@pytest.mark.parametrize("nonce", [None, b"n", b"n" * 32])
def test_response_data_is_the_der_asn1crypto_writes(nonce: bytes | None) -> None:
    """The hand-written DER, byte for byte against asn1crypto's encoder of RFC 6960's ASN.1."""
    identity = cast(ResponderIdentity, SimpleNamespace(key_hash=b"k" * 20))
    this_update = datetime(2027, 3, 1, 12, 30, 5, tzinfo=UTC)
    next_update = this_update + timedelta(days=4, seconds=-1)
    revoked_at = datetime(2027, 2, 1, tzinfo=UTC)
    answers = [
        (CertID("sha1", b"a" * 20, b"b" * 20, 0x1000), CertStatus(Status.GOOD)),
        (CertID("sha256", b"c" * 32, b"d" * 32, 2**158 + 5), CertStatus(Status.UNKNOWN)),
        (
            CertID("sha1", b"a" * 20, b"b" * 20, 0x80),
            CertStatus(Status.REVOKED, revoked_at, x509.ReasonFlags.key_compromise),
        ),
        (CertID("sha512", b"e" * 64, b"f" * 64, 7), CertStatus(Status.REVOKED, revoked_at)),
    ]
    reference: dict[str, object] = {
        "responder_id": asn1_ocsp.ResponderId(name="by_key", value=b"k" * 20),
        "produced_at": this_update,
        "responses": [
            {
                "cert_id": {
                    "hash_algorithm": {"algorithm": cert_id.algorithm},
                    "issuer_name_hash": cert_id.issuer_name_hash,
                    "issuer_key_hash": cert_id.issuer_key_hash,
                    "serial_number": cert_id.serial,
                },
                "cert_status": _reference_status(status),
                "this_update": this_update,
                "next_update": next_update,
            }
            for cert_id, status in answers
        ],
    }
    if nonce is not None:
        reference["response_extensions"] = [
            {"extn_id": "nonce", "critical": False, "extn_value": nonce}
        ]
    ours = response_data(identity, answers, this_update, next_update, nonce)
    assert ours == asn1_ocsp.ResponseData(reference).dump()
