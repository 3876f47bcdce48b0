"""PKCS#11 keys: a key held in a token (an HSM, SoftHSM) that acts as a `cryptography` key."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NoReturn, Self, TypeVar
from urllib.parse import unquote_to_bytes

import pkcs11
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import utils as asym_utils
from cryptography.hazmat.primitives.asymmetric.padding import (
    MGF1,
    PSS,
    AsymmetricPadding,
    PKCS1v15,
    calculate_max_pss_salt_length,
)
from cryptography.utils import Buffer
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass, TokenFlag
from pkcs11.mechanisms import MGF
from pkcs11.types import Object, Session, SignMixin, Token

from core.errors import ConfigurationError, Retryable, SigningError
from core.keys import KeyType
from keystore.backend import SigningKey
from keystore.uri import KeyURI

# SoftHSM fails about one login in six when two processes log in to a token at once.
_LOGIN_ATTEMPTS = 5

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Library

DEFAULT_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
MODULE_ENV = "CASIGN_PKCS11_MODULE"


@dataclass(frozen=True)
class _HashMechanisms:
    """How a token names one hash in each signature scheme we sign with."""

    digest: Mechanism
    mgf1: MGF
    rsa_pkcs1v15: Mechanism
    rsa_pss: Mechanism
    ecdsa: Mechanism


# The one mechanism table; a hash missing here cannot sign. ECDSA falls back to hashing here
# and CKM_ECDSA when the token lacks CKM_ECDSA_SHA* (SoftHSM 2.6 does).
_MECHANISMS: dict[type[hashes.HashAlgorithm], _HashMechanisms] = {
    hashes.SHA256: _HashMechanisms(
        Mechanism.SHA256,
        MGF.SHA256,
        Mechanism.SHA256_RSA_PKCS,
        Mechanism.SHA256_RSA_PKCS_PSS,
        Mechanism.ECDSA_SHA256,
    ),
    hashes.SHA384: _HashMechanisms(
        Mechanism.SHA384,
        MGF.SHA384,
        Mechanism.SHA384_RSA_PKCS,
        Mechanism.SHA384_RSA_PKCS_PSS,
        Mechanism.ECDSA_SHA384,
    ),
    hashes.SHA512: _HashMechanisms(
        Mechanism.SHA512,
        MGF.SHA512,
        Mechanism.SHA512_RSA_PKCS,
        Mechanism.SHA512_RSA_PKCS_PSS,
        Mechanism.ECDSA_SHA512,
    ),
}

# CKA_EC_PARAMS holds the DER namedCurve OID (RFC 5480 section 2.1.1.1).
_CURVES: dict[bytes, ec.EllipticCurve] = {
    bytes.fromhex("06082a8648ce3d030107"): ec.SECP256R1(),
    bytes.fromhex("06052b81040022"): ec.SECP384R1(),
}

# PKCS#11 v2.40 section 4.9: SENSITIVE and not EXTRACTABLE keep the private key in the token.
_PRIVATE_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE: dict[Attribute, Any] = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: False,
    Attribute.VERIFY: True,
    Attribute.ENCRYPT: False,
    Attribute.WRAP: False,
}

# Errors that retrying cannot cure: the token refuses this request, it is not unavailable.
_REFUSALS: tuple[type[pkcs11.PKCS11Error], ...] = (
    pkcs11.ArgumentsBad,
    pkcs11.DataInvalid,
    pkcs11.DataLenRange,
    pkcs11.FunctionNotSupported,
    pkcs11.KeySizeRange,
    pkcs11.KeyTypeInconsistent,
    pkcs11.MechanismInvalid,
    pkcs11.MechanismParamInvalid,
)
_PIN_ERRORS: tuple[type[pkcs11.PKCS11Error], ...] = (
    pkcs11.PinExpired,
    pkcs11.PinIncorrect,
    pkcs11.PinInvalid,
    pkcs11.PinLenRange,
    pkcs11.PinLocked,
    pkcs11.UserPinNotInitialized,
)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _module_path(uri: KeyURI) -> str:
    return uri.query.get("module-path") or os.environ.get(MODULE_ENV) or DEFAULT_MODULE


def _object_id(uri: KeyURI) -> bytes | None:
    """The `id` path attribute as bytes; RFC 7512 section 2.3 lets it hold any octets."""
    body = uri.text.partition(":")[2].partition("?")[0]
    for item in body.split(";"):
        name, _, value = item.partition("=")
        if name == "id":
            return unquote_to_bytes(value)
    return None


@dataclass
class _Module:
    """A loaded PKCS#11 library and the process that initialised it."""

    library: Pkcs11Library
    pid: int


@dataclass
class _Registry:
    """This process's modules and token sessions; `lock` guards both dicts."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    modules: dict[str, _Module] = field(default_factory=dict)
    tokens: dict[tuple[str, str, bytes], _TokenSession] = field(default_factory=dict)

    def library(self, path: str, uri: KeyURI) -> Pkcs11Library:
        """The module at `path`, initialised in this process; the caller holds `lock`."""
        pid = os.getpid()
        module = self.modules.get(path)
        if module is None:
            try:
                library = pkcs11.lib(path)
            except pkcs11.PKCS11Error as exc:
                raise ConfigurationError(
                    f"{uri}: cannot load the PKCS#11 module {path} ({_reason(exc)})"
                ) from exc
            module = self.modules[path] = _Module(library, pid)
        elif module.pid != pid:
            # A forked child must not use its parent's module state (PKCS#11, "Applications
            # and processes"): drop the copy and initialise afresh. A module that reset itself
            # on fork reports CKR_CRYPTOKI_NOT_INITIALIZED here, which is fine.
            with contextlib.suppress(pkcs11.PKCS11Error):
                module.library.finalize()
            module.library.initialize()
            module.pid = pid
        return module.library

    def reinitialise_later(self, library: Pkcs11Library) -> None:
        """Have the next `library()` call finalize and initialise `library` again.

        A module that lost its device (SoftHSM whose token folder went away) keeps failing
        until C_Finalize/C_Initialize; without this only a new process would recover.
        """
        for module in self.modules.values():
            if module.library is library:
                module.pid = 0


_REGISTRY = _Registry()


def _renew_locks_in_child() -> None:
    # A lock another thread held at fork() would stay locked forever in the child.
    _REGISTRY.lock = threading.Lock()
    for token in _REGISTRY.tokens.values():
        token.lock = threading.Lock()


os.register_at_fork(after_in_child=_renew_locks_in_child)


def _find_token(
    library: Pkcs11Library,
    uri: KeyURI,
    label: str | None,
    serial: bytes | None,
    unavailable: type[SigningError],
) -> Token:
    try:
        present = list(library.get_tokens())
    except pkcs11.PKCS11Error as exc:
        _REGISTRY.reinitialise_later(library)
        raise unavailable(f"{uri}: cannot list the tokens ({_reason(exc)})") from exc
    tokens = [
        token
        for token in present
        if (label is None or token.label == label) and (serial is None or token.serial == serial)
    ]
    wanted = " and ".join(
        part
        for part in (
            f"labelled {label!r}" if label is not None else "",
            f"with serial {serial.decode(errors='replace')!r}" if serial is not None else "",
        )
        if part
    )
    if not tokens:
        labels = ", ".join(repr(token.label) for token in present) or "none"
        raise unavailable(f"{uri}: no token {wanted} in {library.so} (tokens present: {labels})")
    if len(tokens) > 1:
        raise ConfigurationError(f"{uri}: {len(tokens)} tokens are {wanted}; add serial=")
    return tokens[0]


def _login_pin(token: Token, uri: KeyURI) -> str | object | None:
    pin = uri.read_pin()
    if pin is not None:
        return pin
    if not token.flags & TokenFlag.LOGIN_REQUIRED:
        return None
    if token.flags & TokenFlag.PROTECTED_AUTHENTICATION_PATH:
        return pkcs11.PROTECTED_AUTH
    raise ConfigurationError(
        f"{uri}: token {token.label!r} needs a login; name its PIN with "
        "pin-source=file:PATH or pin-source=env:VARIABLE"
    )


class _TokenSession:
    """The one session this process keeps to one token; every use holds `lock`."""

    def __init__(self, module_path: str, label: str, serial: bytes) -> None:
        self.module_path = module_path
        self.label = label
        self.serial = serial
        self.lock = threading.Lock()
        self.session: Session | None = None
        self.mechanisms: frozenset[Mechanism] = frozenset()
        self.pid = 0
        # Bumped whenever the session is opened or dropped, so keys look their handles up again.
        self.epoch = 0

    def current(self, uri: KeyURI, unavailable: type[SigningError]) -> Session:
        """This process's logged-in session, opened if there is none yet."""
        if self.session is None or self.pid != os.getpid():
            return self._open(uri, unavailable)
        return self.session

    def discard(self) -> None:
        """Drop the session after a failure; the next use opens a new one."""
        if self.session is not None and self.pid == os.getpid():
            with contextlib.suppress(pkcs11.PKCS11Error):
                self.session.close()
        self.session = None
        self.epoch += 1

    def _open(self, uri: KeyURI, unavailable: type[SigningError]) -> Session:
        # A session inherited from the parent process is never touched, not even to close it.
        self.session = None
        self.epoch += 1
        with _REGISTRY.lock:
            library = _REGISTRY.library(self.module_path, uri)
        token = _find_token(library, uri, self.label, self.serial, unavailable)
        pin = _login_pin(token, uri)
        read_write = not token.flags & TokenFlag.WRITE_PROTECTED
        try:
            session = _open_logged_in(token, read_write, pin)
            self.mechanisms = frozenset(token.slot.get_mechanisms())
        except _PIN_ERRORS as exc:
            raise ConfigurationError(
                f"{uri}: login to token {token.label!r} failed ({type(exc).__name__}); "
                "check the PIN that pin-source names"
            ) from exc
        except pkcs11.PKCS11Error as exc:
            raise unavailable(
                f"{uri}: cannot open a session to token {token.label!r} ({_reason(exc)})"
            ) from exc
        self.session = session
        self.pid = os.getpid()
        return session


def _open_logged_in(token: Token, read_write: bool, pin: str | object | None) -> Session:
    """Open a session and log in, retrying the transient failure SoftHSM gives when two
    processes log in to one token at the same moment (CKR_GENERAL_ERROR)."""
    for attempt in range(_LOGIN_ATTEMPTS):
        try:
            return token.open(rw=read_write, user_pin=pin)
        except pkcs11.UserAlreadyLoggedIn:
            # A login holds for every session a process has with the token, so one
            # opened elsewhere in this process already logged us in.
            return token.open(rw=read_write)
        except pkcs11.GeneralError:
            if attempt == _LOGIN_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1) + random.random() * 0.05)  # noqa: S311
    raise AssertionError("unreachable")


def _token_session(uri: KeyURI) -> _TokenSession:
    """The registered session holder for the token `uri` names (token= and/or serial=)."""
    label = uri.attributes.get("token")
    serial = uri.attributes.get("serial")
    if label is None and serial is None:
        raise ConfigurationError(f"{uri}: name the token with token=LABEL or serial=SERIAL")
    path = _module_path(uri)
    with _REGISTRY.lock:
        library = _REGISTRY.library(path, uri)
        token = _find_token(
            library,
            uri,
            label,
            serial.encode() if serial is not None else None,
            ConfigurationError,
        )
        found = (path, token.label, token.serial)
        if found not in _REGISTRY.tokens:
            _REGISTRY.tokens[found] = _TokenSession(*found)
        return _REGISTRY.tokens[found]


def _one_object(session: Session, template: dict[Attribute, Any], uri: KeyURI, what: str) -> Object:
    found = list(session.get_objects(template))
    if not found:
        hint = " (no pin-source, so no login was made)" if uri.pin_source is None else ""
        raise ConfigurationError(f"{uri}: no {what} on token {session.token.label!r}{hint}")
    if len(found) > 1:
        raise ConfigurationError(f"{uri}: {len(found)} objects match the {what}; add id=")
    return found[0]


def _signing_handle(session: Session, template: dict[Attribute, Any], uri: KeyURI) -> SignMixin:
    key = _one_object(session, template, uri, "private key " + _describe(template))
    if not isinstance(key, SignMixin):
        raise ConfigurationError(f"{uri}: the private key may not sign (CKA_SIGN is false)")
    return key


def _describe(template: dict[Attribute, Any]) -> str:
    parts = [f"labelled {template[Attribute.LABEL]!r}"] if Attribute.LABEL in template else []
    if Attribute.ID in template:
        parts.append(f"with id {template[Attribute.ID].hex()}")
    return " and ".join(parts)


def _public_attributes(
    session: Session, private: Object, uri: KeyURI, names: list[Attribute]
) -> dict[Attribute, Any]:
    """`names` from the public key stored beside `private` (same CKA_ID, else same label)."""
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
        Attribute.KEY_TYPE: private[Attribute.KEY_TYPE],
    }
    key_id = private[Attribute.ID]
    if key_id:
        template[Attribute.ID] = key_id
    else:
        template[Attribute.LABEL] = private[Attribute.LABEL]
    public = _one_object(session, template, uri, "public key " + _describe(template))
    return public.get_attributes(names)


def _rsa_public_key(session: Session, private: Object, uri: KeyURI) -> rsa.RSAPublicKey:
    names = [Attribute.MODULUS, Attribute.PUBLIC_EXPONENT]
    try:
        values = private.get_attributes(names)
    except (pkcs11.AttributeTypeInvalid, pkcs11.AttributeSensitive):
        values = _public_attributes(session, private, uri, names)
    exponent = int.from_bytes(values[Attribute.PUBLIC_EXPONENT], "big")
    modulus = int.from_bytes(values[Attribute.MODULUS], "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def _ec_public_key(session: Session, private: Object, uri: KeyURI) -> ec.EllipticCurvePublicKey:
    curve = _CURVES.get(private[Attribute.EC_PARAMS])
    if curve is None:
        raise ConfigurationError(f"{uri}: the key's curve is not P-256 or P-384")
    point = _public_attributes(session, private, uri, [Attribute.EC_POINT])[Attribute.EC_POINT]
    size = 1 + 2 * ((curve.key_size + 7) // 8)
    if len(point) == size + 2 and point[:2] == bytes((0x04, size)):
        point = point[2:]  # CKA_EC_POINT is usually a DER OCTET STRING around the point
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError as exc:
        raise ConfigurationError(f"{uri}: the token's EC public point is malformed") from exc


def _wrap(uri: KeyURI, token: _TokenSession, private: SignMixin) -> SigningKey:
    """A `cryptography` key object for the private key `private` found through `token`."""
    session = private.session
    key_type = private.key_type
    template: dict[Attribute, Any] = {
        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
        Attribute.KEY_TYPE: key_type,
        Attribute.LABEL: private[Attribute.LABEL],
        Attribute.ID: private[Attribute.ID],
    }
    if key_type == pkcs11.KeyType.RSA:
        rsa_public = _rsa_public_key(session, private, uri)
        return Pkcs11RsaPrivateKey(uri, token, private, template, rsa_public)
    if key_type == pkcs11.KeyType.EC:
        ec_public = _ec_public_key(session, private, uri)
        return Pkcs11EcPrivateKey(uri, token, private, template, ec_public)
    raise ConfigurationError(f"{uri}: a CA key must be RSA or ECDSA, not {key_type.name}")


def _hash_mechanisms(
    algorithm: object, uri: KeyURI
) -> tuple[hashes.HashAlgorithm, _HashMechanisms]:
    if isinstance(algorithm, hashes.HashAlgorithm):
        mechanisms = _MECHANISMS.get(type(algorithm))
        if mechanisms is not None:
            return algorithm, mechanisms
    name = getattr(algorithm, "name", type(algorithm).__name__)
    raise UnsupportedAlgorithm(
        f"{uri}: a token key signs with SHA-256, SHA-384 or SHA-512, not {name}"
    )


_PublicKey = TypeVar("_PublicKey", rsa.RSAPublicKey, ec.EllipticCurvePublicKey)


class _TokenKey(Generic[_PublicKey]):
    """What RSA and EC token keys share: the URI, the session, the cached handle, the public key."""

    def __init__(
        self,
        uri: KeyURI,
        token: _TokenSession,
        handle: SignMixin,
        template: dict[Attribute, Any],
        public: _PublicKey,
    ) -> None:
        self._uri = uri
        self._token = token
        self._handle = handle
        self._template = template
        self._epoch = token.epoch
        self._public: _PublicKey = public

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._uri}>"

    @property
    def key_size(self) -> int:
        return self._public.key_size

    def public_key(self) -> _PublicKey:
        return self._public

    # A key object stands for the key in the token: a copy is the same key.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self

    def _sign(self, data: bytes, mechanism: Mechanism, parameter: Any = None) -> bytes:
        """One C_Sign with the cached handle; reopens first if the session was lost or forked."""
        token = self._token
        with token.lock:
            if self._epoch != token.epoch or token.pid != os.getpid():
                self._rebind()
            try:
                return self._handle.sign(data, mechanism=mechanism, mechanism_param=parameter)
            except _REFUSALS as exc:
                raise ConfigurationError(
                    f"{self._uri}: the token refuses {mechanism.name} ({_reason(exc)})"
                ) from exc
            except pkcs11.PKCS11Error as exc:
                token.discard()
                raise Retryable(
                    f"{self._uri}: the token failed while signing ({_reason(exc)}); "
                    "the session is reopened on the next use"
                ) from exc

    def _rebind(self) -> None:
        token = self._token
        try:
            session = token.current(self._uri, Retryable)
            self._handle = _signing_handle(session, self._template, self._uri)
        except pkcs11.PKCS11Error as exc:
            token.discard()
            raise Retryable(f"{self._uri}: cannot reopen the key ({_reason(exc)})") from exc
        self._epoch = token.epoch

    def _not_extractable(self) -> NoReturn:
        raise TypeError(
            f"{self._uri}: the private key never leaves its token (non-extractable); "
            "it has no private bytes or numbers"
        )

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> NoReturn:
        self._not_extractable()

    def private_numbers(self) -> NoReturn:
        self._not_extractable()


class Pkcs11RsaPrivateKey(_TokenKey[rsa.RSAPublicKey], rsa.RSAPrivateKey):
    """An RSA key in a PKCS#11 token; signs PKCS#1 v1.5 or PSS with SHA-256/384/512."""

    def sign(
        self,
        data: bytes,
        padding: AsymmetricPadding,
        algorithm: asym_utils.Prehashed | hashes.HashAlgorithm | asym_utils.NoDigestInfo,
    ) -> bytes:
        hash_algorithm, mechanisms = _hash_mechanisms(algorithm, self._uri)
        if isinstance(padding, PKCS1v15):
            return self._sign(bytes(data), mechanisms.rsa_pkcs1v15)
        if isinstance(padding, PSS):
            parameter = self._pss_parameter(padding, hash_algorithm, mechanisms)
            return self._sign(bytes(data), mechanisms.rsa_pss, parameter)
        raise UnsupportedAlgorithm(f"{self._uri}: cannot sign with {padding.name} padding")

    def _pss_parameter(
        self, padding: PSS, algorithm: hashes.HashAlgorithm, mechanisms: _HashMechanisms
    ) -> tuple[Mechanism, MGF, int]:
        """CK_RSA_PKCS_PSS_PARAMS: hash, MGF1 hash and salt length, as `padding` asks."""
        # cryptography 48 has no public accessor for the MGF1 hash or the salt length.
        mgf = padding.mgf
        mgf_mechanisms = _MECHANISMS.get(type(mgf._algorithm)) if isinstance(mgf, MGF1) else None
        if mgf_mechanisms is None:
            raise UnsupportedAlgorithm(f"{self._uri}: PSS needs MGF1 with SHA-256/384/512")
        salt = padding._salt_length
        if isinstance(salt, int):
            salt_length = salt
        elif salt is PSS.DIGEST_LENGTH:
            salt_length = algorithm.digest_size
        elif salt is PSS.MAX_LENGTH:
            salt_length = calculate_max_pss_salt_length(self._public, algorithm)
        else:
            raise ValueError(f"{self._uri}: PSS.AUTO only verifies; give a salt length to sign")
        return (mechanisms.digest, mgf_mechanisms.mgf1, salt_length)

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> NoReturn:
        raise TypeError(f"{self._uri}: a CA key in a token only signs")


class Pkcs11EcPrivateKey(_TokenKey[ec.EllipticCurvePublicKey], ec.EllipticCurvePrivateKey):
    """An EC (P-256, P-384) key in a PKCS#11 token; signs ECDSA with SHA-256/384/512."""

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if (
            not isinstance(signature_algorithm, ec.ECDSA)
            or signature_algorithm.deterministic_signing
        ):
            raise UnsupportedAlgorithm(f"{self._uri}: a token key signs randomised ECDSA only")
        algorithm, mechanisms = _hash_mechanisms(signature_algorithm.algorithm, self._uri)
        if mechanisms.ecdsa in self._token.mechanisms:
            raw = self._sign(bytes(data), mechanisms.ecdsa)
        else:
            raw = self._sign(hashlib.new(algorithm.name, data).digest(), Mechanism.ECDSA)
        # PKCS#11 v2.40 current mechanisms section 2.3.1: the signature is r || s, equal halves.
        half = len(raw) // 2
        r, s = int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        return asym_utils.encode_dss_signature(r, s)

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> NoReturn:
        raise TypeError(f"{self._uri}: a CA key in a token only signs")


class Pkcs11KeyBackend:
    """`pkcs11:token=T;object=K[;id=%xx][?pin-source=...&module-path=...]` (RFC 7512)."""

    def load_private_key(self, uri: KeyURI) -> SigningKey:
        label = uri.attributes.get("object")
        object_id = _object_id(uri)
        if label is None and object_id is None:
            raise ConfigurationError(f"{uri}: name the key with object=LABEL and/or id=%XX")
        template: dict[Attribute, Any] = {Attribute.CLASS: ObjectClass.PRIVATE_KEY}
        if label is not None:
            template[Attribute.LABEL] = label
        if object_id is not None:
            template[Attribute.ID] = object_id
        token = _token_session(uri)
        with token.lock:
            try:
                session = token.current(uri, ConfigurationError)
                return _wrap(uri, token, _signing_handle(session, template, uri))
            except pkcs11.PKCS11Error as exc:
                token.discard()
                raise Retryable(f"{uri}: cannot read the key ({_reason(exc)})") from exc

    def generate_private_key(self, uri: KeyURI, key_type: KeyType) -> SigningKey:
        """Make a sensitive, non-extractable key pair in the token, labelled `object`."""
        label = uri.attributes.get("object")
        if not label:
            raise ConfigurationError(f"{uri}: name the new key with object=LABEL")
        object_id = _object_id(uri) or os.urandom(16)
        public_template = dict(_PUBLIC_TEMPLATE)
        if not key_type.is_rsa:
            public_template[Attribute.EC_PARAMS] = next(
                params for params, curve in _CURVES.items() if curve.name == key_type.curve.name
            )
        token = _token_session(uri)
        with token.lock:
            session = token.current(uri, ConfigurationError)
            try:
                for taken in ({Attribute.LABEL: label}, {Attribute.ID: object_id}):
                    if list(session.get_objects(taken)):
                        raise ConfigurationError(
                            f"{uri}: the token already holds an object {_describe(taken)}; "
                            "refusing to make another"
                        )
                _, private = session.generate_keypair(
                    pkcs11.KeyType.RSA if key_type.is_rsa else pkcs11.KeyType.EC,
                    key_type.rsa_bits if key_type.is_rsa else None,
                    id=object_id,
                    label=label,
                    store=True,
                    capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                    public_template=public_template,
                    private_template=_PRIVATE_TEMPLATE,
                )
                if not isinstance(private, SignMixin):
                    raise ConfigurationError(f"{uri}: the token made a key that may not sign")
                return _wrap(uri, token, private)
            except pkcs11.PKCS11Error as exc:
                token.discard()
                raise ConfigurationError(
                    f"{uri}: the token cannot make a {key_type} key ({_reason(exc)})"
                ) from exc

    def close(self) -> None:
        """Close this process's sessions and finalize its modules; keys reopen on next use."""
        with _REGISTRY.lock:
            tokens = list(_REGISTRY.tokens.values())
        for token in tokens:
            with token.lock:
                token.discard()
        with _REGISTRY.lock:
            for module in _REGISTRY.modules.values():
                if module.pid == os.getpid():
                    with contextlib.suppress(pkcs11.PKCS11Error):
                        module.library.finalize()
                module.pid = 0  # initialise again on the next use
