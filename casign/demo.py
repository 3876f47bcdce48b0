"""`casign demo`: the whole path on one machine, with nothing installed but casign."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.progress import Progress

from casign.cli_base import fail, write_certificate
from casign.supervise import stop_process_group
from core.files import KEY_MODE, PUBLIC_MODE, write_file_atomically
from core.keys import KeyType, write_private_key
from core.messages import SignRequest
from producers import Producer
from store.embedded import EmbeddedRedis
from store.results import ResultsStore

WORKER_START_TIMEOUT = 60.0
DEMO_PRODUCER = "demo"


def _demo_producer(directory: Path, producers_path: Path) -> str:
    """The demo's producer identity (a producers.toml entry and its secret, 0400), made when
    the CA lists no producers yet; returns where its secret is (`file:PATH`)."""
    secret_path = directory / f"{DEMO_PRODUCER}-producer.secret"
    source = f"file:{secret_path}"
    if not producers_path.exists():
        write_file_atomically(secret_path, secrets.token_hex(32) + "\n", KEY_MODE)
        entry = f"[producers.{DEMO_PRODUCER}]\nsecret = {json.dumps(source)}\n"
        write_file_atomically(producers_path, entry, PUBLIC_MODE)
    return source


def _keep_root_offline(directory: Path, root_key_path: Path) -> Path | None:
    """Move the root key out of the CA folder, as it would go to offline media; where it went."""
    if not root_key_path.exists():
        return None
    offline = directory / "offline-root"
    offline.mkdir(mode=0o700, exist_ok=True)
    destination = offline / root_key_path.name
    os.replace(root_key_path, destination)
    return destination


def _demo_request(index: int, out: Path) -> tuple[str, SignRequest]:
    """A new key and CSR: half servers named by hostname, half clients by e-mail address."""
    key = ec.generate_private_key(ec.SECP256R1())
    if index % 2 == 0:
        name, profile, common_name = (
            f"host{index:05d}",
            "server_cert",
            f"host{index:05d}.demo.example",
        )
    else:
        name, profile, common_name = f"user{index:05d}", "usr_cert", f"user{index:05d}@demo.example"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    write_private_key(out / f"{name}.key.pem", key, None)
    san = [f"email:{common_name}"] if profile == "usr_cert" else []
    request = SignRequest(
        job_id=f"demo-{uuid.uuid4().hex}",
        csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(),
        profile=profile,
        san=san,
    )
    return name, request


def _start_worker(ca_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    from casign.safe_path import python_command

    command = [
        *python_command(),
        "-m",
        "casign",
        "worker",
        "--no-restart",  # a short run: a worker that dies should end the demo with its log
        "--ca",
        str(ca_dir),
        "--concurrency",
        "2",
        "--loglevel",
        "WARNING",
    ]
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(log_path, flags, 0o644), "ab") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _wait_for_worker(store: ResultsStore, worker: subprocess.Popen[bytes], log_path: Path) -> None:
    """The worker publishes the chain when a pool process has opened the key."""
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while store.chain() is None:
        if worker.poll() is not None or time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-2000:]
            fail(f"the worker did not start; its log ({log_path}) ends:\n{tail}")
        time.sleep(0.1)


def _verify(paths: list[Path], chain: Path, intermediate: x509.Certificate) -> int:
    """Check every certificate against the chain, with `openssl verify` where it exists."""
    for path in paths:
        x509.load_pem_x509_certificate(path.read_bytes()).verify_directly_issued_by(intermediate)
    if not paths:
        return 0
    try:
        done = subprocess.run(
            ["openssl", "verify", "-CAfile", str(chain), *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return len(paths)
    if done.returncode != 0:
        fail(f"openssl verify refused a certificate:\n{done.stdout}{done.stderr}")
    return len(paths)


def _make_requests(count: int, out: Path) -> tuple[dict[str, str], list[SignRequest]]:
    names: dict[str, str] = {}
    requests = []
    with Progress(transient=True) as progress:
        task = progress.add_task("making keys and CSRs", total=count)
        for index in range(count):
            name, request = _demo_request(index, out)
            names[request.job_id] = name
            requests.append(request)
            progress.advance(task)
    return names, requests


def _collect(producer: Producer, names: dict[str, str], out: Path) -> tuple[list[Path], int]:
    """Write each certificate as it arrives; return the files written and the refusal count."""
    written: list[Path] = []
    refused = 0
    with Progress() as progress:
        task = progress.add_task("signing", total=len(names))
        for result in producer.results(list(names), timeout=300):
            if result.ok and result.certificate_pem:
                path = out / f"{names[result.job_id]}.cert.pem"
                write_certificate(path, result.certificate_pem)
                written.append(path)
            else:
                refused += 1
                click.secho(f"{names[result.job_id]}: [{result.code}] {result.message}", fg="red")
            progress.advance(task)
    return written, refused


@click.command()
@click.option("--count", type=int, default=200, show_default=True, help="CSRs to have signed.")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("casign-demo"),
    show_default=True,
)
def demo(count: int, directory: Path) -> None:
    """Make a demo CA, start Redis and a worker, sign COUNT CSRs, verify them, stop.

    The worker serves one listed producer (the demo's, made here), the root key is moved out
    of the CA folder first, and every certificate is checked against the root certificate.
    """
    from core.layout import folder_names
    from worker.cafolder import CAFolder, CAOptions, init_ca

    directory = directory.absolute()
    ca_dir = directory / "ca"
    out = directory / "issued" / time.strftime("%Y%m%d-%H%M%S")
    folder = CAFolder(ca_dir)
    if not folder.exists():
        click.echo(f"making a demo CA (RSA-2048 keys, unencrypted) in {ca_dir}")
        init_ca(
            ca_dir,
            CAOptions(
                root_cn="casign Demo Root CA",
                intermediate_cn="casign Demo Intermediate CA",
                key_type=KeyType.RSA2048,
            ),
        )
    offline = _keep_root_offline(directory, folder.root_key_path)
    if offline is not None:
        click.echo(f"moved the root key to {offline} (for a real CA: offline media)")
    secret_source = _demo_producer(directory, folder.producers_path)
    embedded = EmbeddedRedis(ca_dir)
    with embedded.running():
        log_path = directory / "worker.log"
        worker = _start_worker(ca_dir, log_path)
        try:
            ca_names = folder_names(ca_dir)  # the worker's, from casign.toml
            with Producer(
                embedded.broker_url,
                embedded.url,
                queue=ca_names.queue,
                store_prefix=ca_names.store_prefix,
                batch_size=100,
                identity=DEMO_PRODUCER,
                secret_source=secret_source,
                trust_anchor=folder.root_cert_path,
            ) as producer:
                _wait_for_worker(producer.store, worker, log_path)
                names, requests = _make_requests(count, out)
                start = time.perf_counter()
                producer.submit_many(requests)
                written, refused = _collect(producer, names, out)
                elapsed = time.perf_counter() - start
                chain_path = out / "ca-chain.cert.pem"
                producer_chain = producer.chain_pem()  # the chain the certificates were checked by
                if producer_chain is not None:
                    write_certificate(chain_path, producer_chain)
                recorded = producer.store.count_issued()
        finally:
            stop_process_group(worker, timeout=20)
    verified = _verify(written, chain_path, folder.intermediate_certificate())
    click.echo(
        f"signed {len(written)} certificates in {elapsed:.2f} s "
        f"({len(written) / elapsed:,.0f}/s, 2 worker processes), {refused} refused"
    )
    click.echo(f"verified {verified} against {chain_path}; {recorded} entries in the CA's index")
    click.echo(f"keys, certificates and chain: {out}/")
    click.echo(f"CA folder:    {ca_dir}   (index: casign index export --ca {ca_dir})")
    if refused or verified != count:
        sys.exit(1)
