"""`casign submit`, `request` and `status`: the producer's side, which never opens a CA key."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
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
    progress_bar,
    split_sans,
    store_option,
    write_certificate,
)
from casign.config import producer_identity, resolve_endpoints
from core.files import PUBLIC_MODE, write_file_atomically
from core.keys import KeyType, write_private_key
from core.messages import JobResult
from producers import Producer

DEFAULT_TIMEOUT = 600.0


@contextlib.contextmanager
def open_producer(
    ca: Path | None, broker: str | None, store: str | None, requester: str | None = None
) -> Iterator[Producer]:
    """A producer on the given endpoints; on the CA folder's embedded Redis if none are given."""
    endpoints = resolve_endpoints(broker, store, ca)
    if endpoints.embedded_dir is not None:
        from store.embedded import EmbeddedRedis

        if not EmbeddedRedis(endpoints.embedded_dir).is_running():
            fail(
                f"the embedded Redis of {endpoints.embedded_dir} is not running; start "
                f"`casign worker --ca {endpoints.embedded_dir}` first, or give --broker and --store",
                2,
            )
    identity, secret_source = producer_identity()
    with Producer(
        endpoints.broker_url,
        endpoints.store_url,
        store_prefix=endpoints.store_prefix,
        requester=requester,
        queue=endpoints.queue,
        identity=identity,
        secret_source=secret_source,
    ) as producer:
        yield producer


def certificate_name(csr_path: Path) -> str:
    """`www.example.com.csr.pem` -> `www.example.com` (the guide's file naming)."""
    name = csr_path.name
    for suffix in (".pem", ".csr", ".req"):
        name = name.removesuffix(suffix)
    return name or csr_path.name


def write_results(
    producer: Producer, out: Path, names: dict[str, str], timeout: float
) -> list[JobResult]:
    """Collect results as they arrive, writing NAME.cert.pem for each; return the refusals."""
    out.mkdir(parents=True, exist_ok=True)
    chain = producer.chain_pem()
    if chain:
        write_certificate(out / "ca-chain.cert.pem", chain)
    refused: list[JobResult] = []
    with progress_bar() as progress:
        task = progress.add_task("signing", total=len(names))
        try:
            for result in producer.results(list(names), timeout):
                if result.ok and result.certificate_pem:
                    write_certificate(
                        out / f"{names[result.job_id]}.cert.pem", result.certificate_pem
                    )
                else:
                    refused.append(result)
                progress.advance(task)
        except TimeoutError as exc:
            fail(str(exc), 4)
    if not chain:
        chain = producer.chain_pem()
        if chain:
            write_certificate(out / "ca-chain.cert.pem", chain)
    return refused


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--days", type=int, default=None, help="Validity in days (default: the profile's).")
@click.option("--san", multiple=True, help="Extra SANs for every CSR: DNS:..,IP:..,email:..")
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for NAME.cert.pem and ca-chain.cert.pem.",
)
@click.argument(
    "csrs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
def submit(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    profile: str,
    days: int | None,
    san: tuple[str, ...],
    timeout: float,
    out: Path,
    csrs: tuple[Path, ...],
) -> None:
    """Enqueue CSR files and write each certificate as it is signed."""
    with open_producer(ca, broker, store) as producer:
        requests = []
        names: dict[str, str] = {}
        for path in csrs:
            request = producer.request(
                path.read_text(encoding="utf-8", errors="replace"),
                profile=profile,
                san=split_sans(san),
                days=days,
            )
            requests.append(request)
            names[request.job_id] = certificate_name(path)
        producer.submit_many(requests)
        refused = write_results(producer, out, names, timeout)
    issued = len(names) - len(refused)
    click.echo(f"{issued} certificate(s) written to {out}; chain: {out / 'ca-chain.cert.pem'}")
    for result in refused:
        click.secho(
            f"refused {names[result.job_id]}: [{result.code}] {result.message}", fg="red", err=True
        )
    if refused:
        sys.exit(3)


def make_key_and_csr(
    common_name: str, key_type: KeyType, san: list[str]
) -> tuple[Any, x509.CertificateSigningRequest]:
    key = key_type.generate()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    csr = builder.sign(key, hashes.SHA256())
    return key, csr


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--cn", "common_name", required=True, help="Common Name (an FQDN for servers).")
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--days", type=int, default=None)
@click.option("--san", multiple=True, help="DNS:..,IP:..,email:..; repeatable.")
@click.option(
    "--key-type", type=click.Choice(["rsa2048", "p256"]), default="rsa2048", show_default=True
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the new key (AES-256) with the passphrase in this file.",
)
@click.option("--timeout", type=float, default=DEFAULT_TIMEOUT, show_default=True)
@click.option("--out", "out", type=click.Path(path_type=Path, file_okay=False), required=True)
def request(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    common_name: str,
    profile: str,
    days: int | None,
    san: tuple[str, ...],
    key_type: str,
    passphrase_file: Path | None,
    timeout: float,
    out: Path,
) -> None:
    """Make a key and CSR here, have the CSR signed, write key, certificate and chain."""
    name = common_name.replace("/", "_").replace("*", "wildcard")
    key_path = out / f"{name}.key.pem"
    if key_path.exists():
        fail(f"{key_path} exists; refusing to overwrite a key")
    key, csr = make_key_and_csr(common_name, KeyType(key_type), split_sans(san))
    passphrase = (
        passphrase_file.read_text(encoding="utf-8").rstrip("\r\n") if passphrase_file else None
    )
    out.mkdir(parents=True, exist_ok=True)
    write_private_key(key_path, key, passphrase)
    csr_path = out / f"{name}.csr.pem"
    write_file_atomically(csr_path, csr.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE)
    with open_producer(ca, broker, store) as producer:
        job_id = producer.submit(
            csr.public_bytes(serialization.Encoding.PEM).decode(),
            profile=profile,
            san=split_sans(san),
            days=days,
        )
        refused = write_results(producer, out, {job_id: name}, timeout)
    if refused:
        result = refused[0]
        fail(f"refused [{result.code}]: {result.message} (the key and CSR stay in {out})", 3)
    click.echo(f"key:         {key_path}" + (" (AES-256 encrypted)" if passphrase else ""))
    click.echo(f"certificate: {out / f'{name}.cert.pem'}")
    click.echo(f"chain:       {out / 'ca-chain.cert.pem'}")


@click.command()
@ca_option
@broker_option
@store_option
@click.argument("job_id")
def status(ca: Path | None, broker: str | None, store: str | None, job_id: str) -> None:
    """Tell where a job is: unknown or queued, reserved, issued or refused."""
    with open_producer(ca, broker or "unused://", store) as producer:
        state = producer.store.job_state(job_id)
    if not state:
        click.echo(f"{job_id}: unknown (not seen by a worker yet, or never submitted)")
        sys.exit(1)
    if state.get("state") == "issued":
        click.echo(f"{job_id}: issued, serial {state['serial']}")
    elif state.get("state") == "refused":
        click.echo(f"{job_id}: refused [{state.get('code')}] {state.get('message')}")
    else:
        click.echo(
            f"{job_id}: {state.get('state')} (serial {state.get('serial')} reserved, signing)"
        )
