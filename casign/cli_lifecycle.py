"""`casign revoke`, `crl`, `ocsp`, `ocsp-cert`, `adopt` and `list`: the rest of a certificate's life.

`revoke` goes through the queue (the worker signs it off, within the producer's rights), or
with `--in-process` straight into the store as the operator; `crl`, `ocsp-cert` and `adopt` run
in this process with the CA folder, as `casign sign` does for an operator at the CA's machine;
`ocsp` serves from the store with the delegate key only; `list` reads the store.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import click

from casign.cli_base import (
    broker_option,
    ca_option,
    fail,
    figures_ttl_option,
    open_store,
    progress_bar,
    store_option,
)
from casign.config import ca_dir, resolve_endpoints
from core.errors import Rejected
from core.files import PUBLIC_MODE, write_file_atomically
from core.index import IndexEntry, format_serial
from core.revocation import REVOKE_REASONS
from store.results import ResultsStore
from store.revocations import RevocationStore

if TYPE_CHECKING:
    from worker.cafolder import CAFolder

_DURATION_UNITS = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
}


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `2w`, `90m` or a bare number of days."""
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:]) if text else None
    number = text[:-1] if unit else text
    if not (number.isascii() and number.isdigit()):
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h or 2w")
    return int(number) * (unit or _DURATION_UNITS["d"])


def _refused(exc: Rejected) -> None:
    fail(f"refused [{exc.code}]: {exc.message}", 3)


def _entry_row(entry: IndexEntry, now: datetime) -> str:
    fields = entry.to_openssl_line(now).split("\t")
    return "\t".join((fields[3], fields[0], fields[1], fields[2] or "-", fields[5]))


@click.command()
@ca_option
@broker_option
@store_option
@click.argument("serial")
@click.option(
    "--reason",
    default="unspecified",
    show_default=True,
    help="RFC 5280 reason: " + ", ".join(REVOKE_REASONS) + ".",
)
@click.option("--requester", default=None, help="Who asks (kept in the audit log).")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option(
    "--in-process",
    is_flag=True,
    help="Revoke as the operator, straight into the store with the CA folder (no queue, no "
    "producer rights): the only way to revoke the OCSP responder's certificate.",
)
def revoke(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    serial: str,
    reason: str,
    requester: str | None,
    timeout: float,
    in_process: bool,
) -> None:
    """Revoke SERIAL (hex) through the queue; the worker records it for the CRL and OCSP."""
    from casign.cli_producer import open_producer

    if in_process:
        _revoke_as_operator(ca, store, serial, reason, requester)
        return
    try:
        with open_producer(ca, broker, store, requester) as producer:
            result = producer.revoke(serial, reason, timeout)
    except Rejected as exc:
        _refused(exc)
        return
    except TimeoutError as exc:
        fail(str(exc), 2)
        return
    if not result.ok:
        fail(f"refused [{result.code}]: {result.message}", 3)
        return
    click.echo(f"revoked {result.serial} at {result.revoked_at} ({result.reason})")


def _revoke_as_operator(
    ca: Path | None, store: str | None, serial: str, reason: str, requester: str | None
) -> None:
    """Revoke in this process, with the CA folder and the store's operator credentials."""
    from worker.cafolder import CAFolder
    from worker.process import claim_store

    folder = CAFolder(ca_dir(ca))
    folder.require()
    endpoints = resolve_endpoints("unused://", store, folder.root, need_broker=False)
    with open_store(endpoints) as results_store:
        claim_store(folder.intermediate_certificate(), results_store)  # refuses another CA's
        try:
            entry = RevocationStore(results_store).revoke(
                serial, reason, requester=requester or "operator"
            )
        except Rejected as exc:
            _refused(exc)
            return
        _bring_folder_in_step(folder, results_store)
    fields = entry.to_openssl_line().split("\t")
    click.echo(f"revoked {fields[3]} at {fields[2].partition(',')[0]} ({entry.revocation_reason})")


def _bring_folder_in_step(folder: CAFolder, results_store: ResultsStore) -> None:
    """index.txt marks the revocation now, not at a worker's next look (there may be none)."""
    from worker.folder_sync import FolderBound, index_sync_enabled, log_report, sync_folder

    if not index_sync_enabled(folder):
        return
    try:
        report = sync_folder(folder, results_store)
    except (FolderBound, OSError) as exc:
        click.echo(f"warning: {folder.index_path} not updated: {exc}", err=True)
    else:
        if report is not None:
            log_report(report)


@click.command()
@ca_option
@store_option
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The file to write (stdout by default); with crl_shards, FILE-K.EXT for each shard K.",
)
@click.option("--der", is_flag=True, help="Write DER instead of PEM.")
def crl(ca: Path | None, store: str | None, out: Path | None, der: bool) -> None:
    """Sign a new CRL in this process with the CA key, publish it, write it (stdout by default).

    With `crl_shards = N` in casign.toml every shard is written: `-o crl.pem` writes
    crl-0.pem ... crl-(N-1).pem (stdout: the N PEM CRLs one after the other). The CA folder's
    crl/ gets intermediate.crl.pem/.der, or intermediate-K.crl.pem/.der per shard, either way.
    Workers run with --beat also make one every hour, on their own schedule.
    """
    from worker.authority import load_authority
    from worker.cafolder import CAFolder
    from worker.crl_schedule import refresh_crl

    folder = ca_dir(ca)
    endpoints = resolve_endpoints("unused://", store, folder)
    authority = load_authority(folder)
    if der and out is None:
        fail("--der needs -o FILE (DER is binary)")
    with open_store(endpoints) as results_store:
        published = refresh_crl(CAFolder(folder), authority, RevocationStore(results_store))
    for each in published:
        data = each.der if der else each.pem
        if out is None:
            click.echo(data.decode("ascii"), nl=False)
        else:
            target = out if each.shard is None else shard_path(out, each.shard)
            write_file_atomically(target, data, PUBLIC_MODE)
        part = "" if each.shard is None else f" shard {each.shard}"
        click.echo(
            f"CRL {each.number}{part}: {each.entries} revoked, made in {each.seconds:.2f} s",
            err=True,
        )


def shard_path(out: Path, shard: int) -> Path:
    """`crl.pem` -> `crl-3.pem`: where `casign crl -o` writes shard 3."""
    return out.with_name(f"{out.stem}-{shard}{out.suffix}")


@click.command("ocsp-cert")
@ca_option
@store_option
@click.option("--force", is_flag=True, help="Issue a new one even if the current one is fine.")
def ocsp_cert(ca: Path | None, store: str | None, force: bool) -> None:
    """Issue or renew the OCSP responder's delegated certificate (needs the CA key)."""
    from worker.authority import load_authority
    from worker.cafolder import CAFolder
    from worker.ocsp_delegate import ensure_ocsp_certificate

    folder = ca_dir(ca)
    endpoints = resolve_endpoints("unused://", store, folder)
    authority = load_authority(folder)
    with open_store(endpoints) as results_store:
        delegate = ensure_ocsp_certificate(CAFolder(folder), authority, results_store, force=force)
    serial = format_serial(delegate.certificate.serial_number)
    state = "issued" if delegate.issued else "still valid"
    click.echo(
        f"OCSP certificate {serial} {state}, until {delegate.certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    click.echo(f"certificate: {delegate.cert_path}")
    click.echo(f"key:         {delegate.key_path}")


@click.command()
@ca_option
@store_option
@click.option("--port", type=int, required=True, help="TCP port (0 picks a free one).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--validity",
    default="4d",
    show_default=True,
    help="How long each answer is valid (thisUpdate to nextUpdate): 8h to 10d (BR 4.9.10).",
)
@click.option(
    "--cache-mb",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Memory kept for pre-signed answers.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=1024,
    show_default=True,
    help="Open connections at once; more are closed.",
)
@figures_ttl_option
def ocsp(
    ca: Path | None,
    store: str | None,
    port: int,
    host: str,
    validity: str,
    cache_mb: int,
    max_connections: int,
    figures_ttl: float,
) -> None:
    """Serve OCSP (RFC 6960, GET and POST) for the intermediate, from the store."""
    import asyncio
    import signal

    from ocsp.lifetime import ResponseLifetime
    from ocsp.responder import OCSPResponder
    from ocsp.server import ServerLimits, serve

    try:
        lifetime = ResponseLifetime(parse_duration(validity))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--validity") from None
    folder = ca_dir(ca).absolute()
    endpoints = resolve_endpoints("unused://", store, folder)

    def ready(bound_host: str, bound_port: int) -> None:
        click.echo(f"OCSP responder on http://{bound_host}:{bound_port}", err=True)
        sys.stderr.flush()

    async def run(results_store: ResultsStore) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        responder = OCSPResponder(folder, results_store, lifetime, cache_bytes=cache_mb << 20)
        limits = ServerLimits(max_connections)
        await serve(responder, host, port, stop, ready, limits, figures_ttl)

    with open_store(endpoints) as results_store:
        asyncio.run(run(results_store))


@click.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@store_option
@click.option(
    "--passphrase-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The intermediate key's passphrase file (named in casign.toml as its pin-source).",
)
def adopt(directory: Path, store: str | None, passphrase_file: Path | None) -> None:
    """Take over a CA folder made by the guide's openssl commands: its index into the store."""
    from worker.adopt import adopt_ca

    endpoints = resolve_endpoints("unused://", store, directory)
    with open_store(endpoints) as results_store, progress_bar() as progress:
        task = progress.add_task("adopting index entries", total=None)
        report = adopt_ca(
            directory,
            results_store,
            passphrase_file,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    statuses = ", ".join(f"{count} {status}" for status, count in sorted(report.statuses.items()))
    click.echo(f"adopted {report.entries} index entries ({statuses or 'none'})")
    if report.already_present:
        click.echo(f"{report.already_present} entries were in the store already")
    click.echo(
        f"{report.certificates} certificates stored; next CRL number {report.next_crl_number} "
        f"(crlnumber {format_serial(report.next_crl_number)})"
    )
    for path in report.written:
        click.echo(f"wrote {path}")
    for warning in report.warnings:
        click.secho(f"warning: {warning}", fg="yellow", err=True)


@click.command("list")
@ca_option
@store_option
@click.option("--expiring", default=None, help="Valid certificates expiring within, e.g. 30d.")
@click.option("--revoked", is_flag=True, help="Revoked certificates, latest first.")
def list_certificates(
    ca: Path | None, store: str | None, expiring: str | None, revoked: bool
) -> None:
    """List certificates from the store: serial, status, expiry, revocation, subject."""
    if (expiring is None) == (not revoked):
        fail("give exactly one of --expiring DURATION or --revoked")
    now = datetime.now(UTC)
    endpoints = resolve_endpoints("unused://", store, ca_dir(ca))
    with open_store(endpoints) as results_store:
        revocations = RevocationStore(results_store)
        if expiring is not None:
            try:
                window = parse_duration(expiring)
            except ValueError as exc:
                fail(str(exc))
                return
            entries = revocations.expiring(window, now)
            horizon = now + window
            title = f"{len(entries)} valid certificate(s) expire by {horizon:%Y-%m-%d %H:%M} UTC"
        else:
            entries = [IndexEntry.from_openssl_line(line) for line in revocations.revoked_lines()]
            entries.sort(key=lambda e: (e.revoked_at or now, e.serial), reverse=True)
            title = f"{len(entries)} revoked certificate(s)"
    click.echo(title, err=True)
    for entry in entries:
        click.echo(_entry_row(entry, now))


COMMANDS = (revoke, crl, ocsp_cert, ocsp, adopt, list_certificates)
