"""The EST server (RFC 7030) on aiohttp: /.well-known/est/[<label>/]<operation>.

| operation      | method | who                                  | answer                        |
|----------------|--------|--------------------------------------|-------------------------------|
| cacerts        | GET    | anyone (4.1.1)                       | the CA chain, certs-only      |
| csrattrs       | GET    | anyone (4.5.1)                       | the label's CSR attributes    |
| simpleenroll   | POST   | a listed client (Basic or TLS cert)  | the certificate, certs-only   |
| simplereenroll | POST   | the holder of a casign certificate   | the successor, certs-only     |
| serverkeygen   | POST   | a listed client                      | multipart: key, cert          |

serverkeygen's key is PKCS#8 (encrypted under the client's passphrase, if it has one), or, when
the CSR carries an AsymmetricDecryptKeyIdentifier (RFC 7030 4.4.1.2), sealed to the certificate
it names and signed by this server (`est.key_recipients`, `est.key_envelope`); when it carries a
DecryptKeyIdentifier (4.4.1.1), the same but wrapped under the shared secret it names
(`est.key_secrets`).

A refusal is `text/plain` `CODE: sentence` with its status (see `est.refusals`); a job still
signing after `wait_seconds` is `202 Accepted` with `Retry-After`. Every answer is counted in
memory, and the counts are written to the store once a second (`est.figures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import signal
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import redis
from aiohttp import web
from aiohttp.typedefs import Middleware
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes

from core.auth import read_secret
from core.errors import ConfigurationError, Retryable
from core.errors import RefusalCode as Code
from core.index import format_serial
from core.secret_source import read_secret_source
from est.admission import Admission, EstClient
from est.batching import Batcher, Identity
from est.binding import check_channel_binding
from est.csrattrs import csr_attributes
from est.enrollment import Enrollments, StillPending, identity_of
from est.figures import EstCounts, server_name
from est.key_envelope import KeyEncryptionKey, KeySigner, seal_key
from est.key_recipients import KeyRecipients, requested_key_identifier
from est.key_secrets import KeySecrets, requested_secret_identifier
from est.labels import LabelCatalog
from est.reenroll import check_same_names, current_certificate, enrolling_client
from est.refusals import EstRefusal
from est.reload import SettingsWatcher
from est.settings import EstSettings, server_cert_path, server_key_path, settings_path
from est.transport import BoundedSite, ServerTls
from est.wire import (
    CERTS_ONLY_TYPE,
    CSRATTRS_TYPE,
    MAX_BODY_BYTES,
    MIN_KEY_PASSPHRASE,
    SERVER_GENERATED_KEY_TYPE,
    certs_only,
    certs_only_der,
    check_content_type,
    decode_base64,
    parse_csr,
    private_key_pkcs8,
    serverkeygen_body,
    wrap_base64,
)
from producers import Producer
from producers.trust import TrustAnchor
from store.figures_board import DEFAULT_TTL_SECONDS, FiguresPublisher
from store.results import ResultsStore

log = logging.getLogger("casign.est")

_REVOKE_SECONDS = 30.0
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
    """Where the signer is: the broker its queue is on, the store, the prefix and queue, and the
    root certificate every answer must chain to."""

    broker_url: str
    store_url: str
    store_prefix: str = "casign"
    queue: str = "casign.sign"
    trust_anchor: TrustAnchor | None = None

    def producer(self, identity: Identity) -> Producer:
        return Producer(
            self.broker_url,
            self.store_url,
            store_prefix=self.store_prefix,
            queue=self.queue,
            identity=identity.producer,
            secret_source=identity.secret_source,
            trust_anchor=self.trust_anchor,
        )


# The code of the refusal a request was answered with, for its count (`_counting`).
_REFUSAL_CODE = web.RequestKey("refusal_code", str)


def _refused(request: web.Request, refusal: EstRefusal) -> web.Response:
    request[_REFUSAL_CODE] = refusal.code
    return _refusal_response(refusal)


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
        return _refused(request, refusal)
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
        return _refused(request, EstRefusal(code, sentence, status=exc.status))
    except (Retryable, redis.RedisError) as exc:
        log.warning("EST request failed on the store: %s", exc)
        return _refused(
            request,
            EstRefusal(
                Code.EST_UNAVAILABLE,
                "the certificate store is unavailable; retry later",
                headers={"Retry-After": "5"},
            ),
        )
    except Exception:
        log.exception("EST request %s %s failed", request.method, request.path)
        return _refused(
            request, EstRefusal(Code.EST_INTERNAL_ERROR, "the server failed on this request")
        )


def _counting(counts: EstCounts) -> Middleware:
    """Count each answer by operation and status, and a refusal by its code (outermost, so it
    sees what `_answer_refusals` made of the request)."""

    @web.middleware
    async def count_answers(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        operation = request.match_info.get("operation")
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own answer, passed on as it is
            counts.answered(operation, exc.status, None)
            raise
        counts.answered(operation, response.status, request.get(_REFUSAL_CODE))
        return response

    return count_answers


def tls_object(request: web.Request) -> ssl.SSLObject | None:
    """The TLS session of the request's connection."""
    transport = request.transport
    tls = transport.get_extra_info("ssl_object") if transport is not None else None
    return tls if isinstance(tls, ssl.SSLObject) else None


def peer_certificate(tls: ssl.SSLObject | None) -> x509.Certificate | None:
    """The TLS client certificate of the connection, if it sent one."""
    if tls is None:
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
        endpoints: SignerEndpoints | None = None,
        ca_root: Path | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.intermediate = chain[0]
        self.admission = Admission(settings)
        self.store = store
        self.batcher = batcher
        self.endpoints = endpoints
        self.ca_root = ca_root
        self.tls: ServerTls | None = None
        self.key_signer: KeySigner | None = None  # loaded with the TLS key (run_server)
        self.key_recipients = KeyRecipients(settings)
        self.key_secrets = KeySecrets(settings)
        self.enrollments = Enrollments(batcher, settings.server)
        self.counts = batcher.counts
        self._cacerts = certs_only(chain)
        self._csrattrs = _csrattrs_of(catalog)

    @property
    def client_issuers(self) -> list[x509.Certificate]:
        """What TLS accepts client certificates from: the intermediate and listed issuers."""
        return [self.intermediate, *self.admission.issuer_certificates]

    def reload(self, settings: EstSettings) -> None:
        """Serve `settings` from now on: clients, labels, waiting, re-enrollment; raises
        ConfigurationError (and keeps serving the old ones) when any part of them fails.

        Batching and connection limits are read at start only: a change to them is logged.
        """
        check_client_secrets(settings)
        admission = Admission(settings)
        catalog = self.catalog
        if self.ca_root is not None:
            catalog = LabelCatalog.load(self.ca_root, settings.server)
        csrattrs = _csrattrs_of(catalog)
        key_recipients, key_signer = KeyRecipients(settings), self.key_signer
        key_secrets = KeySecrets(settings)
        if self.tls is not None:
            key_signer = KeySigner.load(self.tls.cert_path, self.tls.key_path)
            self.tls.replace([self.intermediate, *admission.issuer_certificates])
        at_start = [
            name
            for name in _READ_AT_START
            if getattr(settings.server, name) != getattr(self.settings.server, name)
        ]
        if at_start:
            log.warning("est.toml: %s change(s) at the next restart", ", ".join(at_start))
        self.settings, self.admission, self.catalog = settings, admission, catalog
        self.key_recipients, self.key_signer = key_recipients, key_signer
        self.key_secrets = key_secrets
        self._csrattrs = csrattrs
        self.enrollments.settings = settings.server

    def application(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_BODY_BYTES,
            middlewares=[_counting(self.counts), _answer_refusals],
        )
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
        tls = tls_object(request)
        peer = peer_certificate(tls)
        if operation == "simplereenroll":
            return await self._reenroll(request, label, peer, tls)
        client = await self.admission.authenticate(request.headers.get("Authorization"), peer)
        self.admission.admit(client, label)
        csr, der = await self._read_csr(request, client, tls)
        if operation == "serverkeygen":
            return await self._serverkeygen(client, label, csr, peer)
        certificate = await self.enrollments.enroll(client, label, csr, "simpleenroll", der=der)
        return _base64_response(certs_only_der([certificate]), CERTS_ONLY_TYPE)

    async def _serverkeygen(
        self,
        client: EstClient,
        label: str,
        csr: x509.CertificateSigningRequest,
        peer: x509.Certificate | None,
    ) -> web.StreamResponse:
        """RFC 7030 4.4: the key made here, sealed when the CSR asks and its recipient may
        have it (checked before anything is signed), then the certificate."""
        recipient = self._key_recipient(client, csr, peer)
        key, certificate = await self.enrollments.serverkeygen(client, label, csr)
        if recipient is not None:
            signer = self.key_signer
            if signer is None:
                raise EstRefusal(
                    Code.EST_UNAVAILABLE, "this server has no key to sign sealed keys with yet"
                )
            # A sealed key needs no passphrase: only the recipient's key, or the secret, opens it.
            sealed = await asyncio.to_thread(seal_key, private_key_pkcs8(key), recipient, signer)
            body, content_type = serverkeygen_body(sealed, certificate, SERVER_GENERATED_KEY_TYPE)
        else:
            passphrase = None
            if client.entry.key_passphrase is not None:
                passphrase = await asyncio.to_thread(read_key_passphrase, client)
            key_der = private_key_pkcs8(key, passphrase)
            body, content_type = serverkeygen_body(key_der, certificate)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    def _key_recipient(
        self,
        client: EstClient,
        csr: x509.CertificateSigningRequest,
        peer: x509.Certificate | None,
    ) -> x509.Certificate | KeyEncryptionKey | None:
        """What the CSR asks its key sealed to, a certificate (RFC 7030 4.4.1.2) or a shared
        secret (4.4.1.1), if `client` may have it so; None when it asks for neither."""
        key_identifier = requested_key_identifier(csr)
        secret_identifier = requested_secret_identifier(csr)
        if key_identifier is not None and secret_identifier is not None:
            raise EstRefusal(
                Code.EST_KEY_RECIPIENT_AMBIGUOUS,
                "the CSR names both a certificate (AsymmetricDecryptKeyIdentifier) and a shared "
                "secret (DecryptKeyIdentifier) to seal its key to; name one",
            )
        if secret_identifier is not None:
            return self.key_secrets.choose(client, secret_identifier)
        if key_identifier is not None:
            return self.key_recipients.choose(client, key_identifier, peer)
        return None

    async def _reenroll(
        self,
        request: web.Request,
        label: str,
        peer: x509.Certificate | None,
        tls: ssl.SSLObject | None,
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
        csr, der = await self._read_csr(request, client, tls)
        check_same_names(csr, current)
        serial = current.serial_number.to_bytes(20, "big")
        certificate = await self.enrollments.enroll(
            client, label, csr, "simplereenroll", serial, der=der
        )
        revoke = entry.revoke_superseded
        if revoke is None:
            revoke = self.settings.server.revoke_superseded
        if revoke and self.endpoints is not None:
            await asyncio.to_thread(revoke_superseded, self.endpoints, client, current)
        return _base64_response(certs_only_der([certificate]), CERTS_ONLY_TYPE)

    async def _read_csr(
        self, request: web.Request, client: EstClient, tls: ssl.SSLObject | None
    ) -> tuple[x509.CertificateSigningRequest, bytes]:
        """The request's CSR, parsed, and its DER."""
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
        der = decode_base64(body)
        csr = parse_csr(der)
        if client.entry.channel_binding:
            check_channel_binding(csr, tls)
        return csr, der


_READ_AT_START = (
    "batch_window_ms",
    "batch_window_max_ms",
    "batch_max",
    "lanes",
    "max_connections",
    "idle_timeout_seconds",
)


def _csrattrs_of(catalog: LabelCatalog) -> dict[str, bytes]:
    return {label: wrap_base64(csr_attributes(catalog.profile(label))) for label in catalog.labels}


def read_key_passphrase(client: EstClient) -> bytes:
    """The passphrase `client`'s serverkeygen keys are encrypted under (RFC 7030 4.4.2)."""
    source = client.entry.key_passphrase
    assert source is not None
    passphrase = read_secret_source(source, f"key passphrase of EST client {client.name!r}")
    if len(passphrase) < MIN_KEY_PASSPHRASE:
        raise ConfigurationError(
            f"the key passphrase of EST client {client.name!r} is shorter than "
            f"{MIN_KEY_PASSPHRASE} characters; make a random one (openssl rand -hex 32)"
        )
    return passphrase.encode()


def check_client_secrets(settings: EstSettings) -> None:
    """Read every client's secret sources once, so that a missing one fails now, not later."""
    for name, entry in settings.clients.items():
        try:
            if entry.secret is not None:
                read_secret(entry.secret)
            if entry.key_passphrase is not None:
                read_key_passphrase(EstClient(name, entry, "password"))
        except ConfigurationError as exc:
            raise ConfigurationError(f"EST client {name!r}: {exc}") from None


def revoke_superseded(endpoints: SignerEndpoints, client: EstClient, old: x509.Certificate) -> None:
    """Have the signer revoke `old` as superseded, as `client`'s producer (blocking).

    The successor is issued already: a failure here is logged, and the client gets it anyway.
    """
    serial = format_serial(old.serial_number)
    try:
        with endpoints.producer(identity_of(client)) as producer:
            result = producer.revoke(serial, "superseded", timeout=_REVOKE_SECONDS)
    except Exception as exc:
        log.warning("EST: could not revoke superseded certificate %s: %s", serial, exc)
        return
    if result.status != "revoked" and result.code != Code.REVOKE_ALREADY_REVOKED:
        log.warning(
            "EST: superseded certificate %s not revoked [%s]: %s",
            serial, result.code, result.message,
        )  # fmt: skip


def load_chain(
    ca_root: Path, store: ResultsStore, anchor: TrustAnchor | None
) -> list[x509.Certificate]:
    """The CA chain, intermediate first, ending at the trust anchor: from the store, else the
    CA folder's chain file; refused unless each certificate is signed by the next."""
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
    if anchor is None:
        return chain
    root = anchor.root_among(chain)
    if root is None:
        raise ConfigurationError(
            f"the CA chain holds no certificate with the trust anchor's fingerprint {anchor.hex}"
        )
    links = [c for c in chain if c.fingerprint(hashes.SHA256()) != anchor.fingerprint] + [root]
    for child, parent in itertools.pairwise(links):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError):
            raise ConfigurationError(
                f"the CA chain does not lead to the trust anchor: {child.subject.rfc4514_string()} "
                f"is not signed by {parent.subject.rfc4514_string()}"
            ) from None
    return links


def _figures_name(endpoints: SignerEndpoints | None, store: ResultsStore, port: int) -> str:
    """The name of this server's figures: by the Redis user of its store URL (`est.figures`)."""
    if endpoints is None:
        return server_name("", store.prefix, port)
    return server_name(endpoints.store_url, endpoints.store_prefix, port)


def build_service(
    ca_root: Path, settings: EstSettings, endpoints: SignerEndpoints, store: ResultsStore
) -> EstService:
    """The service for the CA at `ca_root`; every secret source is read once here to fail early."""
    check_client_secrets(settings)
    catalog = LabelCatalog.load(ca_root, settings.server)
    batcher = Batcher(endpoints.producer, settings.server)
    chain = load_chain(ca_root, store, endpoints.trust_anchor)
    return EstService(settings, catalog, chain, store, batcher, endpoints, ca_root)


async def run_server(
    service: EstService,
    ca_root: Path,
    host: str,
    port: int,
    on_ready: Callable[[str, int], None],
    stop: asyncio.Event | None = None,
    figures_ttl: float = DEFAULT_TTL_SECONDS,
) -> None:
    """Serve until `stop` is set (or SIGTERM/SIGINT), then finish open requests and stop.

    `est.toml` is read again when it changes, or on SIGHUP (see `est.reload`). The server's
    figures are written every second while it listens, to lapse `figures_ttl` s after the last.
    """
    server = service.settings.server
    service.tls = ServerTls(
        server_cert_path(ca_root), server_key_path(ca_root), service.client_issuers
    )
    service.key_signer = KeySigner.load(server_cert_path(ca_root), server_key_path(ca_root))
    runner = web.AppRunner(
        service.application(),
        access_log=None,
        keepalive_timeout=server.idle_timeout_seconds,
        handle_signals=False,
        shutdown_timeout=5.0,
    )
    await runner.setup()
    gc.freeze()  # what is loaded by now lives as long as the server: the collector skips it
    site = BoundedSite(runner, host, port, service.tls.listening, server.max_connections)
    stop = stop or asyncio.Event()
    watcher = SettingsWatcher(settings_path(ca_root), service.reload)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(RuntimeError, ValueError):  # not in the main thread
            loop.add_signal_handler(signum, stop.set)
    with contextlib.suppress(RuntimeError, ValueError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, watcher.wake)
    watching = asyncio.create_task(watcher.run())
    try:
        await site.start()
        publisher = FiguresPublisher(
            service.store.est_figures,
            _figures_name(service.endpoints, service.store, site.port),
            lambda: service.counts.figures().to_json(),
            figures_ttl,
            whose="the EST server's",
        )
        async with publisher.running():
            on_ready(host, site.port)
            await stop.wait()
    finally:
        watching.cancel()
        await runner.cleanup()
        await asyncio.to_thread(service.batcher.close)
