"""`casign est client add|list|remove` and the mistakes `casign est` names before serving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from est.passwords import verify_password
from est.settings import load_settings, settings_path
from tests.cas import make_alice_ca
from tests.est_service import Bootstrap, write_private
from worker.cafolder import CAFolder

PASSWORD = b"a long enough password"


@pytest.fixture
def folder(tmp_path: Path) -> CAFolder:
    return make_alice_ca(tmp_path / "ca")


def casign(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casign", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def password_file(directory: Path, value: bytes = PASSWORD) -> Path:
    path = directory / f"password-{len(list(directory.iterdir()))}"
    write_private(path, value + b"\n")
    return path


def test_a_client_is_added_with_its_password_hashed_listed_and_removed(
    folder: CAFolder, tmp_path: Path
) -> None:
    ca = str(folder.root)
    secret = tmp_path / "secret"
    write_private(secret, b"0123456789abcdef0123456789abcdef")
    added = casign(
        "est", "client", "add", "fleet", "--ca", ca, "--password-file", str(password_file(tmp_path)),
        "--producer", "est-front", "--secret", f"file:{secret}", "--label", "usr_cert",
        "--rate", "5", "--burst", "20",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    bootstrap = Bootstrap.make(tmp_path / "factory", "factory")
    assert (
        casign(
            "est", "client", "add", "factory", "--ca", ca, "--issuer", str(bootstrap.ca_path)
        ).returncode
        == 0
    )

    path = settings_path(folder.root)
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    assert PASSWORD.decode() not in text
    settings = load_settings(path)
    fleet = settings.clients["fleet"]
    assert fleet.password is not None and verify_password(PASSWORD, fleet.password)
    assert (fleet.producer, fleet.labels, fleet.rate_per_second, fleet.burst) == (
        "est-front", ["usr_cert"], 5.0, 20,
    )  # fmt: skip
    assert settings.clients["factory"].issuers == [str(bootstrap.ca_path.absolute())]

    listed = casign("est", "client", "list", "--ca", ca).stdout.splitlines()
    assert listed == [
        "factory\ttls\t-\t*\t-",
        "fleet\tpassword\test-front\tusr_cert\t5/s",
    ]
    assert casign("est", "client", "remove", "factory", "--ca", ca).returncode == 0
    assert list(load_settings(path).clients) == ["fleet"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "needs a password (HTTP Basic) or issuers (TLS)"),
        (("--producer", "est-front", "--password-file", "@"), "producer and secret go together"),
        (("--burst", "3", "--password-file", "@"), "burst needs rate_per_second"),
        (("--password-file", "@short"), "at least 12 bytes"),
    ],
)
def test_a_bad_client_is_refused_with_a_reason(
    folder: CAFolder, tmp_path: Path, arguments: tuple[str, ...], message: str
) -> None:
    resolved = [
        str(password_file(tmp_path, b"short" if arg == "@short" else PASSWORD))
        if arg.startswith("@")
        else arg
        for arg in arguments
    ]
    done = casign("est", "client", "add", "fleet", "--ca", str(folder.root), *resolved)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not settings_path(folder.root).exists()


def test_with_a_producers_toml_a_client_must_map_to_a_listed_producer(
    folder: CAFolder, tmp_path: Path
) -> None:
    """The signer refuses every batch of a producer producers.toml does not list: such a
    client is refused when it is added, not at each enrollment (502 auth.unsigned)."""
    ca = str(folder.root)
    assert casign("producer", "add", "est-front", "--ca", ca).returncode == 0
    secret = f"file:{folder.root}/intermediate/private/producers/est-front.secret"
    password = str(password_file(tmp_path))

    unmapped = casign("est", "client", "add", "fleet", "--ca", ca, "--password-file", password)
    assert unmapped.returncode == 1, unmapped.stderr
    assert "--producer NAME" in unmapped.stderr and "listed: est-front" in unmapped.stderr
    unlisted = casign(
        "est", "client", "add", "fleet", "--ca", ca, "--password-file", password,
        "--producer", "someone-else", "--secret", secret,
    )  # fmt: skip
    assert unlisted.returncode == 1
    assert "producer 'someone-else' is not listed" in unlisted.stderr
    assert not settings_path(folder.root).exists()

    mapped = casign(
        "est", "client", "add", "fleet", "--ca", ca, "--password-file", password,
        "--producer", "est-front", "--secret", secret,
    )  # fmt: skip
    assert mapped.returncode == 0, mapped.stderr
    assert load_settings(settings_path(folder.root)).clients["fleet"].producer == "est-front"


def test_a_listed_client_is_not_replaced_unless_asked(folder: CAFolder, tmp_path: Path) -> None:
    ca = str(folder.root)
    first = password_file(tmp_path)
    assert (
        casign("est", "client", "add", "a", "--ca", ca, "--password-file", str(first)).returncode
        == 0
    )
    again = casign("est", "client", "add", "a", "--ca", ca, "--password-file", str(first))
    assert again.returncode == 1 and "--replace" in again.stderr
    replaced = casign(
        "est", "client", "add", "a", "--ca", ca, "--password-file", str(first), "--label", "usr_cert", "--replace"
    )  # fmt: skip
    assert replaced.returncode == 0
    assert load_settings(settings_path(folder.root)).clients["a"].labels == ["usr_cert"]


def test_the_server_names_what_is_missing_before_serving(
    folder: CAFolder, redis_url: str, broker_url: str
) -> None:
    env = {**os.environ, "CASIGN_STORE_PREFIX": "casign-test:est-config-none"}
    ca = str(folder.root)
    no_port = casign("est", "--ca", ca, env=env)
    assert no_port.returncode == 1 and "--port" in no_port.stderr
    served = casign(
        "est", "--ca", ca, "--port", "0", "--broker", broker_url, "--store", redis_url, env=env
    )
    assert served.returncode == 2
    assert "casign est cert" in served.stderr and "Traceback" not in served.stderr
    settings_path(folder.root).write_text('[server]\ndefault_label = "nosuch"\n')
    unknown = casign(
        "est", "--ca", ca, "--port", "0", "--broker", broker_url, "--store", redis_url, env=env
    )
    assert unknown.returncode == 2 and "nosuch" in unknown.stderr
    # Without a trust anchor (no root certificate in the folder, no --trust-anchor) it does not
    # start: it would have nothing to check the store's answers against.
    settings_path(folder.root).write_text("[server]\n")
    (folder.root / "certs" / "ca.cert.pem").rename(folder.root / "root.pem")
    anchorless = casign(
        "est", "--ca", ca, "--port", "0", "--broker", broker_url, "--store", redis_url, env=env
    )
    assert anchorless.returncode == 2 and "--trust-anchor" in anchorless.stderr
    assert "Traceback" not in anchorless.stderr


def test_a_key_recipient_is_listed_and_one_that_cannot_receive_a_key_stops_the_server(
    folder: CAFolder, tmp_path: Path, redis_url: str, broker_url: str
) -> None:
    ca = str(folder.root)
    signing_only = tmp_path / "signing-only.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "signing-only.key"), "-out", str(signing_only),
         "-subj", "/CN=signing-only", "-days", "1", "-addext", "keyUsage=critical,digitalSignature"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    added = casign(
        "est", "client", "add", "sealing", "--ca", ca, "--password-file",
        str(password_file(tmp_path)), "--key-recipient", str(signing_only),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    entry = load_settings(settings_path(folder.root)).clients["sealing"]
    assert entry.key_recipients == [str(signing_only.absolute())]
    env = {**os.environ, "CASIGN_STORE_PREFIX": "casign-test:est-config-recipient"}
    served = casign(
        "est", "--ca", ca, "--port", "0", "--broker", broker_url, "--store", redis_url, env=env
    )
    assert served.returncode == 2, served.stderr
    assert "'sealing'" in served.stderr and "lacks keyAgreement" in served.stderr
    assert "Traceback" not in served.stderr
