"""`casign metrics` and `casign top`: what the signers are doing, read from the store."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import click

from casign.cli_base import broker_option, ca_option, open_store, store_option
from casign.config import Endpoints, known_ca_folder, resolve_endpoints
from casign.figures import Reading, read_figures
from casign.queue_view import QueueView
from core.errors import ConfigurationError
from core.queue import consumed_queues


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=9464, show_default=True)
def metrics(ca: Path | None, broker: str | None, store: str | None, host: str, port: int) -> None:
    """Serve the signers' figures at http://HOST:PORT/metrics for Prometheus.

    The signer opens no port: workers add their counts to the store, and this process (which
    needs only read rights) reads them on each scrape.
    """
    endpoints = resolve_endpoints(broker, store, ca, need_broker=False)
    queues = queue_views(endpoints, known_ca_folder(ca, endpoints))
    with open_store(endpoints) as results_store:
        from casign.metrics_server import serve

        click.echo(f"casign metrics: serving http://{host}:{port}/metrics", err=True)
        serve(lambda: read_figures(results_store, queues), host, port)


@click.command()
@ca_option
@broker_option
@store_option
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True)
@click.option("--once", is_flag=True, help="Print one reading and exit (for scripts and logs).")
def top(
    ca: Path | None, broker: str | None, store: str | None, interval: float, once: bool
) -> None:
    """A live view of the signers: rate, queue, refusals by code, time per step, workers."""
    from rich.console import Console
    from rich.live import Live

    from casign.top import render

    endpoints = resolve_endpoints(broker, store, ca, need_broker=False)
    queues = queue_views(endpoints, known_ca_folder(ca, endpoints))
    title = f"casign top: queue {endpoints.queue}, store prefix {endpoints.store_prefix}"
    with open_store(endpoints) as results_store:
        read: Callable[[], Reading] = lambda: read_figures(results_store, queues)  # noqa: E731
        if once:
            Console().print(render(read(), None, title))
            return
        previous = read()
        with (
            contextlib.suppress(KeyboardInterrupt),
            Live(render(previous, None, title), auto_refresh=False) as live,
        ):
            while True:
                time.sleep(interval)
                reading = read()
                live.update(render(reading, previous, title), refresh=True)
                previous = reading


def queue_views(endpoints: Endpoints, folder: Path | None) -> list[QueueView]:
    """The CA's queue and each producer's own that its producers.toml lists (the ones its
    workers consume); without a CA folder, the CA's queue only."""
    from casign.producers_file import read_producers

    names: list[str] = []
    if folder is not None:
        with contextlib.suppress(ConfigurationError, OSError):
            names = list(read_producers(folder / "intermediate" / "producers.toml"))
    return [
        QueueView(endpoints.broker_url, queue) for queue in consumed_queues(endpoints.queue, names)
    ]


COMMANDS = (metrics, top)
