"""Errors raised while issuing: a refusal with a stable code, or a fault worth retrying."""

from __future__ import annotations

from enum import StrEnum


class RefusalCode(StrEnum):
    """Stable, machine-readable reasons for refusing a request; never renumbered or reused."""

    CSR_MALFORMED = "csr.malformed"
    CSR_TOO_LARGE = "csr.too_large"
    CSR_BAD_SIGNATURE = "csr.bad_signature"
    CSR_CA_REQUESTED = "csr.ca_requested"
    CSR_CRITICAL_EXTENSION = "csr.unknown_critical_extension"
    KEY_RSA_TOO_SMALL = "key.rsa_too_small"
    KEY_RSA_EXPONENT = "key.rsa_exponent"
    KEY_EC_CURVE = "key.ec_curve"
    KEY_UNSUPPORTED = "key.unsupported_type"
    KEY_TYPE_NOT_ALLOWED = "key.type_not_allowed"
    KEY_RSA_SMALL_FACTOR = "key.rsa_small_factor"
    KEY_RSA_FERMAT = "key.rsa_fermat"
    KEY_ROCA = "key.roca"
    KEY_EC_POINT = "key.ec_point_invalid"
    SUBJECT_CN_MISSING = "subject.cn_missing"
    SUBJECT_CN_REPEATED = "subject.cn_repeated"
    SUBJECT_CN_NOT_FQDN = "subject.cn_not_fqdn"
    SUBJECT_CN_IS_CA = "subject.cn_is_ca"
    SUBJECT_BAD_CHARACTER = "subject.bad_character"
    SUBJECT_TOO_LONG = "subject.value_too_long"
    SUBJECT_ATTRIBUTE_NOT_ALLOWED = "subject.attribute_not_allowed"
    SUBJECT_COUNTRY_INVALID = "subject.country_invalid"
    SUBJECT_CN_NOT_IN_SAN = "subject.cn_not_in_san"
    SUBJECT_CN_WILDCARD = "subject.cn_wildcard_not_allowed"
    SAN_MALFORMED = "san.malformed"
    SAN_TYPE_NOT_ALLOWED = "san.type_not_allowed"
    SAN_WILDCARD = "san.wildcard_not_allowed"
    SAN_REQUIRED = "san.required"
    SAN_TOO_MANY = "san.too_many"
    SAN_TRAILING_DOT = "san.trailing_dot"
    SAN_INTERNAL_NAME = "san.internal_name"
    SAN_WILDCARD_PUBLIC_SUFFIX = "san.wildcard_on_public_suffix"
    SAN_IP_NOT_PUBLIC = "san.ip_not_public"
    PROFILE_UNKNOWN = "request.unknown_profile"
    VALIDITY_INVALID = "request.validity_invalid"
    VALIDITY_TOO_LONG = "request.validity_too_long"
    JOB_MALFORMED = "request.malformed"
    JOB_ID_REUSED = "request.job_id_reused"
    # A queue message over the signer's ceilings (core.queue): each of its jobs is refused.
    BATCH_TOO_MANY = "batch.too_many"
    BATCH_TOO_LARGE = "batch.too_large"
    AUTH_UNSIGNED = "auth.unsigned"
    AUTH_UNKNOWN_PRODUCER = "auth.unknown_producer"
    AUTH_BAD_SIGNATURE = "auth.bad_signature"
    AUTH_PROFILE_NOT_ALLOWED = "auth.profile_not_allowed"
    AUTH_NAME_NOT_ALLOWED = "auth.name_not_allowed"
    AUTH_SUBJECT_NOT_ALLOWED = "auth.subject_not_allowed"
    AUTH_RATE_LIMITED = "auth.rate_limited"
    AUTH_EXPIRED = "auth.expired"
    AUTH_REPLAYED = "auth.replayed"
    AUTH_WRONG_AUDIENCE = "auth.wrong_audience"
    # A sealed message whose answers would go to a reply list that is not its producer's.
    AUTH_FOREIGN_REPLY_LIST = "auth.foreign_reply_list"
    LINT_FAILED = "lint.failed"
    # A record read back from the store: without the signers' MAC over it (forged, altered or
    # moved), or naming a profile that changed in profiles.toml since it was reserved.
    STORE_RECORD_INVALID = "store.record_invalid"
    STORE_PROFILE_CHANGED = "store.profile_changed"
    REVOKE_UNKNOWN_SERIAL = "revoke.unknown_serial"
    REVOKE_ALREADY_REVOKED = "revoke.already_revoked"
    REVOKE_BAD_REASON = "revoke.bad_reason"
    REVOKE_MALFORMED = "revoke.malformed"
    REVOKE_NOT_ALLOWED = "revoke.not_allowed"
    # An air-gap bundle (core/bundle.py) refused whole: a part whose bytes are not the ones its
    # manifest lists, a manifest whose MAC or CMS signature does not verify, a bundle that is not
    # one, or one made for another CA or that conflicts with one answered before.
    BUNDLE_MALFORMED = "bundle.malformed"
    BUNDLE_PART_ALTERED = "bundle.part_altered"
    BUNDLE_BAD_SIGNATURE = "bundle.bad_signature"
    BUNDLE_WRONG_CA = "bundle.wrong_ca"
    BUNDLE_CONFLICT = "bundle.conflict"
    # A producer's own verdict on an answer: the certificate does not check out against the
    # request's key, the profile's usage or the producer's trust anchor.
    RESULT_UNTRUSTED = "result.untrusted"
    # The EST front-end's own refusals (RFC 7030); the CSR's go through the codes above.
    EST_CONTENT_TYPE = "est.content_type"
    EST_NOT_BASE64 = "est.not_base64"
    EST_UNKNOWN_LABEL = "est.unknown_label"
    EST_UNKNOWN_OPERATION = "est.unknown_operation"
    EST_METHOD_NOT_ALLOWED = "est.method_not_allowed"
    EST_UNAUTHENTICATED = "est.unauthenticated"
    EST_BAD_CREDENTIALS = "est.bad_credentials"
    EST_CERTIFICATE_REQUIRED = "est.certificate_required"
    EST_CERTIFICATE_UNKNOWN = "est.certificate_unknown"
    EST_CERTIFICATE_REVOKED = "est.certificate_revoked"
    EST_SUBJECT_MISMATCH = "est.subject_mismatch"
    EST_SAN_MISMATCH = "est.san_mismatch"
    EST_REQUEST_TIMEOUT = "est.request_timeout"
    EST_UNAVAILABLE = "est.unavailable"
    EST_INTERNAL_ERROR = "est.internal_error"
    # RFC 7030 3.5: the CSR's challengePassword is not this TLS session's binding value, or the
    # session (TLS 1.3) has none this server can read.
    EST_CHANNEL_BINDING = "est.channel_binding"
    EST_CHANNEL_BINDING_UNAVAILABLE = "est.channel_binding_unavailable"
    # RFC 7030 4.4.1.2: the CSR's AsymmetricDecryptKeyIdentifier names no certificate the
    # server may seal this client's key to, or one whose key cannot receive it.
    EST_KEY_RECIPIENT_UNKNOWN = "est.key_recipient_unknown"
    EST_KEY_RECIPIENT_UNUSABLE = "est.key_recipient_unusable"
    # RFC 7030 4.4.1.1 and 4.4.1.2: the CSR names both a shared secret (DecryptKeyIdentifier) and
    # a certificate (AsymmetricDecryptKeyIdentifier) to seal its key to; one key, one way.
    EST_KEY_RECIPIENT_AMBIGUOUS = "est.key_recipient_ambiguous"


class SigningError(Exception):
    """Base of every error the issuance path raises on purpose."""


class Rejected(SigningError):
    """The request is refused; retrying it unchanged gives the same answer."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Retryable(SigningError):
    """A dependency (store, HSM) failed; the same request may succeed later."""


class StoreUnavailable(Retryable):
    """The results store failed (down, full, refusing); the same request may succeed later."""


class IssuanceFault(SigningError):
    """Something we built is wrong (chain check or TBS mismatch); never hand the result out."""


class ConfigurationError(SigningError):
    """The CA folder, a key URI or a setting is unusable; the message names which."""
