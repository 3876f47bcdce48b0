"""The `casign` command run as a user runs it: a subprocess, checked with the real `openssl`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from store.embedded import EmbeddedRedis
from store.results import ResultsStore
from tests.openssl_cli import openssl as run_openssl

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

_ON_PATH = shutil.which("casign")
CASIGN = [_ON_PATH] if _ON_PATH else [sys.executable, "-m", "casign"]
ALICE = ["--org", "Alice Ltd", "--country", "GB", "--root-cn", "Alice Ltd Root CA",
         "--intermediate-cn", "Alice Ltd Intermediate CA"]  # fmt: skip
GUIDE_SUBJECT = (
    "/C=US/ST=California/L=Mountain View/O=Alice Ltd/OU=Alice Ltd Web Services/CN=www.example.com"
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any CASIGN_* setting, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("CASIGN_")}
    return env | extra


def casign(
    *args: str | Path, cwd: Path, expect: int | None = 0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `casign ARGS`; check the exit code (unless `expect` is None) and that no private key
    was ever printed."""
    completed = subprocess.run(
        [*CASIGN, *map(str, args)],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert "PRIVATE KEY" not in output, "casign printed a private key"
    assert "Traceback" not in output, output
    if expect is None:
        return completed
    if expect == 0:
        assert completed.returncode == 0, f"casign {args} exited {completed.returncode}:\n{output}"
    else:
        assert completed.returncode == expect, output
    return completed


def openssl(
    *args: str | Path, check: bool = True, new_session: bool = False
) -> subprocess.CompletedProcess[str]:
    return run_openssl(*args, check=check, new_session=new_session, timeout=30)


def openssl_csr(directory: Path, name: str, subject: str) -> Path:
    """A third party's key and CSR, made with `openssl req` as the guide makes them."""
    csr = directory / f"{name}.csr.pem"
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", directory / f"{name}.key.pem",
        "-subj", subject, "-sha256", "-out", csr,
    )  # fmt: skip
    return csr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verify(chain: Path, certificate: Path) -> None:
    assert openssl("verify", "-CAfile", chain, certificate).stdout.strip() == f"{certificate}: OK"


@pytest.fixture(scope="module")
def cli_ca(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One CA made by `casign init` with the guide's RSA-4096 keys; tests read and sign with it."""
    work = tmp_path_factory.mktemp("cli")
    made = casign("init", work / "ca", *ALICE, cwd=work)
    return work / "ca", made


@pytest.fixture
def sign_env(redis_url: str, store: ResultsStore, store_prefix: str) -> dict[str, str]:
    """The environment for `casign sign --store URL`: this test's own key prefix."""
    return clean_env(CASIGN_STORE_PREFIX=store_prefix)


# -- casign init -----------------------------------------------------------------------------


def test_init_makes_the_guides_layout(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    ca, made = cli_ca
    inter = ca / "intermediate"
    for key in (ca / "private" / "ca.key.pem", inter / "private" / "intermediate.key.pem"):
        assert mode(key) == 0o400, key
        assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    for cert in (
        ca / "certs" / "ca.cert.pem",
        inter / "certs" / "intermediate.cert.pem",
        inter / "certs" / "ca-chain.cert.pem",
    ):
        assert mode(cert) == 0o444, cert
    for directory in ("private", "certs", "csr", "newcerts", "crl"):
        assert (inter / directory).is_dir(), directory
    assert mode(ca / "private") == mode(inter / "private") == 0o700
    assert (inter / "index.txt").read_text() == ""
    assert (inter / "index.txt.attr").exists()
    assert (inter / "serial").read_text().strip() == "1000"
    assert (inter / "crlnumber").read_text().strip() == "1000"
    cnf = (inter / "openssl.cnf").read_text()
    assert f"dir               = {inter}" in cnf
    for section in (
        "[ server_cert ]",
        "[ usr_cert ]",
        "[ crl_ext ]",
        "[ ocsp ]",
        "[ policy_loose ]",
    ):
        assert section in cnf
    profiles = (inter / "profiles.toml").read_text()
    assert "[profiles.server_cert]" in profiles and "[profiles.usr_cert]" in profiles

    # The chain file is the intermediate followed by the root, and each verifies.
    chain = x509.load_pem_x509_certificates((inter / "certs" / "ca-chain.cert.pem").read_bytes())
    root = x509.load_pem_x509_certificate((ca / "certs" / "ca.cert.pem").read_bytes())
    intermediate = x509.load_pem_x509_certificate(
        (inter / "certs" / "intermediate.cert.pem").read_bytes()
    )
    assert chain == [intermediate, root]
    verify(ca / "certs" / "ca.cert.pem", inter / "certs" / "intermediate.cert.pem")
    root_text = openssl("x509", "-in", ca / "certs" / "ca.cert.pem", "-noout", "-text").stdout
    assert "Subject: C = GB, O = Alice Ltd, CN = Alice Ltd Root CA" in root_text
    assert "CA:TRUE" in root_text
    assert "Public-Key: (4096 bit)" in root_text
    inter_text = openssl(
        "x509", "-in", inter / "certs" / "intermediate.cert.pem", "-noout", "-text"
    ).stdout
    assert "CA:TRUE, pathlen:0" in inter_text
    assert "Certificate Sign, CRL Sign" in inter_text

    assert str(inter / "certs" / "ca-chain.cert.pem") in made.stdout


def test_init_warns_that_the_keys_are_not_encrypted(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    _, made = cli_ca
    assert "NOT encrypted" in made.stderr
    assert "--passphrase-file" in made.stderr


def test_init_with_a_passphrase_file_encrypts_both_keys(tmp_path: Path) -> None:
    passphrase = tmp_path / "passphrase.txt"
    passphrase.write_text("correct horse battery staple\n", encoding="utf-8")
    passphrase.chmod(0o600)  # a passphrase file open to others is refused
    made = casign(
        "init", tmp_path / "ca", "--key-type", "rsa2048", "--passphrase-file", passphrase,
        cwd=tmp_path,
    )  # fmt: skip
    assert "NOT encrypted" not in made.stderr
    keys = (
        tmp_path / "ca" / "private" / "ca.key.pem",
        tmp_path / "ca" / "intermediate" / "private" / "intermediate.key.pem",
    )
    for key in keys:
        assert mode(key) == 0o400
        assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert "aes-256-cbc" in openssl("asn1parse", "-in", key).stdout
        openssl("pkey", "-in", key, "-noout", "-passin", f"file:{passphrase}")
        assert openssl("pkey", "-in", key, "-noout", check=False, new_session=True).returncode != 0
        wrong = openssl("pkey", "-in", key, "-noout", "-passin", "pass:wrong", check=False)
        assert wrong.returncode != 0
    # The passphrase itself is written nowhere in the CA folder.
    for path in (tmp_path / "ca").rglob("*"):
        if path.is_file():
            assert b"correct horse" not in path.read_bytes(), path

    # casign reads the passphrase through the key URI's pin-source and can sign.
    csr = openssl_csr(tmp_path, "www", "/CN=www.example.com")
    casign("sign", "--ca", tmp_path / "ca", csr, "-o", tmp_path / "www.cert.pem", cwd=tmp_path)
    verify(
        tmp_path / "ca" / "intermediate" / "certs" / "ca-chain.cert.pem", tmp_path / "www.cert.pem"
    )


def test_init_with_p256_keys(tmp_path: Path) -> None:
    casign("init", tmp_path / "ca", "--key-type", "p256", cwd=tmp_path)
    inter = tmp_path / "ca" / "intermediate"
    for cert in (
        tmp_path / "ca" / "certs" / "ca.cert.pem",
        inter / "certs" / "intermediate.cert.pem",
    ):
        text = openssl("x509", "-in", cert, "-noout", "-text").stdout
        assert "Public Key Algorithm: id-ecPublicKey" in text
        assert "NIST CURVE: P-256" in text
        assert "Signature Algorithm: ecdsa-with-SHA256" in text
    key_text = openssl(
        "pkey", "-in", inter / "private" / "intermediate.key.pem", "-noout", "-text_pub"
    )
    assert "NIST CURVE: P-256" in key_text.stdout

    csr = openssl_csr(tmp_path, "www", "/CN=www.example.com")
    casign("sign", "--ca", tmp_path / "ca", csr, "-o", tmp_path / "www.cert.pem", cwd=tmp_path)
    verify(inter / "certs" / "ca-chain.cert.pem", tmp_path / "www.cert.pem")


def test_init_refuses_to_overwrite_an_existing_ca(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    ca, _ = cli_ca
    root_key = (ca / "private" / "ca.key.pem").read_bytes()
    chain = (ca / "intermediate" / "certs" / "ca-chain.cert.pem").read_bytes()
    refused = casign("init", ca, "--key-type", "rsa2048", cwd=ca.parent, expect=2)
    assert "already holds a CA" in refused.stderr
    assert "refusing to overwrite" in refused.stderr
    assert (ca / "private" / "ca.key.pem").read_bytes() == root_key
    assert (ca / "intermediate" / "certs" / "ca-chain.cert.pem").read_bytes() == chain


def test_the_guides_openssl_ca_command_works_on_the_folder(tmp_path: Path) -> None:
    """`openssl ca -config intermediate/openssl.cnf -extensions server_cert ...`, verbatim."""
    casign("init", tmp_path / "ca", "--key-type", "rsa2048", *ALICE, cwd=tmp_path)
    ca = tmp_path / "ca"
    csr = openssl_csr(ca / "intermediate" / "csr", "www.example.com", GUIDE_SUBJECT)
    out = ca / "intermediate" / "certs" / "www.example.com.cert.pem"
    openssl(
        "ca", "-config", ca / "intermediate" / "openssl.cnf", "-extensions", "server_cert",
        "-days", "375", "-notext", "-md", "sha256", "-batch", "-in", csr, "-out", out,
    )  # fmt: skip
    verify(ca / "intermediate" / "certs" / "ca-chain.cert.pem", out)
    (line,) = (ca / "intermediate" / "index.txt").read_text().splitlines()
    fields = line.split("\t")
    assert (fields[0], fields[2], fields[3], fields[4], fields[5]) == (
        "V", "", "1000", "unknown", GUIDE_SUBJECT,
    )  # fmt: skip
    assert (ca / "intermediate" / "newcerts" / "1000.pem").exists()
    text = openssl("x509", "-in", out, "-noout", "-text").stdout
    assert "DirName:/C=GB/O=Alice Ltd/CN=Alice Ltd Root CA" in text
    assert "OpenSSL Generated Server Certificate" in text


# -- casign sign -----------------------------------------------------------------------------


def test_sign_with_a_redis_store_writes_a_verifiable_read_only_certificate(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
    redis_url: str,
    store: ResultsStore,
    sign_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ca, _ = cli_ca
    csr = openssl_csr(tmp_path, "www", GUIDE_SUBJECT)
    out = tmp_path / "out" / "www.example.com.cert.pem"
    signed = casign(
        "sign", "--ca", ca, "--store", redis_url, "--profile", "server_cert", csr, "-o", out,
        cwd=tmp_path, env=sign_env,
    )  # fmt: skip
    chain = ca / "intermediate" / "certs" / "ca-chain.cert.pem"
    assert mode(out) == 0o444
    verify(chain, out)
    assert f"chain:       {chain}" in signed.stdout

    certificate = x509.load_pem_x509_certificate(out.read_bytes())
    (line,) = store.index_lines()
    serial = line.split("\t")[3]
    assert int(serial, 16) == certificate.serial_number
    assert f"(serial {serial}, job " in signed.stdout
    assert line.endswith("\t" + GUIDE_SUBJECT)
    assert store.chain() == chain.read_text()


def test_sign_without_a_store_uses_the_folders_embedded_redis(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    casign("init", ca, "--key-type", "rsa2048", cwd=tmp_path)
    embedded = EmbeddedRedis(ca)
    first_csr = openssl_csr(tmp_path, "first", "/CN=first.example.com")
    second_csr = openssl_csr(tmp_path, "second", "/CN=second.example.com")
    casign("sign", "--ca", ca, first_csr, "-o", tmp_path / "first.pem", cwd=tmp_path)
    assert not embedded.is_running(), "casign sign left its embedded Redis running"
    casign("sign", "--ca", ca, second_csr, "-o", tmp_path / "second.pem", cwd=tmp_path)
    assert not embedded.is_running()
    exported = casign("index", "export", "--ca", ca, cwd=tmp_path)
    assert not embedded.is_running()

    serials = [
        x509.load_pem_x509_certificate((tmp_path / name).read_bytes()).serial_number
        for name in ("first.pem", "second.pem")
    ]
    lines = exported.stdout.splitlines()
    assert [int(line.split("\t")[3], 16) for line in lines] == serials
    assert [line.split("\t")[5] for line in lines] == [
        "/CN=first.example.com",
        "/CN=second.example.com",
    ]
    assert (ca / "store").is_dir()


def test_demo_runs_the_whole_path_on_one_machine(tmp_path: Path) -> None:
    """The README's first command: a CA, the embedded Redis, a worker, CSRs, verification."""
    completed = casign("demo", "--count", "6", cwd=tmp_path)
    assert "signed 6 certificates" in completed.stdout, completed.stdout
    assert "verified 6 against" in completed.stdout, completed.stdout
    assert not EmbeddedRedis(tmp_path / "casign-demo" / "ca").is_running(), "demo left Redis up"
    [issued] = (tmp_path / "casign-demo" / "issued").iterdir()
    certificates = sorted(issued.glob("*.cert.pem"))
    assert len(certificates) == 7  # six leaves and ca-chain.cert.pem
    chain = issued / "ca-chain.cert.pem"
    for certificate in certificates:
        if certificate != chain:
            assert ": OK" in openssl("verify", "-CAfile", chain, certificate).stdout


def test_a_refused_csr_exits_non_zero_with_its_code(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
    redis_url: str,
    sign_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ca, _ = cli_ca
    csr = openssl_csr(tmp_path, "bad", "/CN=not a host name")
    out = tmp_path / "bad.cert.pem"
    refused = casign(
        "sign", "--ca", ca, "--store", redis_url, csr, "-o", out,
        cwd=tmp_path, env=sign_env, expect=3,
    )  # fmt: skip
    assert "[subject.cn_not_fqdn]" in refused.stderr
    assert "not a host name" in refused.stderr
    assert not out.exists()


# -- casign inspect, --help ------------------------------------------------------------------


def test_inspect_prints_subject_issuer_and_extensions(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]],
    redis_url: str,
    sign_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ca, _ = cli_ca
    csr = openssl_csr(tmp_path, "client", "/CN=alice@example.com")
    out = tmp_path / "client.cert.pem"
    casign(
        "sign", "--ca", ca, "--store", redis_url, "--profile", "usr_cert",
        "--san", "email:alice@example.com", csr, "-o", out, cwd=tmp_path, env=sign_env,
    )  # fmt: skip
    shown = casign("inspect", out, cwd=tmp_path).stdout
    assert "Subject: CN=alice@example.com" in shown
    assert "Issuer: C=GB, O=Alice Ltd, CN=Alice Ltd Intermediate CA" in shown
    for line in (
        "X509v3 Basic Constraints:",
        "Netscape Cert Type:",
        "SSL Client, S/MIME",
        "OpenSSL Generated Client Certificate",
        "X509v3 Key Usage: critical",
        "TLS Web Client Authentication, E-mail Protection",
        "email:alice@example.com",
    ):
        assert line in shown, line

    csr_shown = casign("inspect", csr, cwd=tmp_path).stdout
    assert "Certificate Request:" in csr_shown


def test_inspect_never_prints_a_key_file(
    cli_ca: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    ca, _ = cli_ca
    for key in (
        ca / "private" / "ca.key.pem",
        ca / "intermediate" / "private" / "intermediate.key.pem",
    ):
        shown = casign("inspect", key, cwd=tmp_path, expect=1)
        body = key.read_text().splitlines()[1]
        assert body not in shown.stdout + shown.stderr
        assert "no PEM or DER certificate" in shown.stderr


def test_help_lists_the_commands(tmp_path: Path) -> None:
    shown = casign("--help", cwd=tmp_path).stdout
    for command in ("init", "sign", "inspect", "index", "worker", "recover", "submit", "request"):
        assert f"  {command} " in shown, command
    assert "CASIGN_STORE_URL" in shown
    as_module = subprocess.run(
        [sys.executable, "-m", "casign", "index", "--help"],
        capture_output=True, text=True, env=clean_env(), cwd=tmp_path, timeout=60, check=True,
    )  # fmt: skip
    assert "export" in as_module.stdout


@pytest.fixture(autouse=True)
def _no_stray_embedded_redis(tmp_path: Path) -> Iterator[None]:
    """Stop any embedded Redis a failing test left behind in its folder."""
    yield
    if (tmp_path / "ca" / "redis.conf").exists():
        EmbeddedRedis(tmp_path / "ca").stop()
