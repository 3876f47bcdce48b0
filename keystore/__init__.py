"""Pluggable key backends: a key named by URI becomes a `cryptography` private key."""

from core.keys import KeyType
from keystore.backend import (
    KeyBackend,
    KeyGenerator,
    SigningKey,
    generate_key,
    load_signing_key,
    register_backend,
)
from keystore.uri import KeyURI, parse_key_uri

__all__ = [
    "KeyBackend",
    "KeyGenerator",
    "KeyType",
    "KeyURI",
    "SigningKey",
    "generate_key",
    "load_signing_key",
    "parse_key_uri",
    "register_backend",
]
