"""Adopting a CA folder made here by the guide's own openssl commands, and signing on for it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from casign.cli import main as casign_main
from core.errors import ConfigurationError
from core.index import Status, format_serial
from store.results import ResultsStore
from store.revocations import RevocationStore
from tests.ocsp_responder import running_responder
from tests.openssl_cli import openssl
from worker.adopt import ADOPTED, adopt_ca
from worker.authority import load_authority
from worker.cafolder import CAFolder
from worker.crl import make_crl
from worker.ocsp_delegate import ensure_ocsp_certificate
from worker.opensslcnf import intermediate_openssl_cnf, root_openssl_cnf

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

PASSPHRASE = "secretpassword"
CA_SUBJECT = "/C=GB/ST=England/O=Alice Ltd/OU=Alice Ltd Certificate Authority"
LEAF_SUBJECT = "/C=US/ST=California/L=Mountain View/O=Alice Ltd/OU=Alice Ltd Web Services"
SERVERS = [f"www{index}.example.com" for index in range(8)]
CLIENTS = [f"user{index}@example.com" for index in range(4)]
REVOKED = {"www2.example.com": "keyCompromise", "user1@example.com": "superseded"}


def leaf(ca: Path, name: str, extensions: str, pass_file: Path) -> None:
    """The guide's page: genrsa, req, then `openssl ca -extensions server_cert|usr_cert`."""
    key, csr = f"intermediate/private/{name}.key.pem", f"intermediate/csr/{name}.csr.pem"
    openssl("genrsa", "-out", key, "2048", cwd=ca)
    (ca / key).chmod(0o400)
    openssl("req", "-config", "intermediate/openssl.cnf", "-key", key, "-new", "-sha256",
            "-out", csr, "-subj", f"{LEAF_SUBJECT}/CN={name}", cwd=ca)  # fmt: skip
    openssl("ca", "-config", "intermediate/openssl.cnf", "-extensions", extensions,
            "-days", "375", "-notext", "-md", "sha256", "-in", csr,
            "-out", f"intermediate/certs/{name}.cert.pem", "-batch", "-passin", f"file:{pass_file}",
            cwd=ca)  # fmt: skip
    (ca / f"intermediate/certs/{name}.cert.pem").chmod(0o444)


def build_guide_ca(ca: Path, pass_file: Path) -> None:
    """Root pair, intermediate pair, a dozen leaves and two revocations, as the guide does."""
    for sub in ("certs", "crl", "newcerts", "private"):
        (ca / sub).mkdir(parents=True)
    for sub in ("certs", "crl", "csr", "newcerts", "private"):
        (ca / "intermediate" / sub).mkdir(parents=True)
    (ca / "private").chmod(0o700)
    (ca / "intermediate/private").chmod(0o700)
    for base in (ca, ca / "intermediate"):
        (base / "index.txt").touch()
        (base / "serial").write_text("1000\n")
    (ca / "intermediate/crlnumber").write_text("1000\n")
    # The guide's two openssl.cnf files (casign writes the same ones for `casign init`).
    (ca / "openssl.cnf").write_text(root_openssl_cnf(ca))
    (ca / "intermediate/openssl.cnf").write_text(intermediate_openssl_cnf(ca))
    passin = f"file:{pass_file}"

    openssl("genrsa", "-aes256", "-passout", passin, "-out", "private/ca.key.pem", "4096", cwd=ca)
    (ca / "private/ca.key.pem").chmod(0o400)
    openssl("req", "-config", "openssl.cnf", "-key", "private/ca.key.pem", "-passin", passin,
            "-new", "-x509", "-days", "7300", "-sha256", "-extensions", "v3_ca",
            "-out", "certs/ca.cert.pem", "-subj", f"{CA_SUBJECT}/CN=Alice Ltd Root CA",
            cwd=ca)  # fmt: skip
    (ca / "certs/ca.cert.pem").chmod(0o444)

    key = "intermediate/private/intermediate.key.pem"
    openssl("genrsa", "-aes256", "-passout", passin, "-out", key, "4096", cwd=ca)
    (ca / key).chmod(0o400)
    openssl("req", "-config", "intermediate/openssl.cnf", "-new", "-sha256", "-key", key,
            "-passin", passin, "-out", "intermediate/csr/intermediate.csr.pem",
            "-subj", f"{CA_SUBJECT}/CN=Alice Ltd Intermediate CA", cwd=ca)  # fmt: skip
    openssl("ca", "-config", "openssl.cnf", "-extensions", "v3_intermediate_ca", "-days", "3650",
            "-notext", "-md", "sha256", "-in", "intermediate/csr/intermediate.csr.pem",
            "-out", "intermediate/certs/intermediate.cert.pem", "-batch", "-passin", passin,
            cwd=ca)  # fmt: skip
    intermediate = (ca / "intermediate/certs/intermediate.cert.pem").read_text()
    chain = ca / "intermediate/certs/ca-chain.cert.pem"
    chain.write_text(intermediate + (ca / "certs/ca.cert.pem").read_text())
    chain.chmod(0o444)

    for name in SERVERS:
        leaf(ca, name, "server_cert", pass_file)
    for name in CLIENTS:
        leaf(ca, name, "usr_cert", pass_file)
    for name, reason in REVOKED.items():
        openssl("ca", "-config", "intermediate/openssl.cnf", "-revoke",
                f"intermediate/certs/{name}.cert.pem", "-crl_reason", reason,
                "-passin", passin, cwd=ca)  # fmt: skip


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("guide")
    pass_file = base / "pass.txt"
    pass_file.write_text(PASSPHRASE + "\n")
    pass_file.chmod(0o400)
    build_guide_ca(base / "ca", pass_file)
    return base / "ca", pass_file


@pytest.fixture
def guide_ca(pristine: tuple[Path, Path], tmp_path: Path) -> Path:
    """A copy of the guide's folder for one test, its openssl.cnf files pointing at the copy."""
    source, _ = pristine
    copy = tmp_path / "ca"
    shutil.copytree(source, copy)
    for cnf in (copy / "openssl.cnf", copy / "intermediate/openssl.cnf"):
        cnf.write_text(cnf.read_text().replace(str(source), str(copy)))
    return copy


def cli(store: ResultsStore, *args: str | Path) -> str:
    result = CliRunner().invoke(
        casign_main, [str(arg) for arg in args], env={"CASIGN_STORE_PREFIX": store.prefix[:-1]}
    )
    assert result.exit_code == 0, result.output
    return result.output


def serial_of(path: Path) -> str:
    return format_serial(x509.load_pem_x509_certificate(path.read_bytes()).serial_number)


def test_adopt_export_equals_the_original_and_casign_signs_on(
    guide_ca: Path, pristine: tuple[Path, Path], store: ResultsStore, redis_url: str
) -> None:
    _, pass_file = pristine
    original = (guide_ca / "intermediate/index.txt").read_text()
    assert len(original.splitlines()) == 12
    assert sorted(line[0] for line in original.splitlines()) == ["R"] * 2 + ["V"] * 10

    said = cli(store, "adopt", guide_ca, "--store", redis_url, "--passphrase-file", pass_file)
    assert "adopted 12 index entries (2 R, 10 V)" in said
    assert "12 certificates stored" in said

    exported = cli(store, "index", "export", "--ca", guide_ca, "--store", redis_url)
    assert exported == original  # line for line, byte for byte

    # Nothing lost: statuses, revocation times and reasons, serials, certificates.
    for name, reason in REVOKED.items():
        serial = serial_of(guide_ca / f"intermediate/certs/{name}.cert.pem")
        entry = store.index_entry(serial)
        assert entry is not None and entry.status is Status.REVOKED
        assert entry.revocation_reason == reason
    for line in original.splitlines():
        serial = line.split("\t")[3]
        newcert = (guide_ca / f"intermediate/newcerts/{serial}.pem").read_text()
        assert store.certificate(serial) == newcert
        assert store.client.hget(store.key("serials"), serial) == ADOPTED
    settings = (guide_ca / "intermediate/casign.toml").read_text()
    assert f"file:private/intermediate.key.pem?pin-source=file:{pass_file}" in settings
    assert (guide_ca / "intermediate/profiles.toml").exists()
    record_key = guide_ca / "intermediate/private/record-mac.key"  # sealing the store's records
    assert f"wrote {record_key}" in said
    assert record_key.stat().st_mode & 0o777 == 0o400 and len(record_key.read_bytes()) == 32

    # casign signs one more with the adopted, passphrase-protected key.
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "new.key.pem",
            "-out", "new.csr.pem", "-subj", f"{LEAF_SUBJECT}/CN=new.example.com",
            cwd=guide_ca)  # fmt: skip
    new_cert = guide_ca / "new.cert.pem"
    cli(store, "sign", "--ca", guide_ca, "--store", redis_url, "--profile", "server_cert",
        guide_ca / "new.csr.pem", "-o", new_cert)  # fmt: skip
    chain = guide_ca / "intermediate/certs/ca-chain.cert.pem"
    assert openssl("verify", "-CAfile", chain, new_cert, cwd=guide_ca).stdout.endswith(": OK\n")

    after = cli(store, "index", "export", "--ca", guide_ca, "--store", redis_url)
    assert after.startswith(original)
    (added,) = after[len(original) :].splitlines()
    assert added.split("\t")[0] == "V" and added.split("\t")[3] == serial_of(new_cert)
    assert added.endswith("\t/C=US/ST=California/L=Mountain View/O=Alice Ltd/"
                          "OU=Alice Ltd Web Services/CN=new.example.com")  # fmt: skip

    # `openssl ca` accepts the exported index: it makes a CRL from it and revokes in it.
    (guide_ca / "intermediate/index.txt").write_text(after)
    passin = f"file:{pass_file}"
    openssl("ca", "-config", "intermediate/openssl.cnf", "-gencrl", "-out", "openssl.crl.pem",
            "-passin", passin, cwd=guide_ca)  # fmt: skip
    shown = openssl("crl", "-in", "openssl.crl.pem", "-noout", "-text", cwd=guide_ca).stdout
    revoked_serials = {serial_of(guide_ca / f"intermediate/certs/{n}.cert.pem") for n in REVOKED}
    assert set(re.findall(r"Serial Number: ([0-9A-F]+)", shown)) == revoked_serials
    openssl("ca", "-config", "intermediate/openssl.cnf", "-revoke", new_cert,
            "-crl_reason", "superseded", "-passin", passin, cwd=guide_ca)  # fmt: skip
    assert (guide_ca / "intermediate/index.txt").read_text().splitlines()[-1].startswith("R\t")


def test_adopted_revocations_reach_the_crl_and_ocsp(
    guide_ca: Path, pristine: tuple[Path, Path], store: ResultsStore, tmp_path: Path
) -> None:
    _, pass_file = pristine
    report = adopt_ca(guide_ca, store, pass_file)
    assert report.entries == 12 and report.revoked == 2 and not report.not_verbatim
    assert report.next_crl_number == 0x1000  # from the guide's `echo 1000 > crlnumber`
    authority = load_authority(guide_ca)
    folder = CAFolder(guide_ca)
    revocations = RevocationStore(store)

    published = make_crl(authority, revocations)
    assert published.number == 0x1000
    (tmp_path / "crl.pem").write_bytes(published.pem)
    shown = openssl("crl", "-CAfile", folder.chain_path, "-verify", "-in", tmp_path / "crl.pem",
                    "-noout", "-text", cwd=tmp_path)  # fmt: skip
    assert "verify OK" in shown.stdout + shown.stderr
    revoked_serials = {serial_of(guide_ca / f"intermediate/certs/{n}.cert.pem") for n in REVOKED}
    assert set(re.findall(r"Serial Number: ([0-9A-F]+)", shown.stdout)) == revoked_serials
    assert "Key Compromise" in shown.stdout and "Superseded" in shown.stdout

    ensure_ocsp_certificate(folder, authority, store)
    with running_responder(guide_ca, store) as server:
        for name, expected in (("www2.example.com", "revoked"), ("www3.example.com", "good")):
            answer = openssl("ocsp", "-issuer", folder.intermediate_cert_path,
                             "-cert", f"intermediate/certs/{name}.cert.pem",
                             "-url", server.url, "-CAfile", folder.chain_path,
                             cwd=guide_ca)  # fmt: skip
            assert f"{name}.cert.pem: {expected}" in answer.stdout, answer.stdout
            assert "Response verify OK" in answer.stdout + answer.stderr


def test_adopting_again_adds_nothing_and_a_conflict_is_refused(
    guide_ca: Path, store: ResultsStore
) -> None:
    heard: list[tuple[int, int]] = []
    first = adopt_ca(guide_ca, store, on_progress=lambda done, total: heard.append((done, total)))
    again = adopt_ca(guide_ca, store)
    assert (first.entries, again.entries, again.already_present) == (12, 0, 12)
    assert heard[0] == (0, 12) and heard[-1] == (12, 12)
    assert store.count_issued() == 12
    assert len(list(store.index_lines())) == 12

    serial = (guide_ca / "intermediate/index.txt").read_text().splitlines()[0].split("\t")[3]
    store.client.hset(store.key("index"), serial, "V\t300101000000Z\t\t" + serial + "\tx\t/CN=x")
    with pytest.raises(ConfigurationError, match=f"serial {serial} is in the store"):
        adopt_ca(guide_ca, store)


def test_a_broken_index_line_is_named(guide_ca: Path, store: ResultsStore) -> None:
    index = guide_ca / "intermediate/index.txt"
    index.write_text(index.read_text() + "V\tnot a time\n")
    with pytest.raises(ConfigurationError, match=r"index\.txt, line 13"):
        adopt_ca(guide_ca, store)
    assert store.count_issued() == 0
