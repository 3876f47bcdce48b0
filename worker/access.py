"""Who may ask: producer identities, what each may have signed, and how fast.

`intermediate/producers.toml` lists the producers a CA serves. When the file exists, every
batch must be signed by a listed producer; without it the signer runs open (and says so).

    [producers.hr-portal]
    secret = "file:/run/secrets/hr-portal"   # or "env:HR_PORTAL_SECRET"
    profiles = ["usr_cert"]
    names = ["*@example.com"]                # every CN and SAN value must match one pattern
    subject = { O = ["Example Ltd"], OU = ["eng-*"] }  # other subject attributes, by value
    wildcards = false                        # a wildcard certificate (`*.example.com`) only if true
    rate_per_second = 10                     # token bucket, refilled at this rate
    burst = 200                              # and holding at most this many
    revoke = "own"                           # its own serials (default), "any" or "none"
    revoke_reasons = ["keyCompromise", "superseded"]   # default: the five a subscriber may give

How names match is `worker/name_patterns.py`'s docstring. A producer with `names` may put only
CN (and emailAddress, itself a name) in a subject unless `subject` lists more attributes;
`subject`, where given, holds every producer to its attributes and values.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.auth import (
    DEFAULT_AIRGAP_ENVELOPE_SECONDS,
    DEFAULT_ENVELOPE_SECONDS,
    MessageKind,
    check_envelope,
    read_secret,
)
from core.errors import ConfigurationError, RefusalCode, Rejected
from core.messages import Envelope, describe_validation_error
from core.revocation import canonical_reason
from store.acl import owns_reply_list
from store.results import ResultsStore
from worker.name_patterns import check_pattern, name_matches, value_matches
from worker.profiles import SUBJECT_ATTRIBUTE_OIDS
from worker.subject import attribute_name

__all__ = [
    "AccessPolicy",
    "AllowedProducer",
    "ProducerPolicy",
    "check_allowed",
    "listed_producer_names",
    "name_matches",
]

# Attributes that are names, checked against `names`, never against `subject`.
_NAME_ATTRIBUTES = frozenset({NameOID.COMMON_NAME, NameOID.EMAIL_ADDRESS})


def notes_refusal(code: str) -> bool:
    """Whether an unauthenticated message's refusal leaves a note under its reply list (which
    makes the list's owner report every job it waits on refused). Never under a list its sender
    does not own, and never for a replay: the message replayed was served once, its answers are
    published, and a note would refuse the owner's other jobs (a worker that died between
    remembering the message and acknowledging it gets it back as a replay)."""
    return code not in {
        RefusalCode.AUTH_FOREIGN_REPLY_LIST,
        RefusalCode.AUTH_REPLAYED,
    }


# The reasons a subscriber may give for revoking its own certificate (Baseline Requirements
# 4.9.1.1 and 7.2.2): the CA's own reasons (CACompromise, certificateHold) are not among them.
SUBSCRIBER_REVOKE_REASONS = (
    "unspecified",
    "keyCompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
)


class ProducerPolicy(BaseModel):
    """One producer's entry in producers.toml."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    secret: str
    profiles: list[str] | None = None
    names: list[str] | None = None
    # Allowed values (a `*` matches any run of characters) per subject attribute short name.
    subject: dict[str, list[str]] | None = None
    wildcards: bool = False
    rate_per_second: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    burst: int | None = Field(default=None, gt=0)
    # The longest a message of this producer may be sealed for (issued-at to expires-at).
    envelope_seconds: int = Field(default=DEFAULT_ENVELOPE_SECONDS, gt=0, le=7 * 24 * 3600)
    # The same for a message carried to an air-gapped signer (judged when the relay exported
    # it, so it covers only the wait in the queue, not the trip; casign airgap).
    airgap_envelope_seconds: int = Field(
        default=DEFAULT_AIRGAP_ENVELOPE_SECONDS, gt=0, le=30 * 24 * 3600
    )
    # Which serials it may revoke: the ones issued to it ("own"), any but the OCSP delegate's
    # ("any"), or none; and with which reasons.
    revoke: Literal["own", "any", "none"] = "own"
    revoke_reasons: list[str] = Field(default_factory=lambda: list(SUBSCRIBER_REVOKE_REASONS))

    @field_validator("revoke_reasons")
    @classmethod
    def _known_reasons(cls, reasons: list[str]) -> list[str]:
        try:
            return [canonical_reason(reason) for reason in reasons]
        except Rejected as refusal:
            raise ValueError(refusal.message) from None

    @field_validator("names")
    @classmethod
    def _usable_patterns(cls, names: list[str] | None) -> list[str] | None:
        for pattern in names or ():
            problem = check_pattern(pattern)
            if problem is not None:
                raise ValueError(f"name pattern {pattern!r} {problem}")
        return names

    @field_validator("subject")
    @classmethod
    def _known_attributes(cls, subject: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for attribute in subject or {}:
            if attribute in ("CN", "emailAddress"):
                raise ValueError(f"{attribute} is a name: list its patterns under `names`")
            if attribute not in SUBJECT_ATTRIBUTE_OIDS:
                raise ValueError(
                    f"subject attribute {attribute!r} is not one of {', '.join(SUBJECT_ATTRIBUTE_OIDS)}"
                )
        return subject


def listed_producer_names(path: Path) -> tuple[str, ...]:
    """The names of the producers `path` lists (sorted; none when there is no file): the
    worker consumes each one's own queue. ConfigurationError on a file it cannot read."""
    if not path.exists():
        return ()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
    return tuple(sorted(document.get("producers", {})))


@dataclass(frozen=True)
class AllowedProducer:
    name: str
    secret: bytes
    policy: ProducerPolicy


class AccessPolicy:
    """The producers of one CA; `None` from `load` means the signer is open to any producer."""

    def __init__(
        self, producers: dict[str, AllowedProducer], ca: str, queue: str, airgap: bool = False
    ) -> None:
        self.producers = producers
        self.ca = ca
        self.queue = queue
        self.airgap = airgap  # an air-gapped signer: each producer's airgap_envelope_seconds

    def for_airgap(self) -> AccessPolicy:
        """The same producers, their messages judged as an air-gapped signer judges them."""
        return AccessPolicy(self.producers, self.ca, self.queue, airgap=True)

    @classmethod
    def load(cls, path: Path, ca: str, queue: str) -> AccessPolicy | None:
        """The producers listed in `path`, for the CA `ca` (its identity) serving `queue`."""
        if not path.exists():
            return None
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigurationError(f"{path}: {exc}") from None
        producers: dict[str, AllowedProducer] = {}
        for name, table in document.get("producers", {}).items():
            try:
                policy = ProducerPolicy.model_validate(table)
            except ValidationError as exc:
                raise ConfigurationError(
                    f"{path}: producer {name!r}, {describe_validation_error(exc)}"
                ) from None
            producers[name] = AllowedProducer(name, read_secret(policy.secret), policy)
        return cls(producers, ca, queue)

    def authenticate(
        self,
        envelope: Envelope | None,
        kind: MessageKind,
        reply_to: str | None,
        payload: object,
        now: float | None = None,
    ) -> AllowedProducer:
        """The listed producer that sealed this message for this CA and queue, in time.

        Raise Rejected otherwise; whether the nonce was seen before is the caller's check.
        """
        if envelope is None:
            raise Rejected(
                RefusalCode.AUTH_UNSIGNED,
                "the message is not sealed; this CA only serves listed producers",
            )
        known = self.producers.get(envelope.producer)
        if known is None:
            raise Rejected(
                RefusalCode.AUTH_UNKNOWN_PRODUCER, f"producer {envelope.producer!r} is not listed"
            )
        check_envelope(
            envelope,
            known.secret,
            kind,
            ca=self.ca,
            queue=self.queue,
            reply_to=reply_to,
            payload=payload,
            max_lifetime_seconds=(
                known.policy.airgap_envelope_seconds
                if self.airgap
                else known.policy.envelope_seconds
            ),
            now=now,
        )
        # Checked once the MAC holds: the producer itself named a list that is not its own.
        if reply_to is not None and not owns_reply_list(known.name, reply_to):
            raise Rejected(
                RefusalCode.AUTH_FOREIGN_REPLY_LIST,
                f"producer {known.name!r} sealed a message whose answers go to a reply list "
                f"that is not its own (its lists are named '{known.name}:...')",
            )
        return known

    def take_tokens(self, store: ResultsStore, producer: AllowedProducer, wanted: int) -> int:
        """How many of `wanted` jobs the producer's rate allows now."""
        policy = producer.policy
        if policy.rate_per_second is None:
            return wanted
        burst = policy.burst or max(1, int(policy.rate_per_second))
        return store.rate_limits.take(producer.name, policy.rate_per_second, burst, wanted)


def check_allowed(
    producer: AllowedProducer,
    profile: str,
    subject: x509.Name,
    names: tuple[x509.GeneralName, ...],
) -> None:
    """Refuse a profile, a subject attribute or a name the producer may not have."""
    policy = producer.policy
    if policy.profiles is not None and profile not in policy.profiles:
        raise Rejected(
            RefusalCode.AUTH_PROFILE_NOT_ALLOWED,
            f"producer {producer.name!r} may not request profile {profile!r}",
        )
    check_subject_allowed(producer, subject)
    if policy.names is None:
        return
    # A legacy subject emailAddress is a name too: S/MIME clients still read it (RFC 5280 4.1.2.6).
    values = [
        str(attribute.value)
        for oid in (x509.NameOID.COMMON_NAME, x509.NameOID.EMAIL_ADDRESS)
        for attribute in subject.get_attributes_for_oid(oid)
    ]
    values += [str(name.value) for name in names]
    for value in values:
        if not any(name_matches(value, pattern, policy.wildcards) for pattern in policy.names):
            raise Rejected(
                RefusalCode.AUTH_NAME_NOT_ALLOWED,
                f"producer {producer.name!r} may not request the name {value!r} "
                f"(patterns match ASCII names label by label; wildcards "
                f"{'allowed' if policy.wildcards else 'not allowed'})",
            )


def check_subject_allowed(producer: AllowedProducer, subject: x509.Name) -> None:
    """Refuse a subject attribute other than CN and emailAddress that the producer's `subject`
    does not allow; with no `subject` entry, a producer restricted by `names` may send none."""
    policy = producer.policy
    if policy.subject is None and policy.names is None:
        return
    allowed = policy.subject or {}
    for attribute in subject:
        if attribute.oid in _NAME_ATTRIBUTES:
            continue
        label, value = attribute_name(attribute.oid), str(attribute.value)
        patterns = allowed.get(label)
        if patterns is None:
            raise Rejected(
                RefusalCode.AUTH_SUBJECT_NOT_ALLOWED,
                f"producer {producer.name!r} may not put {label} in a subject (its "
                "producers.toml entry allows "
                f"{', '.join(['CN', 'emailAddress', *allowed]) if allowed else 'CN and emailAddress only'})",
            )
        if not any(value_matches(value, pattern) for pattern in patterns):
            raise Rejected(
                RefusalCode.AUTH_SUBJECT_NOT_ALLOWED,
                f"producer {producer.name!r} may not have subject {label} {value!r}",
            )
