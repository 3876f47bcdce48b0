"""CA folders for tests, with the guide's Alice Ltd names."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from core.keys import KeyType
from worker.cafolder import CAFolder, CAOptions, init_ca

ALICE = CAOptions(
    root_cn="Alice Ltd Root CA",
    intermediate_cn="Alice Ltd Intermediate CA",
    organization="Alice Ltd",
    country="GB",
    key_type=KeyType.RSA2048,
    # Where revocation is published: without it the BR linter refuses every tls_server request.
    base_url="http://pki.example.com",
)


def make_alice_ca(directory: Path, **changes: Any) -> CAFolder:
    """A new RSA-2048 CA as Alice Ltd in `directory`; `changes` override CAOptions fields."""
    return init_ca(directory, dataclasses.replace(ALICE, **changes))
