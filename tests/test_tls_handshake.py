"""Real mutual-TLS handshakes on loopback with certificates casign issued (as trustme tests do)."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

from core.keys import KeyType
from store.results import ResultsStore
from tests.csrs import job, make_csr
from worker.authority import load_authority
from worker.cafolder import CAOptions, init_ca
from worker.issuance import BatchSigner

SERVER_NAME = "www.example.com"
CLIENT_NAME = "alice@example.com"
TIMEOUT = 10.0


@dataclass
class Credentials:
    """A certificate file (leaf, then intermediate) and its key file."""

    cert_file: Path
    key_file: Path


@dataclass
class PeerView:
    """What one side of a handshake saw: the peer's certificate, or the error it got."""

    peer: dict[str, object] | None = None
    error: BaseException | None = None
    received: bytes = b""
    done: threading.Event = field(default_factory=threading.Event)


def _write_credentials(
    directory: Path,
    name: str,
    certificate_pem: str,
    intermediate_pem: str,
    key: CertificateIssuerPrivateKeyTypes,
) -> Credentials:
    cert_file = directory / f"{name}.cert.pem"
    key_file = directory / f"{name}.key.pem"
    cert_file.write_text(certificate_pem + intermediate_pem, encoding="ascii")
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o400)
    return Credentials(cert_file, key_file)


def _issue_pair(signer: BatchSigner, directory: Path) -> tuple[Credentials, Credentials]:
    """A server_cert (RSA key, DNS and IP SANs) and a usr_cert (P-256 key) from `signer`."""
    directory.mkdir(exist_ok=True)
    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    client_key = ec.generate_private_key(ec.SECP256R1())
    server_job = job(
        f"tls-server-{uuid.uuid4().hex}",
        make_csr(SERVER_NAME, key=server_key),
        "server_cert",
        san=[f"DNS:{SERVER_NAME}", "IP:127.0.0.1"],
    )
    client_job = job(
        f"tls-client-{uuid.uuid4().hex}",
        make_csr(CLIENT_NAME, key=client_key, san=[x509.RFC822Name(CLIENT_NAME)]),
        "usr_cert",
    )
    server, client = signer.sign_batch([server_job, client_job])
    assert server.certificate_pem and client.certificate_pem, (server, client)
    intermediate_pem = signer.authority.intermediate.public_bytes(serialization.Encoding.PEM)
    return (
        _write_credentials(
            directory, "server", server.certificate_pem, intermediate_pem.decode(), server_key
        ),
        _write_credentials(
            directory, "client", client.certificate_pem, intermediate_pem.decode(), client_key
        ),
    )


def server_context(credentials: Credentials, trusted: Path) -> ssl.SSLContext:
    """A server that presents `credentials` and requires a client certificate under `trusted`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(trusted))
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(credentials.cert_file, credentials.key_file)
    return context


def client_context(credentials: Credentials | None, trusted: Path) -> ssl.SSLContext:
    """A client that checks the server (chain and host name) against `trusted`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if credentials is not None:
        context.load_cert_chain(credentials.cert_file, credentials.key_file)
    return context


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = SERVER_NAME
) -> tuple[PeerView, PeerView]:
    """One connection on 127.0.0.1: the server answers b'hello' once it has a verified peer."""
    server_view, client_view = PeerView(), PeerView()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(raw, server_side=True) as tls:
                server_view.peer = tls.getpeercert()
                tls.sendall(b"hello")
        except (OSError, ssl.SSLError) as exc:
            server_view.error = exc
        finally:
            server_view.done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            client_view.peer = tls.getpeercert()
            # TLS 1.3 reports a refused client certificate after the handshake, on read.
            client_view.received = tls.recv(16)
    except (OSError, ssl.SSLError) as exc:
        client_view.error = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert server_view.done.is_set(), "the server thread did not finish"
    return server_view, client_view


def subject_of(peer: dict[str, object] | None, key: str = "subject") -> dict[str, str]:
    assert peer is not None
    return {name: value for rdn in peer[key] for name, value in rdn}  # type: ignore[attr-defined]


@pytest.fixture
def pair(signer: BatchSigner, tmp_path: Path) -> tuple[Credentials, Credentials]:
    return _issue_pair(signer, tmp_path)


@pytest.fixture
def other_signer(tmp_path_factory: pytest.TempPathFactory, store: ResultsStore) -> BatchSigner:
    """A second, unrelated CA (same certificate names) signing into the same store."""
    folder = init_ca(
        tmp_path_factory.mktemp("other-ca") / "ca",
        CAOptions(
            root_cn="Mallory Root CA",
            intermediate_cn="Mallory Intermediate CA",
            organization="Mallory Ltd",
            key_type=KeyType.P256,
        ),
    )
    return BatchSigner(load_authority(folder.root), store)


def test_mutual_tls_with_issued_server_and_client_certificates(
    pair: tuple[Credentials, Credentials], chain_path: Path
) -> None:
    server, client = pair
    server_view, client_view = handshake(
        server_context(server, chain_path), client_context(client, chain_path)
    )
    assert server_view.error is None and client_view.error is None
    assert client_view.received == b"hello"
    assert subject_of(server_view.peer) == {"commonName": CLIENT_NAME}
    assert subject_of(client_view.peer) == {"commonName": SERVER_NAME}
    for view in (server_view, client_view):
        assert subject_of(view.peer, "issuer") == {
            "countryName": "GB",
            "organizationName": "Alice Ltd",
            "commonName": "Alice Ltd Intermediate CA",
        }


def test_the_server_certificate_matches_its_ip_san(
    pair: tuple[Credentials, Credentials], chain_path: Path
) -> None:
    server, client = pair
    server_view, client_view = handshake(
        server_context(server, chain_path), client_context(client, chain_path), "127.0.0.1"
    )
    assert client_view.error is None and server_view.error is None
    assert ("IP Address", "127.0.0.1") in client_view.peer["subjectAltName"]  # type: ignore[index, operator]


def test_a_wrong_host_name_is_refused(
    pair: tuple[Credentials, Credentials], chain_path: Path
) -> None:
    server, client = pair
    _, client_view = handshake(
        server_context(server, chain_path),
        client_context(client, chain_path),
        "mail.example.com",
    )
    assert isinstance(client_view.error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(client_view.error)


def test_a_server_certificate_from_another_ca_is_refused(
    pair: tuple[Credentials, Credentials],
    other_signer: BatchSigner,
    chain_path: Path,
    tmp_path: Path,
) -> None:
    _, client = pair
    impostor, _ = _issue_pair(other_signer, tmp_path / "other")
    _, client_view = handshake(
        server_context(impostor, chain_path), client_context(client, chain_path)
    )
    assert isinstance(client_view.error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(client_view.error)
    assert client_view.peer is None


def test_a_client_certificate_from_another_ca_is_refused(
    pair: tuple[Credentials, Credentials],
    other_signer: BatchSigner,
    chain_path: Path,
    tmp_path: Path,
) -> None:
    server, _ = pair
    _, impostor = _issue_pair(other_signer, tmp_path / "other")
    server_view, client_view = handshake(
        server_context(server, chain_path), client_context(impostor, chain_path)
    )
    assert isinstance(server_view.error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(server_view.error)
    assert server_view.peer is None
    assert "unknown ca" in str(client_view.error)
    assert client_view.received == b""


def test_the_other_cas_certificates_work_against_their_own_chain(
    other_signer: BatchSigner, tmp_path: Path
) -> None:
    """The control for the two refusals above: only the trust anchor differs."""
    server, client = _issue_pair(other_signer, tmp_path)
    other_chain = tmp_path / "other-chain.pem"
    other_chain.write_text(other_signer.authority.chain_pem, encoding="ascii")
    server_view, client_view = handshake(
        server_context(server, other_chain), client_context(client, other_chain)
    )
    assert server_view.error is None and client_view.error is None
    assert subject_of(server_view.peer) == {"commonName": CLIENT_NAME}


def test_a_client_without_a_certificate_is_refused(
    pair: tuple[Credentials, Credentials], chain_path: Path
) -> None:
    server, _ = pair
    server_view, client_view = handshake(
        server_context(server, chain_path), client_context(None, chain_path)
    )
    assert isinstance(server_view.error, ssl.SSLError)
    assert "peer did not return a certificate" in str(server_view.error)
    assert server_view.peer is None
    assert client_view.error is not None and client_view.received == b""
