"""Messages at the queue boundary: JSON on the wire, validated on receipt, never pickled."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

SCHEMA_VERSION = 1

JobId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@+-]+$")
]
ProfileName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
]
SanText = Annotated[str, StringConstraints(min_length=1, max_length=512)]

# A CSR above 64 KiB is refused with its own code by the CSR policy; the message itself may
# carry a little more so that refusal, not a schema error, is what the requester sees.
MAX_CSR_FIELD = 2 * 1024 * 1024
# json.dumps with separators builds a new encoder on every call; one serves every fingerprint.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))
# The most jobs a queue message may carry and still be read (and answered, job by job).
MAX_MESSAGE_JOBS = 1_000_000


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class SignRequest(_Message):
    """One CSR to sign; `job_id` is the producer's idempotency key."""

    schema_version: Literal[1] = 1
    job_id: JobId
    csr_pem: Annotated[str, StringConstraints(min_length=1, max_length=MAX_CSR_FIELD)]
    profile: ProfileName = "server_cert"
    days: int | None = None
    san: Annotated[list[SanText], Field(max_length=100)] = []
    requester: Annotated[str, StringConstraints(max_length=128)] | None = None

    def fingerprint(self) -> str:
        """What identifies the request's content, to tell a redelivery from a reused job id."""
        canonical = _COMPACT_JSON.encode(
            [self.csr_pem.strip().replace("\r\n", "\n"), self.profile, self.days, self.san]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


ProducerName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
]


class Envelope(_Message):
    """Who sealed a message, for which CA and queue, until when, and its one-time nonce.

    The HMAC in `signature` covers every field here, the message kind, the reply list and the
    payload (core.auth).
    """

    producer: ProducerName
    ca: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    queue: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    issued_at: Annotated[int, Field(ge=0, lt=2**40)]
    expires_at: Annotated[int, Field(ge=0, lt=2**40)]
    nonce: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
    signature: Annotated[str, StringConstraints(max_length=128)]


class SignBatch(_Message):
    """One queue message: many jobs, and where to push their results."""

    schema_version: Literal[2] = 2
    reply_to: Annotated[str, StringConstraints(max_length=128)] | None = None
    envelope: Envelope | None = None  # none: an unsealed batch, served only by an open signer
    # Each job is validated on its own so one malformed job cannot sink its neighbours. The
    # signer's ceilings (core.queue.MAX_BATCH_JOBS, MAX_BATCH_BYTES) are far lower: a message
    # over them is answered, each job refused, so the schema only bounds what is parsed at all.
    jobs: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_MESSAGE_JOBS)]


class JobResult(_Message):
    """What became of a job: a certificate, or a refusal with a stable code."""

    schema_version: Literal[1] = 1
    job_id: str
    status: Literal["issued", "refused", "failed"]
    serial: str | None = None
    certificate_pem: str | None = None
    code: str | None = None
    message: str | None = None
    fingerprint: str | None = None  # of the request answered, so a stale answer is told apart

    @property
    def ok(self) -> bool:
        return self.status == "issued"


def parse_sign_request(raw: object) -> SignRequest:
    """Validate one job as received; raises ValueError with a one-line reason."""
    try:
        return SignRequest.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, whole: str = "message") -> str:
    """The first problem pydantic found, as `field: message`, without echoing the input
    (`whole` names the field when the problem is the whole document)."""
    first = exc.errors(include_input=False, include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    return f"{where}: {first['msg'].removeprefix('Value error, ')}"


Text128 = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RevokeRequest(_Message):
    """One `casign.revoke` task: which serial, why, who asks and where to answer."""

    schema_version: Literal[2] = 2
    request_id: JobId
    serial: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=64)] = "unspecified"
    requester: Text128 | None = None
    reply_to: Text128 | None = None
    envelope: Envelope | None = None

    def sealed_payload(self) -> dict[str, object]:
        """What the producer's envelope covers besides itself: the whole request."""
        return self.model_dump(exclude={"envelope"})


class RevocationResult(_Message):
    """What became of a revocation request, pushed to the requester's reply list."""

    schema_version: Literal[1] = 1
    request_id: str
    status: Literal["revoked", "refused", "failed"]
    serial: str | None = None
    revoked_at: str | None = None  # index.txt time, YYMMDDHHMMSSZ
    reason: str | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "revoked"
