"""From an authenticated CSR to a certificate: the job, its idempotent id, its answer.

Every enrollment is a signing job like any other producer's. Its job id is derived from the
client, the operation, the label and the CSR, so a client that asks again after `202 Accepted`
(or after losing the answer) gets the same job, answered from the store. serverkeygen's key
lives in this process's memory only, until it is handed to the client (or after a while).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from core.errors import RefusalCode as Code
from core.messages import JobResult, SignRequest
from est.admission import EstClient
from est.batching import Batcher, Identity, StillSigning
from est.reenroll import job_id_for
from est.refusals import SIGNER_FAILURE_STATUS, EstRefusal
from est.settings import ServerSettings
from est.wire import csr_to_pem, pem_to_der

log = logging.getLogger("casign.est")

_HELD_KEYS_MAX = 10_000
_HELD_KEY_SECONDS = 900.0
_RSA_SIZES = (2048, 3072, 4096)
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1,
    "secp384r1": ec.SECP384R1,
    "secp521r1": ec.SECP521R1,
}
ServerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class StillPending(Exception):
    """The job is not finished yet: answer 202 Accepted with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("still signing")
        self.retry_after = retry_after


@dataclass(frozen=True)
class _HeldKey:
    key: ServerKey
    csr: x509.CertificateSigningRequest
    until: float


def job_digest(*parts: bytes) -> str:
    """A hex digest of `parts`, each length-prefixed so no two sequences collide."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(4, "big") + part)
    return digest.hexdigest()[:40]


def identity_of(client: EstClient) -> Identity:
    return Identity(client.entry.producer, client.entry.secret)


def certificate_from(result: JobResult, retry_after: int) -> bytes:
    """The issued certificate's DER, or the refusal the signer gave, as the client will see it.

    An issued result reaches here only checked (its key, serial and chain to the anchor).
    """
    if result.ok and result.certificate_pem:
        return pem_to_der(result.certificate_pem)
    code = result.code or Code.EST_INTERNAL_ERROR
    message = result.message or "the signer gave no reason"
    if result.status == "refused":
        headers = {"Retry-After": str(retry_after)} if code == Code.AUTH_RATE_LIMITED else None
        raise EstRefusal(code, message, headers=headers)
    if code == Code.RESULT_UNTRUSTED:
        log.error("EST: job %s answered with an untrusted certificate: %s", result.job_id, message)
        raise EstRefusal(
            code,
            "the certificate the store answered with does not check out against this server's "
            "trust anchor; it is not served",
        )
    if code == Code.EST_UNAVAILABLE:
        raise EstRefusal(code, message, headers={"Retry-After": str(retry_after)})
    raise EstRefusal(code, "the signer failed on this request", status=SIGNER_FAILURE_STATUS)


class Enrollments:
    """Enrolls, re-enrolls and makes keys for authenticated clients, through the batcher."""

    def __init__(self, batcher: Batcher, settings: ServerSettings) -> None:
        self.batcher = batcher
        self.settings = settings
        self._held: OrderedDict[str, _HeldKey] = OrderedDict()

    async def enroll(
        self,
        client: EstClient,
        label: str,
        csr: x509.CertificateSigningRequest,
        operation: str,
        context: bytes = b"",
        der: bytes | None = None,
    ) -> bytes:
        """The DER certificate for `csr` (whose DER `der` is, when the caller has it); raises
        EstRefusal, or StillPending for a 202."""
        if der is None:
            der = csr.public_bytes(serialization.Encoding.DER)
        digest = job_digest(operation.encode(), label.encode(), context, der)
        request = SignRequest(
            job_id=job_id_for(client.name, digest),
            csr_pem=csr_to_pem(der),
            profile=label,
            requester=f"est:{client.name}",
        )
        deadline = time.monotonic() + self.settings.wait_seconds
        outcome = await self.batcher.submit(identity_of(client), request, deadline)
        retry_after = self.settings.retry_after_seconds
        if isinstance(outcome, StillSigning):
            raise StillPending(retry_after)
        return certificate_from(outcome, retry_after)

    async def serverkeygen(
        self, client: EstClient, label: str, csr: x509.CertificateSigningRequest
    ) -> tuple[ServerKey, bytes]:
        """RFC 7030 4.4: a key made here for the CSR's subject and SAN, and its certificate.

        The client's key in the CSR only says which kind of key to make (4.4.1). The key is
        held in memory while the client waits for its certificate, never written anywhere.
        """
        held_for = job_digest(
            b"serverkeygen", label.encode(), client.name.encode(),
            csr.public_bytes(serialization.Encoding.DER),
        )  # fmt: skip
        held = self._take_held(held_for)
        if held is None:
            key = await asyncio.to_thread(key_like, csr.public_key())
            held = _HeldKey(key, csr_for_key(csr, key), time.monotonic() + _HELD_KEY_SECONDS)
        try:
            certificate = await self.enroll(client, label, held.csr, "serverkeygen")
        except StillPending:
            self._hold(held_for, held)
            raise
        return held.key, certificate

    def _take_held(self, name: str) -> _HeldKey | None:
        now = time.monotonic()
        while self._held and next(iter(self._held.values())).until <= now:
            self._held.popitem(last=False)
        return self._held.pop(name, None)

    def _hold(self, name: str, held: _HeldKey) -> None:
        self._held[name] = held
        while len(self._held) > _HELD_KEYS_MAX:
            self._held.popitem(last=False)


def key_like(public_key: object) -> ServerKey:
    """A new key of the kind of `public_key` (RSA of its size, EC on its curve, Ed25519)."""
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=public_key.key_size)
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name in _CURVES:
        return ec.generate_private_key(_CURVES[public_key.curve.name]())
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return ed25519.Ed25519PrivateKey.generate()
    raise EstRefusal(
        Code.KEY_UNSUPPORTED,
        "serverkeygen makes RSA 2048/3072/4096, ECDSA P-256/P-384/P-521 or Ed25519 keys, "
        "like the key in the CSR",
    )


def csr_for_key(
    csr: x509.CertificateSigningRequest, key: ServerKey
) -> x509.CertificateSigningRequest:
    """A CSR with the subject and subjectAltName of `csr`, signed by `key`."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(csr.subject)
    try:
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        builder = builder.add_extension(names.value, critical=names.critical)
    except x509.ExtensionNotFound:
        pass
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)
