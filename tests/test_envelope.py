"""Sealed messages: the HMAC binds kind, CA, queue, reply list, time and nonce to the payload."""

from __future__ import annotations

import secrets

import pytest

from core.auth import MessageKind, check_envelope, seal
from core.errors import RefusalCode, Rejected
from core.messages import Envelope

SECRET = secrets.token_bytes(32)
CA = "a" * 64
QUEUE = "casign.sign"
NOW = 1_800_000_000.0
JOBS = [{"job_id": "order-42", "csr_pem": "...", "profile": "usr_cert"}]


def sealed(**overrides: object) -> Envelope:
    arguments: dict[str, object] = {
        "producer": "hr-portal",
        "ca": CA,
        "queue": QUEUE,
        "reply_to": "replies",
        "payload": JOBS,
        "lifetime_seconds": 600,
        "now": NOW,
    }
    arguments.update(overrides)
    return seal(SECRET, MessageKind.SIGN, **arguments)  # type: ignore[arg-type]


def check(envelope: Envelope, **overrides: object) -> None:
    arguments: dict[str, object] = {
        "ca": CA,
        "queue": QUEUE,
        "reply_to": "replies",
        "payload": JOBS,
        "max_lifetime_seconds": 600,
        "now": NOW + 5,
    }
    kind = overrides.pop("kind", MessageKind.SIGN)
    secret = overrides.pop("secret", SECRET)
    arguments.update(overrides)
    check_envelope(envelope, secret, kind, **arguments)  # type: ignore[arg-type]


def code_of(envelope: Envelope, **overrides: object) -> str:
    with pytest.raises(Rejected) as refused:
        check(envelope, **overrides)
    return refused.value.code


def test_a_sealed_message_opens_where_and_when_it_was_meant_to() -> None:
    check(sealed())


def test_each_sealed_message_has_its_own_nonce() -> None:
    assert sealed().nonce != sealed().nonce


@pytest.mark.parametrize(
    "field, value",
    [
        ("producer", "web-frontend"),
        ("issued_at", int(NOW) - 1),
        ("expires_at", int(NOW) + 10_000),
        ("nonce", "0" * 32),
        ("ca", "b" * 64),
        ("queue", "other.queue"),
    ],
)
def test_changing_any_envelope_field_breaks_the_seal(field: str, value: object) -> None:
    forged = sealed().model_copy(update={field: value})
    assert code_of(forged) == RefusalCode.AUTH_BAD_SIGNATURE


def test_the_seal_covers_the_payload_and_the_reply_list() -> None:
    envelope = sealed()
    other_jobs = [{**JOBS[0], "profile": "server_cert"}]
    assert code_of(envelope, payload=other_jobs) == RefusalCode.AUTH_BAD_SIGNATURE
    assert code_of(envelope, reply_to="someone-else") == RefusalCode.AUTH_BAD_SIGNATURE
    assert code_of(envelope, secret=secrets.token_bytes(32)) == RefusalCode.AUTH_BAD_SIGNATURE


def test_a_signing_seal_does_not_open_as_a_revocation() -> None:
    assert code_of(sealed(), kind=MessageKind.REVOKE) == RefusalCode.AUTH_BAD_SIGNATURE


def test_a_message_for_another_ca_or_queue_is_refused_as_such() -> None:
    assert code_of(sealed(ca="b" * 64)) == RefusalCode.AUTH_WRONG_AUDIENCE
    assert code_of(sealed(queue="casign.other")) == RefusalCode.AUTH_WRONG_AUDIENCE


def test_expired_future_and_over_long_messages_are_refused() -> None:
    assert code_of(sealed(), now=NOW + 600 + 61) == RefusalCode.AUTH_EXPIRED
    check(sealed(), now=NOW + 600 + 59)  # within the clock skew allowed
    assert code_of(sealed(now=NOW + 3600)) == RefusalCode.AUTH_EXPIRED
    assert code_of(sealed(lifetime_seconds=3600)) == RefusalCode.AUTH_EXPIRED
    check(sealed(lifetime_seconds=3600), max_lifetime_seconds=3600)


def test_refusals_never_echo_the_secret() -> None:
    with pytest.raises(Rejected) as refused:
        check(sealed(), secret=b"x" * 32)
    assert SECRET.hex() not in str(refused.value)
