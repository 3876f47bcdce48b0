"""Producer identities: HMAC-signed batches, and the secrets they are signed with.

A producer signs each batch with HMAC-SHA256 under a secret it shares with the signer; the
signer refuses unsigned or wrongly signed batches when its CA folder lists producers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from casign.errors import ConfigurationError

SIGNATURE_ALGORITHM = "hmac-sha256"
MIN_SECRET_BYTES = 16


def read_secret(source: str) -> bytes:
    """A producer secret from `file:PATH` or `env:VARIABLE` (never from a message or a flag)."""
    kind, _, where = source.partition(":")
    if kind == "file":
        try:
            secret = Path(where).read_bytes().strip()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the producer secret file {where!r} ({exc.strerror})"
            ) from None
    elif kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise ConfigurationError(f"environment variable {where} (a producer secret) is not set")
        secret = value.strip().encode()
    else:
        # Not echoed: it may be the secret itself, written in place of its source.
        raise ConfigurationError("a producer secret comes from file:PATH or env:VARIABLE")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the producer secret from {kind}:{where} is shorter than {MIN_SECRET_BYTES} bytes"
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
