"""Key quality (Boulder's goodkey): RSA moduli with a small factor, with primes close enough for
Fermat, with the ROCA fingerprint, and EC points off their curve, each refused with its code
before a serial is drawn; and what pkilint's linter alone would make of them."""

from __future__ import annotations

import dataclasses
import math

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from core.errors import RefusalCode as Code
from core.errors import Rejected
from store.results import ResultsStore
from tests import hostile_csrs as hostile
from tests import weak_keys
from tests.csrs import job, make_csr
from worker import key_quality, policy
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner

WEAK_KEYS = {
    "small-factor-1009": (weak_keys.small_factor_key, Code.KEY_RSA_SMALL_FACTOR, "1009"),
    "close-primes": (weak_keys.close_primes_key, Code.KEY_RSA_FERMAT, "Fermat"),
    "roca": (weak_keys.roca_key, Code.KEY_ROCA, "ROCA"),
}


def weak_csr(case: str) -> str:
    make_key = WEAK_KEYS[case][0]
    return make_csr("www.example.com", key=make_key(), san=[])


@pytest.mark.parametrize("case", WEAK_KEYS)
def test_a_weak_rsa_key_with_a_valid_proof_of_possession_is_refused(
    case: str, signer: BatchSigner, store: ResultsStore
) -> None:
    _, code, named = WEAK_KEYS[case]
    (result,) = signer.sign_batch(
        [job(f"weak-{case}", weak_csr(case), "tls_server", san=["DNS:www.example.com"])]
    )
    assert (result.status, result.code) == ("refused", code), result.message
    assert named in (result.message or "")
    assert store.count_serials() == 0 and not store.pending_records()


@pytest.mark.parametrize("case", WEAK_KEYS)
def test_each_weak_key_is_refused_under_the_guide_profiles_too(
    case: str, signer: BatchSigner
) -> None:
    _, code, _ = WEAK_KEYS[case]
    (result,) = signer.sign_batch([job(f"weak-guide-{case}", weak_csr(case), "server_cert")])
    assert result.code == code, result.message


def test_the_weak_keys_are_what_they_claim() -> None:
    """The fixtures themselves: 1009 divides n, the primes are close, both primes have ROCA's
    shape; and each key is caught by its own test only."""
    small = weak_keys.small_factor_key().private_numbers()
    assert 1009 in (small.p, small.q) and small.public_numbers.n.bit_length() == 2048
    close = weak_keys.close_primes_key().private_numbers()
    assert abs(close.p - close.q) < 2**20
    roca = weak_keys.roca_key().public_key().public_numbers().n
    assert key_quality.is_roca_fingerprint(roca)
    assert key_quality.fermat_factor(roca, key_quality.FERMAT_ROUNDS) is None
    assert key_quality.fermat_factor(close.public_numbers.n, 1) in (close.p, close.q)


def test_ordinary_keys_pass_every_check() -> None:
    for _ in range(20):
        key_quality.check_key_quality(rsa.generate_private_key(65537, 2048).public_key())
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        key_quality.check_key_quality(ec.generate_private_key(curve).public_key())


def test_an_ec_point_off_its_curve_is_refused(signer: BatchSigner) -> None:
    (result,) = signer.sign_batch(
        [job("off-curve", weak_keys.off_curve_ec_request(), "server_cert")]
    )
    assert (result.status, result.code) == ("refused", Code.KEY_EC_POINT), result.message


def test_the_explicit_point_check_refuses_what_cryptography_would_have_let_through() -> None:
    """cryptography validates a point as it loads it; the check in key_quality does the same
    arithmetic itself (SEC 1 3.2.2.1), shown on a point moved off the curve by one."""
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()

    class _Moved:
        curve = ec.SECP256R1()

        def public_numbers(self) -> ec.EllipticCurvePublicNumbers:
            return ec.EllipticCurvePublicNumbers(numbers.x, numbers.y + 1, ec.SECP256R1())

    with pytest.raises(Rejected) as caught:
        key_quality.check_ec_point(_Moved())  # type: ignore[arg-type]
    assert caught.value.code is Code.KEY_EC_POINT


@pytest.mark.parametrize("case", WEAK_KEYS)
def test_the_linter_alone_does_not_catch_weak_keys(
    case: str, authority: SigningAuthority, store: ResultsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the key-quality check disabled, pkilint's BR linter passes every one of these keys:
    its small-prime test stops at 751 and is only a WARNING, and it has no Fermat or ROCA test.
    The policy is the only guard here, so these requests are issued without it."""
    monkeypatch.setattr(policy, "check_key_quality", lambda key: None)
    signer = BatchSigner(authority, store)
    (result,) = signer.sign_batch(
        [job(f"weak-lint-{case}", weak_csr(case), "tls_server", san=["DNS:www.example.com"])]
    )
    assert result.status == "issued", result.message


def test_key_types_follow_the_profile(authority: SigningAuthority, store: ResultsStore) -> None:
    """Ed25519 is refused under tls_server (BR 6.1.5) and accepted where a profile lists it."""
    csr = hostile.edwards_request(ed25519.Ed25519PrivateKey.generate(), "www.example.com")
    signer = BatchSigner(authority, store)
    refused, issued = signer.sign_batch(
        [
            job("ed-tls", csr, "tls_server", san=["DNS:www.example.com"]),
            job("ed-server", csr, "server_cert"),
        ]
    )
    assert (refused.status, refused.code) == ("refused", Code.KEY_TYPE_NOT_ALLOWED)
    assert "Ed25519" in (refused.message or "") and "BR 6.1.5" in (refused.message or "")
    assert issued.status == "issued", issued.message


def test_the_linter_alone_catches_ed25519_under_tls_server(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    tls = authority.profiles.get("tls_server")
    assert tls is not None
    relaxed = tls.model_copy(update={"name": "tls_any_key", "key_types": ["RSA", "EC", "Ed25519"]})
    extended = dataclasses.replace(
        authority,
        profiles=type(authority.profiles)({"tls_any_key": relaxed}),
        _extensions={},
    )
    csr = hostile.edwards_request(ed25519.Ed25519PrivateKey.generate(), "www.example.com")
    (result,) = BatchSigner(extended, store).sign_batch(
        [job("ed-lint", csr, "tls_any_key", san=["DNS:www.example.com"])]
    )
    assert (result.status, result.code) == ("refused", Code.LINT_FAILED)
    assert "prohibited_subject_public_key_algorithm_encoding" in (result.message or "")
    assert store.count_serials() == 0


def _fermat_one_round_at_a_time(modulus: int, rounds: int) -> int | None:
    """Fermat's method as the textbook states it, with no sieve."""
    a = math.isqrt(modulus)
    if a * a < modulus:
        a += 1
    for candidate in range(a, a + rounds):
        excess = candidate * candidate - modulus
        b = math.isqrt(excess)
        if b * b == excess and candidate - b > 1:
            return candidate - b
    return None


@given(
    st.integers(min_value=3, max_value=2**40),
    st.integers(min_value=0, max_value=2**24),
    st.integers(min_value=1, max_value=150),
)
def test_the_sieved_fermat_search_finds_what_the_textbook_one_finds(
    p: int, gap: int, rounds: int
) -> None:
    """The sieve only skips offsets that cannot give a square: same factor, same rounds."""
    modulus = p * (p + gap)
    assert key_quality.fermat_factor(modulus, rounds) == _fermat_one_round_at_a_time(
        modulus, rounds
    )


def test_primes_found_at_the_last_round_and_missed_one_round_sooner() -> None:
    p = 2**1023 + 1155  # odd; Fermat's method splits any product of two close odd numbers
    for gap in (2**515, 2**516 + 2):
        modulus = p * (p + gap)
        start = math.isqrt(modulus) + 1
        rounds = (2 * p + gap) // 2 - start + 1  # a = (p+q)/2 is the last value tried
        assert 1 < rounds < 200
        assert key_quality.fermat_factor(modulus, rounds) == p
        assert key_quality.fermat_factor(modulus, rounds - 1) is None
