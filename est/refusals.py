"""What an EST client is told when it is refused: an HTTP status and a stable code.

Every refusal, the front-end's own and the signer's, is answered as `text/plain` with one line,
`CODE: sentence`, so a script can match the code; no stack trace ever reaches a client.
"""

from __future__ import annotations

from core.errors import RefusalCode as Code

# HTTP status of each code the front-end answers with; a code not listed (a CSR refused by the
# signer's policy, say) is the client's fault: 400.
_STATUS: dict[str, int] = {
    Code.EST_CONTENT_TYPE: 415,
    Code.EST_UNKNOWN_LABEL: 404,
    Code.EST_UNKNOWN_OPERATION: 404,
    Code.EST_METHOD_NOT_ALLOWED: 405,
    Code.EST_UNAUTHENTICATED: 401,
    Code.EST_BAD_CREDENTIALS: 401,
    Code.EST_CERTIFICATE_REQUIRED: 403,
    Code.EST_CERTIFICATE_UNKNOWN: 403,
    Code.EST_CERTIFICATE_REVOKED: 403,
    Code.EST_REQUEST_TIMEOUT: 408,
    Code.EST_UNAVAILABLE: 503,
    Code.EST_INTERNAL_ERROR: 500,
    Code.CSR_TOO_LARGE: 413,
    Code.AUTH_PROFILE_NOT_ALLOWED: 403,
    Code.AUTH_NAME_NOT_ALLOWED: 403,
    Code.AUTH_RATE_LIMITED: 429,  # RFC 6585 4, with Retry-After
    Code.JOB_ID_REUSED: 409,
    Code.EST_CHANNEL_BINDING: 403,
    Code.EST_CHANNEL_BINDING_UNAVAILABLE: 403,
    Code.EST_KEY_RECIPIENT_UNKNOWN: 403,
    Code.EST_KEY_RECIPIENT_UNUSABLE: 400,
    Code.EST_KEY_RECIPIENT_AMBIGUOUS: 400,
    # The store answered with a certificate that fails the trust-anchor check: never served.
    Code.RESULT_UNTRUSTED: 502,
    # The signer refused this server's own producer identity: the operator's to fix.
    Code.AUTH_UNSIGNED: 502,
    Code.AUTH_UNKNOWN_PRODUCER: 502,
    Code.AUTH_BAD_SIGNATURE: 502,
}
SIGNER_FAILURE_STATUS = 500


def status_for(code: str) -> int:
    """The HTTP status that goes with refusal `code`."""
    return _STATUS.get(code, 400)


class EstRefusal(Exception):
    """A request refused with a stable code; `headers` adds e.g. WWW-Authenticate."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status if status is not None else status_for(code)
        self.headers = headers or {}

    def body(self) -> str:
        return f"{self.code}: {self.message}\n"
