"""Producer identities: sealed messages, and the secrets they are sealed with.

A producer seals each batch or revocation in an `Envelope`: HMAC-SHA256, under a secret it
shares with the signer, over the message kind, the CA's identity, the queue, the reply list,
issued-at, expires-at, a unique nonce and the payload. The signer refuses a message that is
unsealed, forged, meant for another CA, queue or kind, expired, or (with its replay cache in the
store) seen before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from core.errors import ConfigurationError, RefusalCode, Rejected
from core.messages import Envelope
from core.secret_source import read_secret_source

SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_SECRET_BYTES = 16
ENVELOPE_VERSION = 2
DEFAULT_ENVELOPE_SECONDS = 600  # how long a sealed message may wait in the queue
# How long one may wait in the queue of an air-gapped signer, until the relay exports it.
DEFAULT_AIRGAP_ENVELOPE_SECONDS = 24 * 3600
CLOCK_SKEW_SECONDS = 60


def read_secret(source: str) -> bytes:
    """A producer secret from `file:PATH` or `env:VARIABLE` (never from a message or a flag)."""
    secret = read_secret_source(source, "producer secret").strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the producer secret from {source} is shorter than {MIN_SECRET_BYTES} bytes"
        )
    return secret


class MessageKind(StrEnum):
    """What a sealed message asks for: a tag inside what the HMAC covers (domain separation)."""

    SIGN = "casign.sign"
    REVOKE = "casign.revoke"


def ca_identity(intermediate: x509.Certificate) -> str:
    """The CA a message is meant for: SHA-256 of the intermediate's SubjectPublicKeyInfo, hex."""
    return key_identity(intermediate.public_key())


def key_identity(public_key: CertificatePublicKeyTypes) -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo, hex (a CA's, before its certificate)."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _sealed_bytes(
    envelope: Envelope, kind: MessageKind, reply_to: str | None, payload: Any
) -> bytes:
    """The canonical bytes an envelope's HMAC covers: its every field, the kind and the payload."""
    return json.dumps(
        {
            "v": ENVELOPE_VERSION,
            "kind": kind.value,
            "producer": envelope.producer,
            "ca": envelope.ca,
            "queue": envelope.queue,
            "reply_to": reply_to,
            "issued_at": envelope.issued_at,
            "expires_at": envelope.expires_at,
            "nonce": envelope.nonce,
            "payload": payload,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def _mac(secret: bytes, data: bytes) -> str:
    return f"{SIGNATURE_ALGORITHM}:{hmac.new(secret, data, hashlib.sha256).hexdigest()}"


def seal(
    secret: bytes,
    kind: MessageKind,
    *,
    producer: str,
    ca: str,
    queue: str,
    reply_to: str | None,
    payload: Any,
    lifetime_seconds: int = DEFAULT_ENVELOPE_SECONDS,
    now: float | None = None,
) -> Envelope:
    """An envelope for one message: who sends it, to which CA and queue, until when, once."""
    issued_at = int(time.time() if now is None else now)
    unsigned = Envelope(
        producer=producer,
        ca=ca,
        queue=queue,
        issued_at=issued_at,
        expires_at=issued_at + lifetime_seconds,
        nonce=secrets.token_hex(16),
        signature="",
    )
    signature = _mac(secret, _sealed_bytes(unsigned, kind, reply_to, payload))
    return unsigned.model_copy(update={"signature": signature})


def check_envelope(
    envelope: Envelope,
    secret: bytes,
    kind: MessageKind,
    *,
    ca: str,
    queue: str,
    reply_to: str | None,
    payload: Any,
    max_lifetime_seconds: int,
    now: float | None = None,
) -> None:
    """Refuse an envelope that is forged, meant for another CA, queue or kind, or out of time.

    The replay cache (a nonce seen before) is the signer's, in the store.
    """
    expected = _mac(secret, _sealed_bytes(envelope, kind, reply_to, payload))
    if not hmac.compare_digest(expected.encode(), envelope.signature.encode()):
        raise Rejected(
            RefusalCode.AUTH_BAD_SIGNATURE,
            f"the message's signature does not verify with producer {envelope.producer!r}'s secret",
        )
    # Checked after the MAC, so a forger learns nothing from which of these failed.
    if envelope.ca != ca:
        raise Rejected(
            RefusalCode.AUTH_WRONG_AUDIENCE,
            f"the message is sealed for CA {envelope.ca[:16]}..., not this CA ({ca[:16]}...)",
        )
    if envelope.queue != queue:
        raise Rejected(
            RefusalCode.AUTH_WRONG_AUDIENCE,
            f"the message is sealed for queue {envelope.queue!r}, not {queue!r}",
        )
    moment = time.time() if now is None else now
    if envelope.expires_at - envelope.issued_at > max_lifetime_seconds:
        raise Rejected(
            RefusalCode.AUTH_EXPIRED,
            f"the message is sealed for {envelope.expires_at - envelope.issued_at} s; producer "
            f"{envelope.producer!r} may seal for at most {max_lifetime_seconds} s",
        )
    if envelope.issued_at > moment + CLOCK_SKEW_SECONDS:
        raise Rejected(
            RefusalCode.AUTH_EXPIRED,
            f"the message is sealed {envelope.issued_at - moment:.0f} s in the future "
            "(is the producer's clock right?)",
        )
    if moment > envelope.expires_at + CLOCK_SKEW_SECONDS:
        raise Rejected(
            RefusalCode.AUTH_EXPIRED,
            f"the message expired {moment - envelope.expires_at:.0f} s ago; send it again",
        )
