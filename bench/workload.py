"""The benchmark's workload: leaf CSRs with distinct names, all made before any timing starts."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

LEAF_KEY_TYPES = ("rsa2048", "p256")
PROFILE = "server_cert"  # the guide's `-extensions server_cert`
_CHUNK = 500


@dataclass(frozen=True)
class Workload:
    """PEM CSRs and their common names, index for index; one leaf key signs them all."""

    csr_pems: tuple[str, ...]
    common_names: tuple[str, ...]
    leaf_key: str

    def __len__(self) -> int:
        return len(self.csr_pems)

    def head(self, count: int) -> Workload:
        """The first `count` CSRs (all of them if there are fewer)."""
        return Workload(self.csr_pems[:count], self.common_names[:count], self.leaf_key)


def common_name(index: int) -> str:
    """A distinct fully qualified name, as the server_cert profile requires of its CN."""
    # Under example.com, a public suffix: the tls_server profile takes only public names.
    return f"host{index:07d}.bench.example.com"


def _leaf_key_pem(leaf_key: str) -> bytes:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if leaf_key == "rsa2048":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif leaf_key == "p256":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"leaf key type {leaf_key!r} is not one of {', '.join(LEAF_KEY_TYPES)}")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _csrs(key_pem: bytes, names: Sequence[str]) -> list[str]:
    """One PEM CSR per name, signed by the key in `key_pem` (runs in a pool process)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise TypeError(f"leaf key is {type(key).__name__}, not RSA or EC")
    pems = []
    for name in names:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .sign(key, hashes.SHA256())
        )
        pems.append(csr.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    return pems


def leaf_key_pem(leaf_key: str) -> bytes:
    """A fresh unencrypted PKCS#8 PEM leaf key of type `leaf_key` (one of LEAF_KEY_TYPES)."""
    return _leaf_key_pem(leaf_key)


def csr_chunk(key_pem: bytes, first: int, count: int) -> list[str]:
    """PEM CSRs for `host{first}` .. `host{first + count - 1}`, all signed by `key_pem`."""
    return _csrs(key_pem, [common_name(index) for index in range(first, first + count)])


def make_workload(count: int, leaf_key: str = "rsa2048") -> Workload:
    """`count` CSRs named `host0000000.bench.example.com` onwards, made on every CPU."""
    key_pem = _leaf_key_pem(leaf_key)
    names = [common_name(index) for index in range(count)]
    chunks = [names[start : start + _CHUNK] for start in range(0, count, _CHUNK)]
    if len(chunks) <= 1:
        pems = _csrs(key_pem, names)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 1, mp_context=context) as pool:
            pems = [
                pem
                for chunk_pems in pool.map(_csrs, [key_pem] * len(chunks), chunks)
                for pem in chunk_pems
            ]
    return Workload(tuple(pems), tuple(names), leaf_key)
