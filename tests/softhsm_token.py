"""Fresh SoftHSM tokens for tests: one per test, in its own directory, with random PINs."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from keystore.pkcs11 import DEFAULT_MODULE, MODULE_ENV, Pkcs11KeyBackend

CONF_TEMPLATE = Path(__file__).resolve().parents[1] / "softhsm" / "softhsm2.conf.template"
MODULE_PATH = os.environ.get(MODULE_ENV, DEFAULT_MODULE)

SOFTHSM_AVAILABLE = Path(MODULE_PATH).is_file() and shutil.which("softhsm2-util") is not None
SOFTHSM_SKIP_REASON = (
    f"SoftHSM is not installed (need {MODULE_PATH} and softhsm2-util; "
    "apt install softhsm2, or set CASIGN_PKCS11_MODULE)"
)


@dataclass(frozen=True)
class SoftHsmToken:
    """An initialised SoftHSM token; `env` holds the SOFTHSM2_CONF that finds it."""

    conf_path: Path
    token_label: str
    pin_file: Path
    module_path: str
    env: dict[str, str]

    def key_uri(self, object_label: str) -> str:
        """The RFC 7512 URI of the key labelled `object_label` in this token."""
        return (
            f"pkcs11:token={quote(self.token_label, safe='')};object={quote(object_label, safe='')}"
            f"?pin-source=file:{quote(str(self.pin_file))}"
            f"&module-path={quote(self.module_path)}"
        )


def _write_secret(path: Path, value: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def make_softhsm_token(directory: Path, label: str = "casign-test") -> SoftHsmToken:
    """Initialise a new token labelled `label` in `directory`, which gets its own config."""
    tokens = directory / "tokens"
    tokens.mkdir(parents=True)
    conf_path = directory / "softhsm2.conf"
    template = CONF_TEMPLATE.read_text(encoding="utf-8")
    conf_path.write_text(template.replace("@TOKENDIR@", str(tokens)), encoding="utf-8")
    pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
    pin_file = directory / "user-pin"
    _write_secret(pin_file, pin)
    _write_secret(directory / "so-pin", so_pin)
    env = {"SOFTHSM2_CONF": str(conf_path)}
    result = subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            so_pin,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"softhsm2-util could not make token {label!r}: {result.stderr.strip()}")
    return SoftHsmToken(conf_path, label, pin_file, MODULE_PATH, env)


@pytest.fixture
def softhsm_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SoftHsmToken]:
    """A fresh token for this test, visible to this process's PKCS#11 module."""
    if not SOFTHSM_AVAILABLE:
        pytest.skip(SOFTHSM_SKIP_REASON)
    token = make_softhsm_token(tmp_path / "softhsm")
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf_path))
    # libsofthsm2 reads SOFTHSM2_CONF and scans its tokendir only in C_Initialize, and a
    # process loads the library once; closing finalizes it, so the next use initialises
    # it again against this test's directory: a fresh token store without a new process.
    backend = Pkcs11KeyBackend()
    backend.close()
    yield token
    backend.close()
