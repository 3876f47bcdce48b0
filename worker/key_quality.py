"""Key quality, after Boulder's `goodkey`: RSA moduli that are factored or fingerprinted as weak,
and EC public points off their curve. Each check raises `Rejected` with a `key.*` code.

Sizes and exponents are the policy's (`worker/policy.py` `check_public_key`); this module
looks inside a key that already has an acceptable size. Google's Paranoid project runs the
same three RSA tests.
"""

from __future__ import annotations

import math
from functools import cache

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.errors import RefusalCode as Code
from core.errors import Rejected

# Boulder checks the primes below 752; casign goes to 2048 (309 primes), one gcd of ~30 us.
SMALL_PRIME_BOUND = 2048
# Boulder's default: primes closer than about 2^(bits/4) * a few apart fall in 100 rounds.
FERMAT_ROUNDS = 100

# ROCA (CVE-2017-15361, Nemec et al., CCS 2017): Infineon's primes are k*M + (65537^a mod M),
# so N mod r lies in the subgroup 65537 generates in (Z/r)* for every small prime r dividing M.
# These are the primes of the authors' detector (and of Boulder's rocacheck); a random modulus
# passes all 38 tests with probability about 2^-154 (the paper's figure).
_ROCA_PRIMES = (
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
    97, 101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
)  # fmt: skip
_ROCA_GENERATOR = 65537

# Short Weierstrass curves y^2 = x^3 - 3x + b over GF(p) (SEC 2 2.4.2, 2.5.2, 2.6.2).
_NIST_CURVES: dict[str, tuple[int, int]] = {
    "secp256r1": (
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    ),
    "secp384r1": (
        2**384 - 2**128 - 2**96 + 2**32 - 1,
        0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
    ),
    "secp521r1": (
        2**521 - 1,
        0x0051953EB9618E1C9A1F929A21A0B68540EEA2DA725B99B315F3B8B489918EF109E156193951EC7E937B1652C0BD3BB1BF073573DF883D2C34F1EF451FD46B503F00,
    ),
}


def check_key_quality(key: object) -> None:
    """Refuse an RSA modulus that is factorable or ROCA-fingerprinted, or an EC point off its curve."""
    if isinstance(key, rsa.RSAPublicKey):
        modulus = key.public_numbers().n
        check_small_factors(modulus)
        check_fermat(modulus)
        check_roca(modulus)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        check_ec_point(key)


def check_small_factors(modulus: int) -> None:
    """Refuse a modulus sharing a factor with the product of the primes below SMALL_PRIME_BOUND."""
    common = math.gcd(_small_primes_product() % modulus, modulus)
    if common != 1:
        raise Rejected(
            Code.KEY_RSA_SMALL_FACTOR,
            f"the RSA modulus is divisible by {_smallest_prime_factor(common)}; a modulus must "
            f"have no prime factor below {SMALL_PRIME_BOUND} (Boulder goodkey, BR 6.1.6)",
        )


def check_fermat(modulus: int, rounds: int = FERMAT_ROUNDS) -> None:
    """Refuse a modulus whose primes are so close that Fermat's method splits it in `rounds`."""
    factor = fermat_factor(modulus, rounds)
    if factor is not None:
        raise Rejected(
            Code.KEY_RSA_FERMAT,
            f"the RSA modulus factors by Fermat's method in at most {rounds} rounds (its primes "
            f"differ by {abs(modulus // factor - factor)}); its primes must not be close "
            "(Boulder goodkey, NIST SP 800-56B 6.2.1)",
        )


def fermat_factor(modulus: int, rounds: int) -> int | None:
    """A factor of `modulus` found as a^2 - b^2 within `rounds` values of a, else None."""
    a = math.isqrt(modulus)
    if a * a < modulus:
        a += 1
    # (a+k)^2 - modulus can only be a square b^2 if it is a square modulo each sieve modulus m,
    # which depends on (a+k) mod m and modulus mod m alone: one mask per m, shifted by a mod m,
    # leaves the few k worth the big-number test.
    candidates = (1 << rounds) - 1
    for sieve_modulus, masks in _square_masks(rounds):
        candidates &= masks[modulus % sieve_modulus] >> (a % sieve_modulus)
    while candidates:
        offset = (candidates & -candidates).bit_length() - 1
        candidates &= candidates - 1
        candidate = a + offset
        excess = candidate * candidate - modulus
        b = math.isqrt(excess)
        if b * b == excess and candidate - b > 1:
            return candidate - b
    return None


def check_roca(modulus: int) -> None:
    """Refuse a modulus with the ROCA fingerprint of Infineon's key generation (CVE-2017-15361)."""
    if is_roca_fingerprint(modulus):
        raise Rejected(
            Code.KEY_ROCA,
            "the RSA modulus has the ROCA fingerprint (CVE-2017-15361, Infineon key generation); "
            "its private key can be computed, make a new key elsewhere",
        )


def is_roca_fingerprint(modulus: int) -> bool:
    """True when `modulus` mod r lies in <65537> for every prime r of the ROCA detector."""
    return all((modulus % prime) in residues for prime, residues in _roca_subgroups())


def check_ec_point(key: ec.EllipticCurvePublicKey) -> None:
    """Refuse a point that is not an affine point of its NIST prime curve (SEC 1 3.2.2.1)."""
    curve = _NIST_CURVES.get(key.curve.name)
    if curve is None:
        return  # the policy refuses other curves by name
    prime, b = curve
    numbers = key.public_numbers()
    x, y = numbers.x, numbers.y
    if not (0 <= x < prime and 0 <= y < prime) or (y * y - (x * x * x - 3 * x + b)) % prime:
        raise Rejected(
            Code.KEY_EC_POINT,
            f"the EC public key is not a point of {key.curve.name} (SEC 1 3.2.2.1)",
        )
    # The NIST prime curves have cofactor 1, so any affine point on them has the full order n.


# Moduli of the Fermat sieve: a random residue is a square modulo all of them about once in
# 2,000 tries, so a check of 100 rounds makes the big-number test about once in 20 moduli.
_SIEVE_MODULI = (64, 63, 65, 11, 17, 19, 23)


@cache
def _square_masks(rounds: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """For each sieve modulus m and each r < m: bit j set where (j mod m)^2 - r is a square
    modulo m, for j below rounds + m (so any shift by a mod m still covers `rounds` bits)."""
    sieves = []
    for sieve_modulus in _SIEVE_MODULI:
        squares = {value * value % sieve_modulus for value in range(sieve_modulus)}
        masks = tuple(
            sum(
                1 << j
                for j in range(rounds + sieve_modulus)
                if ((j % sieve_modulus) ** 2 - residue) % sieve_modulus in squares
            )
            for residue in range(sieve_modulus)
        )
        sieves.append((sieve_modulus, masks))
    return tuple(sieves)


@cache
def _small_primes() -> tuple[int, ...]:
    sieve = bytearray([1]) * SMALL_PRIME_BOUND
    sieve[0:2] = b"\x00\x00"
    for number in range(2, math.isqrt(SMALL_PRIME_BOUND) + 1):
        if sieve[number]:
            sieve[number * number :: number] = bytes(len(sieve[number * number :: number]))
    return tuple(number for number, is_prime in enumerate(sieve) if is_prime)


@cache
def _small_primes_product() -> int:
    return math.prod(_small_primes())


def _smallest_prime_factor(common: int) -> int:
    return next(prime for prime in _small_primes() if common % prime == 0)


@cache
def _roca_subgroups() -> tuple[tuple[int, frozenset[int]], ...]:
    subgroups = []
    for prime in _ROCA_PRIMES:
        generator, element, members = _ROCA_GENERATOR % prime, 1, set()
        while element not in members:
            members.add(element)
            element = element * generator % prime
        subgroups.append((prime, frozenset(members)))
    return tuple(subgroups)
