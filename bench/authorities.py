"""The CA folders the rows sign with: RSA-2048 and P-256 key files, and a SoftHSM token."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.keys import KeyType
from tests.softhsm_token import (
    SOFTHSM_AVAILABLE,
    SOFTHSM_SKIP_REASON,
    SoftHsmToken,
    make_softhsm_token,
)
from worker.cafolder import CAFolder, CAOptions, init_ca

INTERMEDIATE_LABEL = "intermediate"
SOFTHSM_CONF_ENV = "SOFTHSM2_CONF"


@dataclass(frozen=True)
class BenchAuthority:
    """A CA folder made for this run, and what a worker needs in its environment to use it."""

    name: str
    folder: CAFolder
    worker_env: dict[str, str] = field(default_factory=dict)
    token: SoftHsmToken | None = None


def make_file_authority(directory: Path, key_type: KeyType, name: str) -> BenchAuthority:
    """A CA in the guide's layout with unencrypted key files of `key_type`."""
    folder = init_ca(
        directory,
        CAOptions(
            root_cn=f"casign bench {name} Root CA",
            intermediate_cn=f"casign bench {name} Intermediate CA",
            key_type=key_type,
            # Revocation locations: without them the BR linter refuses every tls_server job.
            base_url="http://pki.bench.example.com",
        ),
    )
    return BenchAuthority(name, folder)


def softhsm_missing() -> str | None:
    """Why the SoftHSM rows cannot run here, or None when they can."""
    return None if SOFTHSM_AVAILABLE else SOFTHSM_SKIP_REASON


@contextlib.contextmanager
def softhsm_environment(token: SoftHsmToken) -> Iterator[None]:
    """Point this process (and the processes it starts) at the token's SoftHSM config."""
    previous = os.environ.get(SOFTHSM_CONF_ENV)
    os.environ[SOFTHSM_CONF_ENV] = token.env[SOFTHSM_CONF_ENV]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SOFTHSM_CONF_ENV, None)
        else:
            os.environ[SOFTHSM_CONF_ENV] = previous


def make_softhsm_authority(directory: Path) -> BenchAuthority:
    """An RSA-2048 CA whose intermediate key is generated inside a fresh SoftHSM token.

    The caller holds `softhsm_environment(token)` while this process uses the key; SoftHSM
    reads its config once, when the module is first initialised.
    """
    token = make_softhsm_token(directory / "softhsm", label="casign-bench")
    with softhsm_environment(token):
        folder = init_ca(
            directory / "ca",
            CAOptions(
                root_cn="casign bench SoftHSM Root CA",
                intermediate_cn="casign bench SoftHSM Intermediate CA",
                key_type=KeyType.RSA2048,
                intermediate_key_uri=token.key_uri(INTERMEDIATE_LABEL),
            ),
        )
    return BenchAuthority("SoftHSM RSA-2048", folder, dict(token.env), token)
