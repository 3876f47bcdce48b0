"""Where a command finds its broker and store: flags, then CASIGN_* variables, then the CA folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigurationError
from core.layout import ca_folder_problem, folder_names
from core.queue import LEGACY_NAMES, QueueNames

ENVIRONMENT = {
    "CASIGN_CA_DIR": "the CA folder made by `casign init` (default ./ca)",
    "CASIGN_BROKER_URL": "Celery broker: redis://, rediss:// or amqp:// (default: the CA's embedded Redis)",
    "CASIGN_STORE_URL": "results store: redis://, rediss:// or unix:// (default: the CA's embedded Redis)",
    "CASIGN_STORE_PREFIX": "prefix of every key casign writes in the store (default: the CA folder's, casign.toml)",
    "CASIGN_QUEUE": "name of the signing queue, one per CA on a shared broker (default: the CA folder's, casign.toml)",
    "CASIGN_VISIBILITY_TIMEOUT": "seconds before a Redis broker redelivers a dead worker's message (default 300)",
    "CASIGN_PKCS11_MODULE": "PKCS#11 library when a pkcs11: URI names no module-path",
    "CASIGN_PRODUCER_ID": "this producer's name in the CA's producers.toml (signs its batches)",
    "CASIGN_PRODUCER_SECRET": "where this producer's HMAC secret is: file:PATH or env:VARIABLE",
}
DEFAULT_CA_DIR = Path("ca")
# Given as the broker by commands that never send a task.
UNUSED_BROKER = "unused://"


@dataclass(frozen=True)
class Endpoints:
    """The broker and the store one command talks to."""

    broker_url: str
    store_url: str
    store_prefix: str
    queue: str
    embedded_dir: Path | None  # set when either is the CA folder's embedded Redis


def ca_dir(flag: Path | None) -> Path:
    return flag or Path(os.environ.get("CASIGN_CA_DIR", DEFAULT_CA_DIR))


def ca_names(folder: Path | None) -> QueueNames:
    """The queue and key prefix: CASIGN_QUEUE and CASIGN_STORE_PREFIX, else the ones the CA
    folder records (core.layout.folder_names), else `casign.sign` and `casign`."""
    recorded = LEGACY_NAMES
    if folder is not None and ca_folder_problem(folder) is None:
        recorded = folder_names(folder)
    return QueueNames(
        os.environ.get("CASIGN_QUEUE") or recorded.queue,
        os.environ.get("CASIGN_STORE_PREFIX") or recorded.store_prefix,
    )


def resolve_endpoints(
    broker: str | None, store: str | None, ca_folder: Path | None, *, need_broker: bool = True
) -> Endpoints:
    """Flags win over CASIGN_* variables; with neither, the CA folder's embedded Redis.

    A wrong CA folder is named first, before the missing broker or store it was to stand for.
    Without `need_broker` a store alone will do (the broker is then UNUSED_BROKER).
    """
    broker_url = broker or os.environ.get("CASIGN_BROKER_URL")
    store_url = store or os.environ.get("CASIGN_STORE_URL")
    if store_url and (broker_url or not need_broker):
        names = ca_names(ca_dir(ca_folder))
        return Endpoints(
            broker_url or UNUSED_BROKER,
            store_url,
            names.store_prefix,
            names.queue,
            _embedded_folder_named(store_url, ca_folder),
        )
    folder = ca_dir(ca_folder)
    problem = ca_folder_problem(folder)
    if problem is not None:
        raise ConfigurationError(
            problem.sentence(
                "give --ca the folder `casign init` made (or set CASIGN_CA_DIR), or name a "
                "broker and store with --broker/--store (CASIGN_BROKER_URL/CASIGN_STORE_URL)"
            )
        )
    from store.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(folder.absolute())
    names = ca_names(folder)
    return Endpoints(
        broker_url or embedded.broker_url,
        store_url or embedded.url,
        names.store_prefix,
        names.queue,
        folder.absolute(),
    )


def _embedded_folder_named(store_url: str, ca_folder: Path | None) -> Path | None:
    """The CA folder whose embedded Redis `store_url` names (a supervised worker is given its
    supervisor's URLs), so that this process too counts as one of its users; else None."""
    if not store_url.startswith("unix://"):
        return None
    folder = ca_dir(ca_folder)
    if ca_folder_problem(folder) is not None:
        return None
    from store.embedded import EmbeddedRedis

    return folder.absolute() if EmbeddedRedis(folder.absolute()).url == store_url else None


def known_ca_folder(flag: Path | None, endpoints: Endpoints) -> Path | None:
    """The CA folder this command is surely about: the embedded Redis's, or one named by
    --ca or CASIGN_CA_DIR; None when only the default ./ca would be a guess."""
    if endpoints.embedded_dir is not None:
        return endpoints.embedded_dir
    if flag is not None:
        problem = ca_folder_problem(flag)
        if problem is not None:
            raise ConfigurationError(problem.sentence("check --ca"))
        return flag.absolute()
    named = os.environ.get("CASIGN_CA_DIR")
    if named and ca_folder_problem(Path(named)) is None:
        return Path(named).absolute()
    return None


def producer_identity() -> tuple[str | None, str | None]:
    """(producer id, secret source) from CASIGN_PRODUCER_ID / CASIGN_PRODUCER_SECRET."""
    identity = os.environ.get("CASIGN_PRODUCER_ID") or None
    secret = os.environ.get("CASIGN_PRODUCER_SECRET") or None
    if (identity is None) != (secret is None):
        raise ConfigurationError(
            "set both CASIGN_PRODUCER_ID and CASIGN_PRODUCER_SECRET, or neither"
        )
    return identity, secret
