"""The key backend seam: backends register by URI scheme and hand back `cryptography` keys."""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.errors import ConfigurationError
from core.keys import KeyType
from keystore.uri import KeyURI, parse_key_uri

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
"""What every backend returns: a key that `CertificateBuilder.sign` accepts."""


class KeyBackend(Protocol):
    """Opens an existing key named by a URI of this backend's scheme."""

    def load_private_key(self, uri: KeyURI) -> SigningKey: ...


@runtime_checkable
class KeyGenerator(Protocol):
    """A backend that can also make a new key where the URI says (optional ability)."""

    def generate_private_key(self, uri: KeyURI, key_type: KeyType) -> SigningKey: ...


_BACKENDS: dict[str, KeyBackend] = {}
_BUILTIN_BACKENDS = {
    "file": ("keystore.files", "FileKeyBackend"),
    "pkcs11": ("keystore.pkcs11", "Pkcs11KeyBackend"),
}


def register_backend(scheme: str, backend: KeyBackend) -> None:
    """Make `backend` open every key URI whose scheme is `scheme`."""
    _BACKENDS[scheme] = backend


def backend_for(uri: KeyURI) -> KeyBackend:
    if uri.scheme not in _BACKENDS and uri.scheme in _BUILTIN_BACKENDS:
        module_name, class_name = _BUILTIN_BACKENDS[uri.scheme]
        # Imported on first use so that a file key never loads the PKCS#11 library.
        backend_class = getattr(importlib.import_module(module_name), class_name)
        _BACKENDS[uri.scheme] = backend_class()
    try:
        return _BACKENDS[uri.scheme]
    except KeyError:
        known = ", ".join(sorted({*_BACKENDS, *_BUILTIN_BACKENDS}))
        raise ConfigurationError(
            f"{uri}: no key backend for scheme {uri.scheme!r} (known: {known})"
        ) from None


def load_signing_key(uri: str | KeyURI) -> SigningKey:
    """Open the key named by `uri`; errors name the URI, never the PIN."""
    parsed = parse_key_uri(uri) if isinstance(uri, str) else uri
    return backend_for(parsed).load_private_key(parsed)


def generate_key(uri: str | KeyURI, key_type: KeyType) -> SigningKey:
    """Make a new key where `uri` says, if its backend can."""
    parsed = parse_key_uri(uri) if isinstance(uri, str) else uri
    backend = backend_for(parsed)
    if not isinstance(backend, KeyGenerator):
        raise ConfigurationError(f"{parsed}: the {parsed.scheme} backend cannot make keys")
    return backend.generate_private_key(parsed, key_type)
