"""The EST server (RFC 7030) on aiohttp: /.well-known/est/[<label>/]<operation>.

| operation      | method | who                                  | answer                        |
|----------------|--------|--------------------------------------|-------------------------------|
| cacerts        | GET    | anyone (4.1.1)                       | the CA chain, certs-only      |
| csrattrs       | GET    | anyone (4.5.1)                       | the label's CSR attributes    |
| simpleenroll   | POST   | a listed client (Basic or TLS cert)  | the certificate, certs-only   |
| simplereenroll | POST   | the holder of a casign certificate   | the successor, certs-only     |
| serverkeygen   | POST   | a listed client                      | multipart: PKCS#8 key, cert   |

A refusal is `text/plain` `CODE: sentence` with its status (see `est.refusals`); a job still
signing after `wait_seconds` is `202 Accepted` with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from aiohttp import web
from cryptography import x509

from core.auth import read_secret
from core.errors import ConfigurationError, Retryable
from core.errors import RefusalCode as Code
from est.admission import Admission, EstClient
from est.batching import Batcher, Identity
from est.csrattrs import csr_attributes
from est.enrollment import Enrollments, StillPending
from est.labels import LabelCatalog
from est.reenroll import check_same_names, current_certificate, enrolling_client
from est.refusals import EstRefusal
from est.settings import EstSettings, server_cert_path, server_key_path
from est.transport import BoundedSite, server_tls_context
from est.wire import (
    CERTS_ONLY_TYPE,
    CSRATTRS_TYPE,
    MAX_BODY_BYTES,
    certs_only,
    check_content_type,
    decode_base64,
    parse_csr,
    private_key_pkcs8,
    serverkeygen_body,
    wrap_base64,
)
from producers import Producer
from store.results import ResultsStore

log = logging.getLogger("casign.est")

BASE_PATH = "/.well-known/est"
_METHODS = {
    "cacerts": "GET",
    "csrattrs": "GET",
    "simpleenroll": "POST",
    "simplereenroll": "POST",
    "serverkeygen": "POST",
}
_HTTP_ERROR_CODES = {
    404: (Code.EST_UNKNOWN_OPERATION, "no such EST operation"),
    405: (Code.EST_METHOD_NOT_ALLOWED, "method not allowed"),
    413: (Code.CSR_TOO_LARGE, f"the request body is over {MAX_BODY_BYTES} bytes"),
}


@dataclass(frozen=True)
class SignerEndpoints:
    """Where the signer is: the broker its queue is on, the store, the prefix and queue."""

    broker_url: str
    store_url: str
    store_prefix: str = "casign"
    queue: str = "casign.sign"

    def producer(self, identity: Identity) -> Producer:
        return Producer(
            self.broker_url,
            self.store_url,
            store_prefix=self.store_prefix,
            queue=self.queue,
            identity=identity.producer,
            secret_source=identity.secret_source,
        )


def _refusal_response(refusal: EstRefusal) -> web.Response:
    return web.Response(
        status=refusal.status,
        text=refusal.body(),
        content_type="text/plain",
        headers=refusal.headers,
    )


def _base64_response(body: bytes, content_type: str) -> web.Response:
    response = web.Response(body=body, headers={"Content-Transfer-Encoding": "base64"})
    response.headers["Content-Type"] = content_type
    return response


@web.middleware
async def _answer_refusals(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure becomes a status and a stable code; a stack trace only reaches the log."""
    try:
        return await handler(request)
    except EstRefusal as refusal:
        return _refusal_response(refusal)
    except StillPending as pending:
        return web.Response(
            status=202,
            text=f"the certificate is being signed; ask again in {pending.retry_after} s\n",
            headers={"Retry-After": str(pending.retry_after)},
        )
    except web.HTTPException as exc:
        if exc.status not in _HTTP_ERROR_CODES:
            raise
        code, sentence = _HTTP_ERROR_CODES[exc.status]
        return _refusal_response(EstRefusal(code, sentence, status=exc.status))
    except (Retryable, redis.RedisError) as exc:
        log.warning("EST request failed on the store: %s", exc)
        return _refusal_response(
            EstRefusal(
                Code.EST_UNAVAILABLE,
                "the certificate store is unavailable; retry later",
                headers={"Retry-After": "5"},
            )
        )
    except Exception:
        log.exception("EST request %s %s failed", request.method, request.path)
        return _refusal_response(
            EstRefusal(Code.EST_INTERNAL_ERROR, "the server failed on this request")
        )


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The TLS client certificate of the request's connection, if it sent one."""
    transport = request.transport
    tls = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(tls, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


class EstService:
    """The EST application: routes, authentication, and enrollment through the batcher."""

    def __init__(
        self,
        settings: EstSettings,
        catalog: LabelCatalog,
        chain: list[x509.Certificate],
        store: ResultsStore,
        batcher: Batcher,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.intermediate = chain[0]
        self.admission = Admission(settings)
        self.store = store
        self.batcher = batcher
        self.enrollments = Enrollments(batcher, settings.server)
        self._cacerts = certs_only(chain)
        self._csrattrs = {
            label: wrap_base64(csr_attributes(catalog.profile(label))) for label in catalog.labels
        }

    @property
    def client_issuers(self) -> list[x509.Certificate]:
        """What TLS accepts client certificates from: the intermediate and listed issuers."""
        return [self.intermediate, *self.admission.issuer_certificates]

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_answer_refusals])
        app.router.add_route("*", BASE_PATH + "/{operation}", self.handle)
        app.router.add_route("*", BASE_PATH + "/{label}/{operation}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info["operation"]
        method = _METHODS.get(operation)
        if method is None:
            raise EstRefusal(
                Code.EST_UNKNOWN_OPERATION,
                f"{operation!r} is not an EST operation ({', '.join(_METHODS)})",
            )
        label = self.catalog.profile(request.match_info.get("label")).name
        if request.method != method:
            raise EstRefusal(
                Code.EST_METHOD_NOT_ALLOWED,
                f"{operation} takes {method}, not {request.method}",
                headers={"Allow": method},
            )
        if operation == "cacerts":
            return _base64_response(self._cacerts, CERTS_ONLY_TYPE)
        if operation == "csrattrs":
            return _base64_response(self._csrattrs[label], CSRATTRS_TYPE)
        peer = peer_certificate(request)
        if operation == "simplereenroll":
            return await self._reenroll(request, label, peer)
        client = await self.admission.authenticate(request.headers.get("Authorization"), peer)
        self.admission.admit(client, label)
        csr = await self._read_csr(request)
        if operation == "serverkeygen":
            key, certificate = await self.enrollments.serverkeygen(client, label, csr)
            body, content_type = serverkeygen_body(private_key_pkcs8(key), certificate)
            response = web.Response(body=body)
            response.headers["Content-Type"] = content_type
            return response
        certificate = await self.enrollments.enroll(client, label, csr, "simpleenroll")
        return _base64_response(certs_only([certificate]), CERTS_ONLY_TYPE)

    async def _reenroll(
        self, request: web.Request, label: str, peer: x509.Certificate | None
    ) -> web.StreamResponse:
        current = current_certificate(peer, self.intermediate)
        name = await asyncio.to_thread(enrolling_client, self.store, current)
        entry = self.admission.clients.get(name)
        if entry is None:
            raise EstRefusal(
                Code.EST_CERTIFICATE_UNKNOWN,
                f"the EST client {name!r} this certificate was enrolled by is no longer listed",
            )
        client = EstClient(name, entry, "certificate")
        self.admission.admit(client, label)
        csr = await self._read_csr(request)
        check_same_names(csr, current)
        serial = current.serial_number.to_bytes(20, "big")
        certificate = await self.enrollments.enroll(client, label, csr, "simplereenroll", serial)
        return _base64_response(certs_only([certificate]), CERTS_ONLY_TYPE)

    async def _read_csr(self, request: web.Request) -> x509.CertificateSigningRequest:
        check_content_type(request.headers.get("Content-Type", ""))
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise EstRefusal(Code.CSR_TOO_LARGE, f"the request body is over {MAX_BODY_BYTES} bytes")
        try:
            if request.content.is_eof():  # all there already, as a small body usually is
                body = await request.read()
            else:
                async with asyncio.timeout(self.settings.server.body_timeout_seconds):
                    body = await request.read()
        except TimeoutError:
            raise EstRefusal(
                Code.EST_REQUEST_TIMEOUT, "the request body did not arrive in time"
            ) from None
        return parse_csr(decode_base64(body))


def load_chain(ca_root: Path, store: ResultsStore) -> list[x509.Certificate]:
    """The CA chain, intermediate first: from the store, else the CA folder's chain file."""
    pem = store.chain()
    if pem is None:
        path = ca_root / "intermediate" / "certs" / "ca-chain.cert.pem"
        try:
            pem = path.read_text(encoding="ascii")
        except OSError:
            raise ConfigurationError(
                f"no CA chain in the store and none at {path}; start a worker first"
            ) from None
    chain = x509.load_pem_x509_certificates(pem.encode("ascii"))
    if not chain:
        raise ConfigurationError("the CA chain holds no certificate")
    return chain


def build_service(
    ca_root: Path, settings: EstSettings, endpoints: SignerEndpoints, store: ResultsStore
) -> EstService:
    """The service for the CA at `ca_root`; every secret source is read once here to fail early."""
    for name, entry in settings.clients.items():
        if entry.secret is not None:
            try:
                read_secret(entry.secret)
            except ConfigurationError as exc:
                raise ConfigurationError(f"EST client {name!r}: {exc}") from None
    catalog = LabelCatalog.load(ca_root, settings.server)
    batcher = Batcher(endpoints.producer, settings.server)
    return EstService(settings, catalog, load_chain(ca_root, store), store, batcher)


async def run_server(
    service: EstService,
    ca_root: Path,
    host: str,
    port: int,
    on_ready: Callable[[str, int], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then finish open requests and stop."""
    server = service.settings.server
    context = server_tls_context(
        server_cert_path(ca_root), server_key_path(ca_root), service.client_issuers
    )
    runner = web.AppRunner(
        service.application(),
        access_log=None,
        keepalive_timeout=server.idle_timeout_seconds,
        handle_signals=False,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    gc.freeze()  # what is loaded by now lives as long as the server: the collector skips it
    site = BoundedSite(runner, host, port, context, server.max_connections)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):  # not in the main thread
            loop.add_signal_handler(signum, stop.set)
    try:
        await site.start()
        on_ready(host, site.port)
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(service.batcher.close)
