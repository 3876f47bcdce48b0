"""What every `casign` command shares: the --ca/--store/--broker options, output, the store."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from casign.config import Endpoints
from core.files import CERT_MODE, write_file_atomically
from store.results import ResultsStore

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    click.secho(f"casign: {message}", fg="red", err=True)
    sys.exit(code)


def split_sans(values: tuple[str, ...]) -> list[str]:
    """`--san DNS:a,IP:1.2.3.4 --san email:x@y` as one list."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def write_certificate(path: Path, pem: str) -> None:
    """Write a certificate 0444, replacing an older file of the same name (never through a link)."""
    write_file_atomically(path, pem, CERT_MODE)


def embedded_redis(endpoints: Endpoints) -> contextlib.AbstractContextManager[object]:
    """The CA folder's embedded Redis, joined (or started) for the block, when the endpoints
    use it; the last process to leave it stops it."""
    if endpoints.embedded_dir is None:
        return contextlib.nullcontext()
    from store.embedded import EmbeddedRedis

    return EmbeddedRedis(endpoints.embedded_dir).running()


@contextlib.contextmanager
def open_store(endpoints: Endpoints) -> Iterator[ResultsStore]:
    """The results store, starting the CA folder's embedded Redis for the command if needed."""
    with embedded_redis(endpoints):
        store = ResultsStore.from_url(endpoints.store_url, endpoints.store_prefix)
        try:
            yield store
        finally:
            store.close()


def ca_option(function: F) -> F:
    return click.option(
        "--ca",
        "ca",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="CA folder made by `casign init` (default $CASIGN_CA_DIR or ./ca).",
    )(function)


def store_option(function: F) -> F:
    return click.option(
        "--store",
        default=None,
        help="Results store URL (default $CASIGN_STORE_URL, else embedded).",
    )(function)


def figures_ttl_option(function: F) -> F:
    """--figures-ttl of a process that writes its figures each second (`casign ocsp`, `est`)."""

    def checked(_context: click.Context, _parameter: click.Parameter, value: float) -> float:
        from core.errors import ConfigurationError
        from store.figures_board import check_ttl

        try:
            return check_ttl(value)
        except ConfigurationError as exc:
            raise click.BadParameter(str(exc)) from None

    return click.option(
        "--figures-ttl",
        type=float,
        default=10.0,
        show_default=True,
        callback=checked,
        help="Seconds the figures written each second (for `casign metrics`) outlive a stop.",
    )(function)


def broker_option(function: F) -> F:
    return click.option(
        "--broker", default=None, help="Broker URL (default $CASIGN_BROKER_URL, else embedded)."
    )(function)


def progress_bar() -> Progress:
    """A bar on stderr for a long job, shown only when stderr is a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    )
