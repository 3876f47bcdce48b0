"""`casign`: the operator's commands. Producer commands live in `casign.cli_producer`."""

from __future__ import annotations

import errno
import logging
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casign.cli_base import (
    broker_option,
    ca_option,
    embedded_redis,
    fail,
    open_store,
    split_sans,
    store_option,
    write_certificate,
)
from casign.config import ENVIRONMENT, Endpoints, ca_dir, ca_names, resolve_endpoints
from core.errors import Rejected, Retryable, SigningError
from core.files import PUBLIC_MODE, write_file_atomically
from core.layout import ca_folder_problem, folder_names

if TYPE_CHECKING:
    from cryptography import x509


class CasignGroup(click.Group):
    """Turns our own errors into one red line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Rejected as exc:
            fail(f"refused [{exc.code}]: {exc.message}", 3)
        except SigningError as exc:
            fail(str(exc), 2)
        except OSError as exc:
            fail(describe_os_error(exc), 2)
        except Exception as exc:
            problem = describe_connection_error(exc)
            if problem is None:
                raise
            fail(problem, 2)


def describe_os_error(exc: OSError) -> str:
    """A failed file or socket operation as one sentence that names what to change."""
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use by another process; choose another --port"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) and exc.filename is not None:
        return f"cannot write under {exc.filename}: a file stands where a folder should be"
    if exc.filename is not None:
        return f"cannot use {exc.filename}: {reason}"
    return reason


def describe_connection_error(exc: Exception) -> str | None:
    """A broker or Redis that cannot be reached, in one sentence; None for anything else."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    if isinstance(exc, OperationalError):
        return f"cannot reach the broker ({exc}); is it running, and is --broker right?"
    if isinstance(exc, RedisError):
        return f"cannot reach Redis ({exc}); is it running, and are --broker/--store right?"
    return None


@click.group(
    cls=CasignGroup,
    epilog="Environment: " + "; ".join(f"{name}: {what}" for name, what in ENVIRONMENT.items()),
)
@click.version_option(package_name="casign")
def main() -> None:
    """casign: a certificate authority that signs server and client certificates from a queue."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--root-cn", default="casign Root CA", show_default=True)
@click.option(
    "--intermediate-cn",
    default=None,
    help="The intermediate's commonName [default: 'casign Intermediate CA' and the CA's tag,"
    " the first 12 hex digits of its key's SHA-256, also in its queue and key prefix].",
)
@click.option("--org", default=None, help="organizationName of both CA certificates.")
@click.option("--country", default=None, help="Two-letter countryName of both CA certificates.")
@click.option(
    "--key-type",
    type=click.Choice(["rsa2048", "rsa3072", "rsa4096", "p256", "p384"]),
    default="rsa4096",
    show_default=True,
)
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the intermediate key (AES-256) with the passphrase in this file (mode 0600 "
    "or stricter), which casign.toml names; also the root key's, without --root-passphrase-file.",
)
@click.option(
    "--root-passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Encrypt the root key with the passphrase in this file instead: read once, written "
    "nowhere. Then move ca/private/ca.key.pem to offline media.",
)
@click.option(
    "--intermediate-key-uri",
    default=None,
    help="Make the intermediate key inside a PKCS#11 token: pkcs11:token=..;object=..?pin-source=..",
)
@click.option(
    "--base-url",
    default=None,
    help="Where the CRL, OCSP responder and CA certificate are served (http://pki.example.com); "
    "the tls_server profile names them.",
)
def init(
    directory: Path,
    root_cn: str,
    intermediate_cn: str | None,
    org: str | None,
    country: str | None,
    key_type: str,
    passphrase_file: Path | None,
    root_passphrase_file: Path | None,
    intermediate_key_uri: str | None,
    base_url: str | None,
) -> None:
    """Make a new root and intermediate CA in DIRECTORY, laid out as the OpenSSL CA guide does."""
    from keystore import KeyType
    from worker.cafolder import CAOptions, init_ca

    if country is not None and len(country) != 2:
        fail("--country takes a two-letter code, such as GB")
    folder = init_ca(
        directory,
        CAOptions(
            root_cn=root_cn,
            intermediate_cn=intermediate_cn,
            organization=org,
            country=country,
            key_type=KeyType(key_type),
            passphrase_file=passphrase_file,
            root_passphrase_file=root_passphrase_file,
            intermediate_key_uri=intermediate_key_uri,
            base_url=base_url,
        ),
    )
    if passphrase_file is None and root_passphrase_file is None:
        unencrypted = "the root key is" if intermediate_key_uri else "the CA keys are"
        click.secho(
            f"warning: {unencrypted} NOT encrypted (files are mode 0400); use --passphrase-file "
            "and --root-passphrase-file to encrypt them, and --intermediate-key-uri to keep the "
            "intermediate key in an HSM",
            fg="yellow",
            err=True,
        )
    elif root_passphrase_file is None:
        click.secho(
            "warning: the root key is encrypted with the intermediate's passphrase, whose file "
            "casign.toml names; give it one of its own with --root-passphrase-file",
            fg="yellow",
            err=True,
        )
    click.echo(f"root CA:         {folder.root_cert_path}")
    click.echo(f"intermediate CA: {folder.intermediate_cert_path}")
    click.echo(f"chain:           {folder.chain_path}")
    click.echo(f"profiles:        {folder.profiles_path}")
    click.echo(f"openssl config:  {folder.openssl_cnf_path}")
    names = folder_names(folder.root)
    click.echo(f"queue:           {names.queue}")
    click.echo(f"key prefix:      {names.store_prefix}")
    click.echo("next:")
    click.echo(
        f"  move the root key {folder.root_key_path} to offline media (casign worker refuses "
        "to start beside it)"
    )
    click.echo(
        f"  list who may ask for certificates: casign producer add NAME --ca {directory} (a "
        "signer without producers.toml starts only with --open, serving anyone)"
    )
    click.echo(f"  start a signer: casign worker --ca {directory}")


@main.command()
@ca_option
@store_option
@click.option("--profile", default="server_cert", show_default=True)
@click.option("--days", type=int, default=None, help="Validity in days (default: the profile's).")
@click.option(
    "--san", multiple=True, help="DNS:name, IP:address, email:address or URI:uri; repeatable."
)
@click.option("--job-id", default=None, help="Idempotency key (default: a new one).")
@click.argument("csr", type=click.File("r"))
@click.option("-o", "--out", "out", type=click.Path(path_type=Path, dir_okay=False), required=True)
def sign(
    ca: Path | None,
    store: str | None,
    profile: str,
    days: int | None,
    san: tuple[str, ...],
    job_id: str | None,
    csr: Any,
    out: Path,
) -> None:
    """Sign one CSR in this process (no queue), record it in the store, write the certificate."""
    import uuid

    from worker.authority import load_authority
    from worker.issuance import BatchSigner

    folder = ca_dir(ca)
    endpoints = resolve_endpoints("unused://", store, folder)
    authority = load_authority(folder)
    job = {
        "job_id": job_id or uuid.uuid4().hex,
        "csr_pem": csr.read(),
        "profile": profile,
        "san": split_sans(san),
    }
    if days is not None:
        job["days"] = days
    with open_store(endpoints) as results_store:
        results_store.set_chain(authority.chain_pem)
        (result,) = BatchSigner(authority, results_store).sign_batch([job])
    if not result.ok or result.certificate_pem is None:
        fail(f"refused [{result.code}]: {result.message}", 3)
        return
    write_certificate(out, result.certificate_pem)
    from worker.cafolder import CAFolder

    click.echo(f"certificate: {out} (serial {result.serial}, job {job['job_id']})")
    click.echo(f"chain:       {CAFolder(folder).chain_path}")


@main.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
def inspect(path: Path) -> None:
    """Show a certificate or CSR (PEM or DER) as `openssl x509 -text` / `req -text` would;
    given a CA folder, its intermediate, identity, queue and key prefix."""
    from casign.inspect import describe_ca_folder, describe_file

    if path.is_dir():
        problem = ca_folder_problem(path)
        if problem is not None:
            fail(problem.sentence("give a certificate, a CSR or the folder `casign init` made"))
        click.echo(describe_ca_folder(path, ca_names(path)))
        return
    try:
        click.echo(describe_file(path.read_bytes()))
    except ValueError:
        fail(f"{path} holds no PEM or DER certificate or CSR")


@main.group()
def index() -> None:
    """The OpenSSL CA database (index.txt) kept in the store."""


@index.command("export")
@ca_option
@store_option
@click.option("-o", "--out", "out", type=click.Path(path_type=Path, dir_okay=False), default=None)
def index_export(ca: Path | None, store: str | None, out: Path | None) -> None:
    """Write index.txt as `openssl ca` writes it (expired entries read E); stdout by default."""
    from core.index import IndexEntry

    endpoints = resolve_endpoints("unused://", store, ca_dir(ca))
    now = datetime.now(UTC)
    with open_store(endpoints) as results_store:
        lines = [
            IndexEntry.from_openssl_line(line).to_openssl_line(now)
            for line in results_store.index_lines()
        ]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        click.echo(text, nl=False)
    else:
        write_file_atomically(out, text, PUBLIC_MODE)
        click.echo(f"{len(lines)} entries written to {out}", err=True)


@main.command()
@ca_option
@broker_option
@store_option
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--pool", type=click.Choice(["prefork", "solo"]), default="prefork", show_default=True
)
@click.option(
    "--beat",
    is_flag=True,
    help="Also make a new CRL every hour, on this worker's own schedule (never on a queue "
    "message); several such workers of one store make one CRL an hour between them. (Every "
    "worker, --beat or not, renews the OCSP delegate's certificate.)",
)
@click.option(
    "--open",
    "open_mode",
    is_flag=True,
    help="Serve any producer that can reach the queue when the CA has no producers.toml "
    "(otherwise the worker refuses to start without it).",
)
@click.option(
    "--allow-root-key",
    is_flag=True,
    help="Start even though the root CA's private key is readable in the CA folder.",
)
@click.option(
    "--restart/--no-restart",
    default=True,
    show_default=True,
    help="Start the Celery worker again (backing off 1 s to 30 s) when it dies, "
    "e.g. on a broker connection loss; --no-restart runs it in this process.",
)
def worker(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    concurrency: int | None,
    loglevel: str,
    pool: str,
    beat: bool,
    open_mode: bool,
    allow_root_key: bool,
    restart: bool,
) -> None:
    """Run a signing worker: the only process that opens the intermediate key.

    It refuses to start (exit 2) without the CA's producers.toml unless --open, and while the
    root CA's private key is readable in the CA folder unless --allow-root-key.
    """
    from worker.cafolder import CAFolder
    from worker.process import refuse_unsafe_start

    folder = ca_dir(ca).absolute()
    endpoints = resolve_endpoints(broker, store, folder)
    CAFolder(folder).require()
    refuse_unsafe_start(CAFolder(folder), open_mode=open_mode, allow_root_key=allow_root_key)
    flags = WorkerFlags(concurrency, loglevel, pool, beat, open_mode, allow_root_key)
    if restart:
        sys.exit(_supervised_worker(folder, endpoints, flags))
    from worker.access import listed_producer_names
    from worker.app import WorkerConfig, run_worker
    from worker.authority import load_authority
    from worker.process import SignerSettings

    authority = load_authority(folder)  # fail here, with a clear message, not in every process
    _check_producers_file(folder, authority.intermediate, endpoints.queue)
    if open_mode and not CAFolder(folder).producers_path.exists():
        logging.getLogger("casign.worker").warning(
            "open mode (--open): %s is absent, so any producer that can reach queue %s is served",
            CAFolder(folder).producers_path,
            endpoints.queue,
        )
    elif open_mode:
        logging.getLogger("casign.worker").warning(
            "--open has no effect: %s lists the producers served", CAFolder(folder).producers_path
        )
    config = WorkerConfig(
        broker_url=endpoints.broker_url,
        signer=SignerSettings(
            folder, endpoints.store_url, endpoints.store_prefix, open_mode=open_mode
        ),
        queue=endpoints.queue,
        crl_schedule=beat,
        producers=listed_producer_names(CAFolder(folder).producers_path),
    )
    _log_queues(config.queues)  # a name that cannot name a queue stops the worker here (exit 2)
    options = [f"--loglevel={loglevel}", f"--pool={pool}"]
    if concurrency:
        options.append(f"--concurrency={concurrency}")
    with embedded_redis(endpoints):
        with open_store(endpoints) as results_store:
            results_store.require_fit()  # refuses an evicting store (exit 2), warns of no persistence
        _claim_store(authority.intermediate, endpoints)
        status = run_worker(config, options)
    sys.exit(status)


def _log_queues(queues: tuple[str, ...]) -> None:
    """Say which queues the worker takes from, in turn: the CA's, then each producer's."""
    logging.getLogger("casign.worker").info(
        "consuming %d queue(s) in turn: %s", len(queues), ", ".join(queues)
    )


def _check_producers_file(folder: Path, intermediate: x509.Certificate, queue: str) -> None:
    """A producers.toml the worker cannot use stops it here (exit 2), naming the entry."""
    from core.auth import ca_identity
    from worker.access import AccessPolicy
    from worker.cafolder import CAFolder

    AccessPolicy.load(CAFolder(folder).producers_path, ca_identity(intermediate), queue)


def _claim_store(intermediate: x509.Certificate, endpoints: Endpoints) -> None:
    """Record this CA in the store before any producer seals a message for it; refuse
    (exit 2) a store another CA owns. A store down now is waited out by the worker itself."""
    from worker.process import claim_store

    try:
        with open_store(endpoints) as results_store:
            claim_store(intermediate, results_store)
    except Retryable as exc:
        logging.getLogger("casign.worker").warning("store not reachable at start: %s", exc)


@dataclass(frozen=True)
class WorkerFlags:
    """The `casign worker` flags a supervised worker is started again with."""

    concurrency: int | None
    loglevel: str
    pool: str
    beat: bool
    open_mode: bool
    allow_root_key: bool

    def arguments(self) -> list[str]:
        """The flags as `casign worker` arguments (never a URL: those go in the environment)."""
        words = ["--loglevel", self.loglevel, "--pool", self.pool]
        if self.concurrency:
            words += ["--concurrency", str(self.concurrency)]
        for flag, given in (
            ("--beat", self.beat),
            ("--open", self.open_mode),
            ("--allow-root-key", self.allow_root_key),
        ):
            if given:
                words.append(flag)
        return words


def _supervised_worker(folder: Path, endpoints: Endpoints, flags: WorkerFlags) -> int:
    """`casign worker --no-restart` in a child process, started again whenever it dies.

    The broker and store URLs reach the child in its environment, never on its command line,
    which any user of the host can read (`ps`, /proc/PID/cmdline) and which may hold passwords.
    """
    from casign.safe_path import python_command
    from casign.supervise import Supervisor

    command = [*python_command(), "-m", "casign", "worker", "--no-restart", "--ca", str(folder)]
    env = {
        **os.environ,
        "CASIGN_BROKER_URL": endpoints.broker_url,
        "CASIGN_STORE_URL": endpoints.store_url,
        "CASIGN_STORE_PREFIX": endpoints.store_prefix,
        "CASIGN_QUEUE": endpoints.queue,
    }
    with embedded_redis(endpoints):  # held across the worker's restarts, which join it too
        return Supervisor([*command, *flags.arguments()], env=env).run()


@main.command()
@ca_option
@store_option
def recover(ca: Path | None, store: str | None) -> None:
    """Sign and publish the jobs a crashed worker reserved but never published."""
    from core.auth import ca_identity
    from core.queue import SIGN_QUEUE
    from worker.access import AccessPolicy
    from worker.authority import load_authority
    from worker.cafolder import CAFolder
    from worker.issuance import BatchSigner

    folder = ca_dir(ca)
    authority = load_authority(folder)
    # Recovery admits each record again as the producer it names, with that producer's rights
    # in producers.toml now (the queue is only for authenticating messages, which it reads none).
    access = AccessPolicy.load(
        CAFolder(folder).producers_path, ca_identity(authority.intermediate), SIGN_QUEUE
    )
    endpoints = resolve_endpoints("unused://", store, folder)
    with open_store(endpoints) as results_store:
        recovered = BatchSigner(authority, results_store, access).recover_pending()
    click.echo(f"{len(recovered)} job(s) recovered")
    for result in recovered:
        click.echo(f"  {result.job_id}: serial {result.serial}")


@main.group()
def audit() -> None:
    """The hash-chained audit log of every decision (issued, refused, revoked)."""


@audit.command("verify")
@ca_option
@store_option
def audit_verify(ca: Path | None, store: str | None) -> None:
    """Recompute the chain; exit 1 naming the first line that was altered or removed."""
    from core.audit import verify_chain

    with open_store(resolve_endpoints("unused://", store, ca_dir(ca))) as results_store:
        check = verify_chain(results_store.audit_entries(), results_store.audit_head())
    if not check.ok:
        fail(f"audit log broken at line {check.first_bad}: {check.problem}")
    click.echo(f"audit log intact: {check.lines} lines")


@audit.command("show")
@ca_option
@store_option
@click.option(
    "--last",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many lines, newest last.",
)
def audit_show(ca: Path | None, store: str | None, last: int) -> None:
    """Print the newest audit lines (JSON, one a line)."""
    with open_store(resolve_endpoints("unused://", store, ca_dir(ca))) as results_store:
        entries = list(results_store.audit_entries())
    for entry in entries[len(entries) - last :] if last else []:
        click.echo(entry.partition(" ")[2])


def _register_other_commands() -> None:
    from casign.cli_airgap import COMMANDS as AIRGAP_COMMANDS
    from casign.cli_est import est
    from casign.cli_lifecycle import COMMANDS as LIFECYCLE_COMMANDS
    from casign.cli_observe import COMMANDS as OBSERVE_COMMANDS
    from casign.cli_producer import collect, request, status, submit
    from casign.cli_producers_admin import COMMANDS as ACCESS_COMMANDS
    from casign.demo import demo

    for command in (submit, request, collect, status, demo, est, *LIFECYCLE_COMMANDS):
        main.add_command(command)
    for command in (*ACCESS_COMMANDS, *AIRGAP_COMMANDS, *OBSERVE_COMMANDS):
        main.add_command(command)


_register_other_commands()
