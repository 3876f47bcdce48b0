"""Producer identities: HMAC-signed batches, and the secrets they are signed with.

A producer signs each batch with HMAC-SHA256 under a secret it shares with the signer; the
signer refuses unsigned or wrongly signed batches when its CA folder lists producers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

from core.errors import ConfigurationError
from core.secret_source import read_secret_source

SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_SECRET_BYTES = 16


def read_secret(source: str) -> bytes:
    """A producer secret from `file:PATH` or `env:VARIABLE` (never from a message or a flag)."""
    secret = read_secret_source(source, "producer secret").strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the producer secret from {source} is shorter than {MIN_SECRET_BYTES} bytes"
        )
    return secret


def batch_digest_input(producer: str, reply_to: str | None, jobs: Sequence[Any]) -> bytes:
    """The canonical bytes a batch signature covers: who, where the answers go, and every job."""
    return json.dumps(
        {"producer": producer, "reply_to": reply_to, "jobs": list(jobs)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode()


def sign_batch(secret: bytes, producer: str, reply_to: str | None, jobs: Sequence[Any]) -> str:
    digest = hmac.new(secret, batch_digest_input(producer, reply_to, jobs), hashlib.sha256)
    return f"{SIGNATURE_ALGORITHM}:{digest.hexdigest()}"


def signature_matches(
    secret: bytes, producer: str, reply_to: str | None, jobs: Sequence[Any], signature: str
) -> bool:
    """Constant-time check of a batch signature."""
    expected = sign_batch(secret, producer, reply_to, jobs)
    return hmac.compare_digest(expected.encode(), signature.encode())
