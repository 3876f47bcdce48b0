"""`casign airgap`: an air-gapped signer fed by files, its queue carried out and back by hand.

online   casign airgap export --ca DIR --out requests.tar     (the relay: queue -> bundle)
offline  casign airgap sign requests.tar --ca DIR --out results.tar   (the CA key signs)
online   casign airgap import results.tar --ca DIR            (answers the producers)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from casign.cli_base import broker_option, ca_option, fail, open_store, store_option
from casign.config import ca_dir, ca_names, resolve_endpoints
from core.errors import ConfigurationError

if TYPE_CHECKING:
    from cryptography import x509

_MAX_BYTES_HELP = "Split bundles at this many bytes (default 64 MiB)."
_DEFAULT_MAX_BYTES = 64 * 2**20


@click.group()
def airgap() -> None:
    """An air-gapped signer: the queue carried on files, signed both ways, exactly once."""


@airgap.command("export")
@ca_option
@broker_option
@store_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option(
    "--again",
    type=click.IntRange(min=1),
    default=None,
    help="Make request bundle N again (lost in transit) from its unanswered batches.",
)
@click.option(
    "--max-bytes", type=click.IntRange(min=4096), default=_DEFAULT_MAX_BYTES, help=_MAX_BYTES_HELP
)
@click.option(
    "--producer",
    "producers",
    multiple=True,
    help="A producer whose own queue to take from (repeat; default: those the CA folder's "
    "producers.toml lists).",
)
def airgap_export(
    ca: Path | None,
    broker: str | None,
    store: str | None,
    out: Path,
    again: int | None,
    max_bytes: int,
    producers: tuple[str, ...],
) -> None:
    """Take the waiting batches off the queue (the CA's and each producer's own) and write
    them as a request bundle."""
    from casign.producers_file import read_producers
    from core.auth import ca_identity
    from producers.airgap_relay import Relay, export_again, export_bundles, unanswered_bundles

    folder = ca_dir(ca)
    endpoints = resolve_endpoints(broker, store, folder)
    intermediate = _online_intermediate(folder)
    with open_store(endpoints) as results_store:
        relay = Relay(
            endpoints.broker_url,
            endpoints.queue,
            results_store,
            ca_identity(intermediate),
            folder / "airgap",
            max_bytes,
            ca_name=intermediate.subject.rfc4514_string(),
            producers=producers
            or tuple(read_producers(folder / "intermediate" / "producers.toml")),
        )
        if again is not None:
            export_again(relay, again, out)
            click.echo(f"request bundle {again} made again: {out}")
            return
        older = unanswered_bundles(relay)
        written = export_bundles(relay, out)
    if not written:
        click.echo("no batch waits in the queue; no bundle written")
    for path in written:
        click.echo(f"request bundle written: {path}")
    if older:
        click.echo(
            f"still unanswered: request bundle(s) {', '.join(map(str, older))} "
            "(`casign airgap export --again N` makes one again)"
        )


@airgap.command("sign")
@click.argument("bundle", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@ca_option
@store_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True)
@click.option(
    "--max-bytes", type=click.IntRange(min=4096), default=_DEFAULT_MAX_BYTES, help=_MAX_BYTES_HELP
)
@click.option(
    "--open",
    "open_mode",
    is_flag=True,
    help="Sign for any producer when the CA folder has no producers.toml.",
)
def airgap_sign(
    bundle: Path, ca: Path | None, store: str | None, out: Path, max_bytes: int, open_mode: bool
) -> None:
    """On the offline signer: check a request bundle, sign it, write the results bundle."""
    from core.auth import ca_identity
    from worker.access import AccessPolicy
    from worker.airgap import sign_bundle
    from worker.authority import load_authority
    from worker.cafolder import CAFolder
    from worker.issuance import BatchSigner
    from worker.process import claim_store, open_mode_refusal

    folder = ca_dir(ca)
    relay_key = folder / "airgap" / "relay.key"
    if not relay_key.is_file():
        raise ConfigurationError(
            f"{relay_key} is missing: copy the online relay's airgap/relay.key (made by its "
            "first `casign airgap export`) to this CA folder, on removable media, once"
        )
    authority = load_authority(folder)
    access = AccessPolicy.load(
        CAFolder(folder).producers_path, ca_identity(authority.intermediate), ca_names(folder).queue
    )
    if access is None and not open_mode:
        fail(open_mode_refusal(CAFolder(folder)), 2)
    endpoints = resolve_endpoints("unused://", store, folder, need_broker=False)
    with open_store(endpoints) as results_store:
        claim_store(authority.intermediate, results_store)
        results_store.set_chain(authority.chain_pem)
        signer = BatchSigner(authority, results_store, access.for_airgap() if access else None)
        report = sign_bundle(signer, bundle, out, folder / "airgap", max_bytes)
    if report.gap:
        click.secho(
            f"warning: request bundle(s) {', '.join(map(str, report.gap))} were never signed "
            "here (lost in transit? the relay makes one again with `export --again N`)",
            fg="yellow",
            err=True,
        )
    what = "answered again from the records" if report.answered_before else "signed"
    click.echo(
        f"request bundle {report.sequence} {what}: {report.batches} batch(es), "
        f"{report.issued} issued, {report.refused} refused"
        + (f", {report.recovered} recovered after a crash" if report.recovered else "")
    )
    for path in report.results:
        click.echo(f"results bundle written: {path}")


@airgap.command("import")
@click.argument(
    "results", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False, exists=True)
)
@ca_option
@store_option
def airgap_import(results: tuple[Path, ...], ca: Path | None, store: str | None) -> None:
    """Check results bundles against this CA folder's certificate and answer the producers."""
    from core.auth import ca_identity
    from producers.airgap_relay import Relay, import_results

    folder = ca_dir(ca)
    intermediate = _online_intermediate(folder)
    endpoints = resolve_endpoints("unused://", store, folder, need_broker=False)
    with open_store(endpoints) as results_store:
        relay = Relay(
            "unused://",
            endpoints.queue,
            results_store,
            ca_identity(intermediate),
            folder / "airgap",
            chain_pem=(folder / "intermediate" / "certs" / "ca-chain.cert.pem").read_text(),
            ca_name=intermediate.subject.rfc4514_string(),
        )
        for path in results:
            report = import_results(relay, path, intermediate)
            if report.already:
                click.echo(f"{path}: imported before; nothing changed")
                continue
            click.echo(
                f"{path}: {report.batches} batch(es) answered ({report.issued} issued, "
                f"{report.refused} refused, {report.revoked} revoked)"
                + (f", {report.skipped} answered before" if report.skipped else "")
            )


def _online_intermediate(folder: Path) -> x509.Certificate:
    from cryptography import x509

    from core.layout import ca_folder_problem, intermediate_cert_path

    problem = ca_folder_problem(folder)
    if problem is not None:
        raise ConfigurationError(problem.sentence("give --ca the CA folder (its certificates)"))
    return x509.load_pem_x509_certificate(intermediate_cert_path(folder).read_bytes())


COMMANDS = (airgap,)
