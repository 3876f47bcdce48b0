"""`casign est`: the EST server (RFC 7030), its certificate, its clients, and a client for scripts.

casign est --ca ca --port 8443                          serve
casign est cert --ca ca --cn est.example.com            the server's own TLS certificate
casign est client add NAME --password-file F ...        who may enroll (intermediate/est.toml)
casign est enroll|reenroll|cacerts --server URL ...     enroll as a device would
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from casign.cli_base import (
    broker_option,
    ca_option,
    fail,
    figures_ttl_option,
    split_sans,
    store_option,
)
from casign.cli_producer import resolve_trust_anchor, trust_anchor_option
from casign.config import ca_dir, resolve_endpoints
from core.files import CERT_MODE, KEY_MODE, write_file_atomically
from core.keys import KeyType, write_private_key
from core.secret_source import read_secret_file, read_secret_source

RENEW_WITHIN = timedelta(days=30)
_KEY_TYPES = click.Choice(["rsa2048", "p256", "p384"])


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@click.group(invoke_without_command=True)
@ca_option
@broker_option
@store_option
@click.option("--port", type=int, default=None, help="TCP port to serve on (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True)
@trust_anchor_option
@figures_ttl_option
@click.pass_context
def est(
    ctx: click.Context,
    ca: Path | None,
    broker: str | None,
    store: str | None,
    port: int | None,
    host: str,
    trust_anchor: str | None,
    figures_ttl: float,
) -> None:
    """Serve EST (RFC 7030) over HTTPS: `casign est --ca DIR --port N`; or a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if port is None:
        fail("give --port N to serve, or a subcommand (see casign est --help)")
        return
    _serve(ca, broker, store, host, port, trust_anchor, figures_ttl)


def _serve(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    host: str,
    port: int,
    trust_anchor: str | None,
    figures_ttl: float,
) -> None:
    from est.server import SignerEndpoints, build_service, run_server
    from est.settings import load_settings, settings_path
    from store.embedded import EmbeddedRedis
    from store.results import ResultsStore

    folder = ca_dir(ca).absolute()
    anchor = resolve_trust_anchor(trust_anchor, folder)
    if anchor is None:
        fail(
            f"casign est serves only certificates that chain to a trust anchor, and "
            f"{folder / 'certs' / 'ca.cert.pem'} is not here: give --trust-anchor FILE (the "
            "root certificate, or its SHA-256)",
            2,
        )
    endpoints = resolve_endpoints(broker, store, folder)
    if (
        endpoints.embedded_dir is not None
        and not EmbeddedRedis(endpoints.embedded_dir).is_running()
    ):
        fail(
            f"the embedded Redis of {endpoints.embedded_dir} is not running; start "
            f"`casign worker --ca {endpoints.embedded_dir}` first, or give --broker and --store",
            2,
        )
    settings = load_settings(settings_path(folder))
    if not settings.clients:
        click.secho(
            f"warning: {settings_path(folder)} lists no client; only cacerts, csrattrs and "
            "re-enrollment will succeed (add one with `casign est client add`)",
            fg="yellow",
            err=True,
        )
    results_store = ResultsStore.from_url(endpoints.store_url, endpoints.store_prefix)
    signer = SignerEndpoints(
        endpoints.broker_url,
        endpoints.store_url,
        endpoints.store_prefix,
        endpoints.queue,
        trust_anchor=anchor,
    )
    service = build_service(folder, settings, signer, results_store)

    def ready(bound_host: str, bound_port: int) -> None:
        click.echo(f"EST server on https://{bound_host}:{bound_port}/.well-known/est/", err=True)
        sys.stderr.flush()

    try:
        asyncio.run(run_server(service, folder, host, port, ready, figures_ttl=figures_ttl))
    finally:
        results_store.close()


@est.command("cert")
@ca_option
@broker_option
@store_option
@click.option("--cn", "common_name", required=True, help="The server's DNS name.")
@click.option("--san", multiple=True, help="More names: DNS:..,IP:..; repeatable.")
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--key-type", type=_KEY_TYPES, default="p256", show_default=True)
@click.option("--force", is_flag=True, help="Issue a new one even if the current one is fine.")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@trust_anchor_option
def est_cert(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    common_name: str,
    san: tuple[str, ...],
    profile: str,
    key_type: str,
    force: bool,
    timeout: float,
    trust_anchor: str | None,
) -> None:
    """Issue or renew the EST server's TLS certificate through the queue, like any producer;
    the certificate and its chain are written only once they chain to the trust anchor."""
    from casign.cli_producer import open_producer
    from est.settings import server_cert_path, server_key_path

    folder = ca_dir(ca).absolute()
    cert_path, key_path = server_cert_path(folder), server_key_path(folder)
    if not force and cert_path.exists():
        current = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        if current.not_valid_after_utc - RENEW_WITHIN > datetime.now(UTC):
            click.echo(f"EST certificate still valid until {current.not_valid_after_utc:%Y-%m-%d}")
            click.echo(f"certificate: {cert_path}")
            return
    key = KeyType(key_type).generate()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    csr = builder.sign(key, hashes.SHA256())
    sans = [f"DNS:{common_name}", *split_sans(san)]
    anchor = resolve_trust_anchor(trust_anchor, folder)
    with open_producer(
        folder, broker, store, requester="casign est cert", trust_anchor=anchor
    ) as producer:
        job_id = producer.submit(
            csr.public_bytes(serialization.Encoding.PEM).decode(),
            profile=profile,
            san=sans,
            job_id=f"est-server-{uuid.uuid4().hex}",
        )
        try:
            (result,) = list(producer.results([job_id], timeout))
        except TimeoutError as exc:
            fail(str(exc), 4)
            return
        chain = producer.chain_pem() or ""
    if not result.ok or result.certificate_pem is None:
        fail(f"refused [{result.code}]: {result.message}", 3)
        return
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomically(key_path, pem, KEY_MODE)
    write_file_atomically(cert_path, result.certificate_pem + chain, CERT_MODE)
    click.echo(f"EST certificate {result.serial} issued")
    click.echo(f"certificate: {cert_path} (with the chain)")
    click.echo(f"key:         {key_path}")


@est.group("client")
def est_client() -> None:
    """The clients allowed to enroll, in intermediate/est.toml."""


@est_client.command("add")
@ca_option
@click.argument("name")
@click.option(
    "--password-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="HTTP Basic: the client's password is in this file (stored here as a scrypt hash).",
)
@click.option(
    "--issuer",
    "issuers",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="TLS: accept client certificates this CA (PEM file) issued directly; repeatable.",
)
@click.option("--producer", default=None, help="Its producer name in producers.toml.")
@click.option("--secret", default=None, help="That producer's secret: file:PATH or env:VAR.")
@click.option("--label", "labels", multiple=True, help="A profile it may enroll for; repeatable.")
@click.option("--rate", type=float, default=None, help="Enrollments per second it may make.")
@click.option("--burst", type=int, default=None, help="How many it may make at once.")
@click.option(
    "--key-passphrase",
    default=None,
    metavar="SOURCE",
    help="serverkeygen: encrypt its keys (PKCS#8, PBES2 AES-256) under the passphrase at "
    "file:PATH or env:VAR (at least 32 characters).",
)
@click.option(
    "--channel-binding",
    is_flag=True,
    help="Its CSRs must carry the TLS session's tls-unique in challengePassword (RFC 7030 3.5; "
    "TLS 1.2 only).",
)
@click.option(
    "--revoke-superseded/--keep-superseded",
    default=None,
    help="On simplereenroll, revoke the old certificate as superseded (default: [server]'s).",
)
@click.option(
    "--key-recipient",
    "key_recipients",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="serverkeygen: a PEM file of certificates its CSRs may name to have their key sealed "
    "to (RFC 7030 4.4.1.2), besides its TLS client certificate; repeatable.",
)
@click.option(
    "--key-secret",
    "key_secrets",
    multiple=True,
    metavar="ID=FILE",
    help="serverkeygen: a shared AES secret (hex in FILE, owned by the server's user, mode "
    "0600 or 0400) its CSRs may name by the hex identifier ID to have their key wrapped under "
    "(RFC 7030 4.4.1.1); repeatable.",
)
@click.option("--replace", is_flag=True, help="Replace a client of the same name.")
def est_client_add(
    ca: Path | None,
    name: str,
    password_file: Path | None,
    issuers: tuple[Path, ...],
    producer: str | None,
    secret: str | None,
    labels: tuple[str, ...],
    rate: float | None,
    burst: int | None,
    key_passphrase: str | None,
    channel_binding: bool,
    revoke_superseded: bool | None,
    key_recipients: tuple[Path, ...],
    key_secrets: tuple[str, ...],
    replace: bool,
) -> None:
    """Let NAME enroll, with a password (HTTP Basic) or certificates from --issuer."""
    from pydantic import ValidationError

    from est.passwords import hash_password
    from est.settings import ClientEntry, EstSettings, load_settings, save_settings, settings_path

    folder = ca_dir(ca)
    path = settings_path(folder)
    settings = load_settings(path)
    if name in settings.clients and not replace:
        fail(f"client {name!r} is already listed in {path}; give --replace to change it")
    _check_producer_listed(folder, name, producer)
    password = None
    if password_file is not None:
        text = read_secret_source(f"file:{password_file}", "EST client password")
        password = hash_password(text.rstrip("\r\n").encode())
    try:
        entry = ClientEntry(
            password=password,
            issuers=[str(issuer.absolute()) for issuer in issuers],
            producer=producer,
            secret=secret,
            labels=list(labels) or None,
            rate_per_second=rate,
            burst=burst,
            key_passphrase=key_passphrase,
            channel_binding=channel_binding,
            revoke_superseded=revoke_superseded,
            key_recipients=[str(path.absolute()) for path in key_recipients],
            key_secrets=[_key_secret_listing(name, given) for given in key_secrets],
        )
        updated = EstSettings.model_validate(settings.with_client(name, entry).model_dump())
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        fail(f"client {name!r}: {first['msg'].removeprefix('Value error, ')}")
        return
    save_settings(path, updated)
    how = " and ".join(
        what for what, given in (("a password", password), ("certificates", issuers)) if given
    )
    click.echo(f"EST client {name!r} added ({how}) to {path}")


def _check_producer_listed(folder: Path, client: str, producer: str | None) -> None:
    """Refuse a client whose enrollments the signer would refuse, every one: with a
    producers.toml, the signer serves only the producers it lists."""
    from casign.producers_file import read_producers

    producers_path = folder / "intermediate" / "producers.toml"
    listed = read_producers(producers_path)
    if not producers_path.exists() or (producer is not None and producer in listed):
        return
    names = ", ".join(sorted(listed)) or "none yet"
    if producer is None:
        fail(
            f"{producers_path} lists the producers this CA serves (the signer refuses any other "
            f"batch, auth.unsigned): map client {client!r} to one with --producer NAME --secret "
            f"file:PATH (listed: {names}; `casign producer add` lists another)"
        )
    fail(f"producer {producer!r} is not listed in {producers_path} (listed: {names})")


def _key_secret_listing(client: str, given: str) -> Any:
    """The est.toml entry of `--key-secret ID=FILE`, once FILE holds a secret the server can
    use (read here as the server will read it; the secret itself goes nowhere)."""
    from core.errors import ConfigurationError
    from est.key_secrets import load_key_encryption_key
    from est.settings import KeySecretFile

    identifier, equals, file = given.partition("=")
    try:
        if not equals or not file:
            raise ValueError("it is not ID=FILE")
        secret_id = bytes.fromhex(identifier)
        path = Path(file).absolute()
        load_key_encryption_key(path, secret_id, f"key secret {identifier} of {client!r}")
    except ValueError as exc:
        fail(f"--key-secret {given}: {exc} (the identifier is hex)")
    except ConfigurationError as exc:
        fail(f"--key-secret: {exc}")
    return KeySecretFile(id=identifier.lower(), file=str(path))


@est_client.command("remove")
@ca_option
@click.argument("name")
def est_client_remove(ca: Path | None, name: str) -> None:
    """Stop NAME from enrolling (a running `casign est` applies it within a second)."""
    from est.settings import load_settings, save_settings, settings_path

    path = settings_path(ca_dir(ca))
    settings = load_settings(path)
    if name not in settings.clients:
        fail(f"client {name!r} is not listed in {path}")
    save_settings(path, settings.without_client(name))
    click.echo(f"EST client {name!r} removed from {path}")


@est_client.command("list")
@ca_option
def est_client_list(ca: Path | None) -> None:
    """The listed clients: name, how each authenticates, producer, labels, rate."""
    from est.settings import load_settings, settings_path

    for name, entry in sorted(load_settings(settings_path(ca_dir(ca))).clients.items()):
        proofs = [
            what for what, given in (("password", entry.password), ("tls", entry.issuers)) if given
        ]
        fields = [
            name,
            "+".join(proofs),
            entry.producer or "-",
            ",".join(entry.labels) if entry.labels else "*",
            f"{entry.rate_per_second:g}/s" if entry.rate_per_second else "-",
        ]
        click.echo("\t".join(fields))


# --- the client side ---------------------------------------------------------------------------


def _session_options(function: Any) -> Any:
    for option in reversed(
        [
            click.option("--server", required=True, help="https://HOST:PORT of the EST server."),
            click.option(
                "--cacert",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                default=None,
                help="CA certificate(s) to trust the server by (default: the system's).",
            ),
            click.option(
                "--label", default=None, help="The profile label (default: the server's)."
            ),
            click.option("--timeout", type=float, default=120.0, show_default=True),
        ]
    ):
        function = option(function)
    return function


def _session(
    server: str,
    cacert: Path | None,
    label: str | None,
    timeout: float,
    **auth: Any,
) -> Any:
    from est.client import EstSession

    try:
        return EstSession(server, cacert=cacert, label=label, timeout=timeout, **auth)
    except (ValueError, OSError) as exc:
        fail(str(exc))


def _run(call: Any) -> Any:
    from est.client import EstError

    try:
        return call()
    except EstError as exc:
        if exc.code:
            fail(f"refused [{exc.code}]: {exc.message}", 3)
        fail(exc.message, 2)


def _write_chain(out: Path, session: Any) -> Path:
    chain = _chain_order(_run(session.cacerts))
    path = out / "ca-chain.cert.pem"
    write_file_atomically(path, "".join(_pem(c) for c in chain), CERT_MODE)
    return path


def _chain_order(certificates: list[x509.Certificate]) -> list[x509.Certificate]:
    """Intermediates first, the self-signed root last, as `ca-chain.cert.pem` has them
    (a certs-only PKCS#7 is a SET, in no particular order)."""
    return sorted(certificates, key=lambda certificate: certificate.issuer == certificate.subject)


def _file_name(common_name: str) -> str:
    return common_name.replace("/", "_").replace("*", "wildcard")


def _passphrase(passphrase_file: Path | None) -> str | None:
    if passphrase_file is None:
        return None
    return read_secret_file(passphrase_file, "passphrase")


@est.command("enroll")
@_session_options
@click.option("--cn", "common_name", required=True, help="The subject's Common Name.")
@click.option("--san", multiple=True, help="DNS:..,IP:..,email:..,URI:..; repeatable.")
@click.option("--key-type", type=_KEY_TYPES, default="p256", show_default=True)
@click.option("--serverkeygen", is_flag=True, help="Have the server make the key.")
@click.option(
    "--seal-key",
    is_flag=True,
    help="serverkeygen: have the key sealed (CMS) to --recipient, else to --cert, and open it "
    "here with that certificate's key (RFC 7030 4.4.1.2).",
)
@click.option(
    "--recipient", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="The certificate to seal the key to (one the server lists for this client) ...",
)  # fmt: skip
@click.option(
    "--recipient-key", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None, help="... and its key.",
)  # fmt: skip
@click.option(
    "--secret-key-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None, help="Or have the key wrapped under the AES secret (hex) in this file, one "
    "the server lists for this client (RFC 7030 4.4.1.1) ...",
)  # fmt: skip
@click.option("--secret-key-id", default=None, metavar="HEX", help="... named by this identifier.")
@click.option("--user", default=None, help="HTTP Basic user name.")
@click.option(
    "--password-file", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None
)
@click.option(
    "--cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="TLS client certificate (a bootstrap certificate) ...",
)  # fmt: skip
@click.option(
    "--key", type=click.Path(path_type=Path, dir_okay=False, exists=True), default=None,
    help="... and its key.",
)  # fmt: skip
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the new key (AES-256) with the passphrase in this file.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def est_enroll(
    server: str,
    cacert: Path | None,
    label: str | None,
    timeout: float,
    common_name: str,
    san: tuple[str, ...],
    key_type: str,
    serverkeygen: bool,
    seal_key: bool,
    recipient: Path | None,
    recipient_key: Path | None,
    secret_key_file: Path | None,
    secret_key_id: str | None,
    user: str | None,
    password_file: Path | None,
    cert: Path | None,
    key: Path | None,
    passphrase_file: Path | None,
    out: Path,
) -> None:
    """Enroll over EST: write NAME.key.pem, NAME.cert.pem and ca-chain.cert.pem to --out."""
    from est.client import build_csr, load_pkcs8
    from est.key_envelope import KeyEncryptionKey

    name = _file_name(common_name)
    key_path, cert_path = out / f"{name}.key.pem", out / f"{name}.cert.pem"
    if key_path.exists():
        fail(f"{key_path} exists; refusing to overwrite a key")
    password = _password(user, password_file)
    session = _session(
        server, cacert, label, timeout, username=user, password=password, certificate=cert, key=key
    )
    sealed_to: Any
    if secret_key_file is not None or secret_key_id is not None:
        if recipient is not None:
            fail("--recipient and --secret-key-file are two ways to seal the key: give one")
        sealed_to = _key_secret(serverkeygen, seal_key, secret_key_file, secret_key_id)
    else:
        sealed_to = _key_recipient(serverkeygen, seal_key, recipient, recipient_key, cert, key)
    own_key = KeyType(key_type).generate()
    by_secret = isinstance(sealed_to, KeyEncryptionKey)
    csr = build_csr(
        own_key,
        common_name,
        split_sans(san),
        sealed_to.certificate if sealed_to is not None and not by_secret else None,
        sealed_to.identifier if by_secret else None,
    )
    if serverkeygen:
        key_der, certificate = _run(lambda: session.serverkeygen(csr, sealed_to))
        new_key: Any = load_pkcs8(key_der)
    else:
        certificate, new_key = _run(lambda: session.simpleenroll(csr)), own_key
    out.mkdir(parents=True, exist_ok=True)
    write_private_key(key_path, new_key, _passphrase(passphrase_file))
    write_file_atomically(cert_path, _pem(certificate), CERT_MODE)
    chain_path = _write_chain(out, session)
    sealed_how = ", sealed under its secret" if by_secret else ", sealed to its recipient"
    made = " (made by the server" + (sealed_how if sealed_to else "") + ")"
    click.echo(f"key:         {key_path}" + (made if serverkeygen else ""))
    click.echo(f"certificate: {cert_path} (serial {certificate.serial_number:X})")
    click.echo(f"chain:       {chain_path}")


def _key_recipient(
    serverkeygen: bool,
    seal_key: bool,
    recipient: Path | None,
    recipient_key: Path | None,
    cert: Path | None,
    key: Path | None,
) -> Any:
    """The KeyRecipient --seal-key asks for: --recipient and its key, else --cert and --key."""
    from est.client import load_recipient

    if (recipient is None) != (recipient_key is None):
        fail("--recipient and --recipient-key go together")
    if recipient is not None and not seal_key:
        fail("--recipient is for --seal-key")
    if not seal_key:
        return None
    if not serverkeygen:
        fail("--seal-key is for --serverkeygen: only a key the server makes can be sealed")
    if recipient is None:
        recipient, recipient_key = cert, key
    if recipient is None or recipient_key is None:
        fail("--seal-key needs --recipient and --recipient-key, or --cert and --key")
        return None
    try:
        return load_recipient(recipient, recipient_key)
    except (OSError, ValueError, IndexError) as exc:
        fail(f"cannot use {recipient} to seal the key to: {exc}")


def _key_secret(
    serverkeygen: bool, seal_key: bool, secret_key_file: Path | None, secret_key_id: str | None
) -> Any:
    """The KeyEncryptionKey --seal-key --secret-key-file F --secret-key-id HEX asks for."""
    from core.errors import ConfigurationError
    from est.key_secrets import load_key_encryption_key

    if not (seal_key and serverkeygen):
        fail("--secret-key-file is for --serverkeygen --seal-key")
    if secret_key_file is None or secret_key_id is None:
        fail("--secret-key-file and --secret-key-id go together")
        return None
    try:
        identifier = bytes.fromhex(secret_key_id)
        return load_key_encryption_key(secret_key_file, identifier, "secret key")
    except ValueError as exc:
        fail(f"--secret-key-id {secret_key_id}: {exc} (a hex identifier, 1 to 64 octets)")
    except ConfigurationError as exc:
        fail(str(exc))


def _password(user: str | None, password_file: Path | None) -> bytes | None:
    if (user is None) != (password_file is None):
        fail("--user and --password-file go together")
    if password_file is None:
        return None
    return read_secret_source(f"file:{password_file}", "EST password").rstrip("\r\n").encode()


@est.command("reenroll")
@_session_options
@click.option(
    "--cert", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True,
    help="The current certificate (casign issued it) ...",
)  # fmt: skip
@click.option(
    "--key", type=click.Path(path_type=Path, dir_okay=False, exists=True), required=True,
    help="... and its key.",
)  # fmt: skip
@click.option("--keep-key", is_flag=True, help="Renew with the same key (default: a new one).")
@click.option("--key-type", type=_KEY_TYPES, default="p256", show_default=True)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The key's passphrase (current and new key).",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def est_reenroll(
    server: str,
    cacert: Path | None,
    label: str | None,
    timeout: float,
    cert: Path,
    key: Path,
    keep_key: bool,
    key_type: str,
    passphrase_file: Path | None,
    out: Path,
) -> None:
    """Renew the certificate --cert over EST, same subject and names; write key and cert to --out."""
    from est.client import load_pem_key, renewal_csr

    passphrase = _passphrase(passphrase_file)
    current = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    current_key = load_pem_key(key.read_bytes(), passphrase)
    names = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = _file_name(str(names[0].value) if names else f"{current.serial_number:X}")
    key_path, cert_path = out / f"{name}.key.pem", out / f"{name}.cert.pem"
    if not keep_key and key_path.exists() and key_path.resolve() != key.resolve():
        fail(f"{key_path} exists; refusing to overwrite a key")
    new_key = current_key if keep_key else KeyType(key_type).generate()
    session = _session(server, cacert, label, timeout, certificate=cert, key=key)
    if passphrase is not None:  # ssl cannot take the passphrase from a file itself
        session.context.load_cert_chain(cert, key, password=passphrase)
    certificate = _run(lambda: session.simplereenroll(renewal_csr(current, new_key)))
    out.mkdir(parents=True, exist_ok=True)
    if not keep_key:
        write_file_atomically(key_path, _key_pem(new_key, passphrase), KEY_MODE)
    write_file_atomically(cert_path, _pem(certificate), CERT_MODE)
    chain_path = _write_chain(out, session)
    click.echo(f"key:         {key if keep_key else key_path}")
    click.echo(f"certificate: {cert_path} (serial {certificate.serial_number:X})")
    click.echo(f"chain:       {chain_path}")


def _key_pem(key: Any, passphrase: str | None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    data: bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return data


@est.command("cacerts")
@_session_options
@click.option("-o", "--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None)
def est_cacerts(
    server: str, cacert: Path | None, label: str | None, timeout: float, out: Path | None
) -> None:
    """Fetch the CA certificates (PEM, intermediate first); stdout by default."""
    session = _session(server, cacert, label, timeout)
    text = "".join(_pem(certificate) for certificate in _chain_order(_run(session.cacerts)))
    if out is None:
        click.echo(text, nl=False)
    else:
        write_file_atomically(out, text, CERT_MODE)
        click.echo(f"CA certificates written to {out}", err=True)
