"""The EST server's TLS and its listening socket: TLS 1.2+, optional client certificates,
a bound on open connections, and a time limit on each handshake."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from core.errors import ConfigurationError
from core.errors import RefusalCode as Code

log = logging.getLogger("casign.est")

HANDSHAKE_TIMEOUT = 10.0  # seconds a client has to finish the TLS handshake
_BACKLOG = 512


def server_tls_context(
    cert_path: Path, key_path: Path, client_issuers: Sequence[x509.Certificate]
) -> ssl.SSLContext:
    """TLS 1.2 or later with the server's certificate; a client certificate is asked for,
    not required, and is accepted only when one of `client_issuers` issued it directly."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except FileNotFoundError as exc:
        raise ConfigurationError(
            f"{exc.filename} is missing; issue the EST server's certificate first with "
            "`casign est cert --ca DIR --cn NAME`"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the EST server's certificate: {exc}") from None
    context.verify_mode = ssl.CERT_OPTIONAL
    # The issuers are trust anchors in their own right, whether or not they are roots.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    pem = "".join(
        issuer.public_bytes(serialization.Encoding.PEM).decode("ascii") for issuer in client_issuers
    )
    context.load_verify_locations(cadata=pem)
    return context


class ServerTls:
    """The server's TLS context, replaceable while serving: the listening socket keeps one
    context, whose server-name callback (called for every handshake, with or without SNI)
    hands the connection the current one. A reload thus changes which client issuers are
    trusted, and the server's own certificate, for every handshake that follows."""

    def __init__(
        self, cert_path: Path, key_path: Path, client_issuers: Sequence[x509.Certificate]
    ) -> None:
        self.cert_path, self.key_path = cert_path, key_path
        self.current = server_tls_context(cert_path, key_path, client_issuers)
        self.listening = server_tls_context(cert_path, key_path, client_issuers)
        self.listening.sni_callback = self._hand_over

    def _hand_over(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self.current

    def replace(self, client_issuers: Sequence[x509.Certificate]) -> None:
        """Read the certificate and key again and trust `client_issuers` from now on."""
        self.current = server_tls_context(self.cert_path, self.key_path, client_issuers)


class _Busy(asyncio.Protocol):
    """Answers a connection over the limit with a 503 and closes it."""

    BODY = f"{Code.EST_UNAVAILABLE}: the server has too many connections; retry later\n".encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Retry-After: 1\r\nConnection: close\r\n"
            + f"Content-Length: {len(self.BODY)}\r\n\r\n".encode()
            + self.BODY
        )
        transport.close()


class BoundedSite(web.BaseSite):
    """A TLS site that keeps at most `max_connections` connections open at once."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        max_connections: int,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=_BACKLOG)
        self._host = host
        self._port = port
        self._max_connections = max_connections
        self._listening: asyncio.Server | None = None
        self.refused = 0

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port (the one asked for until the site has started)."""
        if self._listening is not None and self._listening.sockets:
            return int(self._listening.sockets[0].getsockname()[1])
        return self._port

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max_connections:
                self.refused += 1
                return _Busy()
            return server()

        self._server = self._listening = await asyncio.get_running_loop().create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,
            reuse_address=True,
        )
