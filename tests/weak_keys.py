"""RSA keys that are weak in the ways Boulder's goodkey looks for, each with a working private key
(so its CSR carries a valid proof of possession)."""

from __future__ import annotations

import math
import secrets
from functools import cache

from cryptography.hazmat.primitives.asymmetric import rsa

from tests import hostile_csrs as hostile

EXPONENT = 65537
_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71)
# The primes of the ROCA detector and 2: Infineon's M for small keys is this primorial's kind.
_ROCA_PRIMORIAL = math.prod(
    (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
     97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167)
)  # fmt: skip


def is_probable_prime(number: int, rounds: int = 32) -> bool:
    """Miller-Rabin with random bases (FIPS 186-5 B.3.1)."""
    if number < 2:
        return False
    for prime in _SMALL_PRIMES:
        if number % prime == 0:
            return number == prime
    odd, twos = number - 1, 0
    while odd % 2 == 0:
        odd, twos = odd // 2, twos + 1
    for _ in range(rounds):
        witness = pow(2 + secrets.randbelow(number - 3), odd, number)
        if witness in (1, number - 1):
            continue
        for _ in range(twos - 1):
            witness = witness * witness % number
            if witness == number - 1:
                break
        else:
            return False
    return True


def random_prime(bits: int) -> int:
    while True:
        candidate = secrets.randbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if math.gcd(candidate - 1, EXPONENT) == 1 and is_probable_prime(candidate):
            return candidate


def next_prime(number: int) -> int:
    candidate = number | 1
    while not (math.gcd(candidate - 1, EXPONENT) == 1 and is_probable_prime(candidate)):
        candidate += 2
    return candidate


def private_key(p: int, q: int) -> rsa.RSAPrivateKey:
    """The RSA key with primes p and q and e = 65537."""
    modulus = p * q
    d = pow(EXPONENT, -1, math.lcm(p - 1, q - 1))
    return rsa.RSAPrivateNumbers(
        p=p,
        q=q,
        d=d,
        dmp1=d % (p - 1),
        dmq1=d % (q - 1),
        iqmp=pow(q, -1, p),
        public_numbers=rsa.RSAPublicNumbers(EXPONENT, modulus),
    ).private_key(unsafe_skip_rsa_key_validation=True)


@cache
def small_factor_key(factor: int = 1009, bits: int = 2048) -> rsa.RSAPrivateKey:
    """n = factor * q with n exactly `bits` long (the issue's 1009 * q)."""
    while True:
        q = random_prime(bits - factor.bit_length())
        if (factor * q).bit_length() == bits:
            return private_key(factor, q)


@cache
def close_primes_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """p and the next usable prime after p + 2: Fermat's method splits n in one round."""
    p = random_prime(bits // 2)
    return private_key(p, next_prime(p + 2))


def roca_prime(bits: int) -> int:
    """k * M + (65537^a mod M), M the detector's primorial: the shape of Infineon's primes."""
    while True:
        a = secrets.randbelow(1 << 64)
        # k * M in [1.5 * 2^(bits-1), 2^bits): two such primes make a modulus of 2 * bits.
        lowest, highest = (3 << (bits - 2)) // _ROCA_PRIMORIAL + 1, (1 << bits) // _ROCA_PRIMORIAL
        k = lowest + secrets.randbelow(highest - lowest)
        candidate = k * _ROCA_PRIMORIAL + pow(EXPONENT, a, _ROCA_PRIMORIAL)
        if (
            candidate.bit_length() == bits
            and math.gcd(candidate - 1, EXPONENT) == 1
            and is_probable_prime(candidate)
        ):
            return candidate


@cache
def roca_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key both of whose primes have the ROCA structure (CVE-2017-15361)."""
    while True:
        p, q = roca_prime(bits // 2), roca_prime(bits // 2)
        if (p * q).bit_length() == bits and p != q:
            return private_key(p, q)


def off_curve_ec_request(common_name: str = "www.example.com") -> str:
    """A CSR whose P-256 public point (1, 1) is not on the curve (signed by an unrelated key:
    the key is refused before the signature is looked at)."""
    point = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")
    spki = hostile.der_sequence(
        hostile.der_sequence(
            hostile.der_oid("1.2.840.10045.2.1"), hostile.der_oid("1.2.840.10045.3.1.7")
        ),
        hostile.der_bit_string(point),
    )
    subject = hostile.der_name(
        (hostile.OID_COMMON_NAME, hostile.tlv(hostile.TAG_UTF8_STRING, common_name.encode()))
    )
    info = hostile.certification_request_info(subject, spki)
    return hostile.to_pem(hostile.sign_info_rsa(info, rsa.generate_private_key(65537, 2048)))
