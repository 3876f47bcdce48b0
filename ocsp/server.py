"""The responder over HTTP (RFC 6960 appendix A.1, RFC 5019 5-6), on aiohttp's low-level server.

GET `{any prefix}/{url-encoded base64 of the DER request}` (certificates carry
`http://host/ocsp`, so GET arrives as `/ocsp/MEIw...`) and POST of the DER request to any path.
Bounded: at most `max_connections` connections are open (one more is closed at once); a request
must arrive whole within `request_timeout` seconds of the connection opening or of the previous
answer (aiohttp closes a connection still without a complete request at its keep-alive timeout,
and the body is read under the same limit); bodies over MAX_REQUEST_BYTES are refused.
While it listens, its figures are written to the store every second under `host:port`
(`ocsp.figures`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from core.errors import ConfigurationError
from ocsp.responder import Answer, OCSPResponder
from ocsp.response import MALFORMED_REQUEST
from store.figures_board import DEFAULT_TTL_SECONDS, FiguresPublisher, host_port_name

log = logging.getLogger("casign.ocsp")

MAX_REQUEST_BYTES = 16 * 1024  # a one-certificate request is ~100 bytes; each more adds ~80
MAX_PREFIX_SEGMENTS = 8  # path segments before the base64 that a GET may carry
MAX_LINE_BYTES = 4096  # the request line, hence a GET's base64 (RFC 5019 5: POST above 255)
OCSP_REQUEST_TYPE = "application/ocsp-request"
OCSP_RESPONSE_TYPE = "application/ocsp-response"
LINGERING_SECONDS = 1.0
SERVER_NAME = "casign-ocsp"
_SEQUENCE = 0x30


@dataclass(frozen=True)
class ServerLimits:
    """How many connections may be open at once, and how long a request may take to arrive."""

    max_connections: int = 1024
    request_timeout: float = 10.0


def _is_one_der_sequence(data: bytes) -> bool:
    """Whether `data` is exactly one DER SEQUENCE by its header (what an OCSPRequest is)."""
    if len(data) < 2 or data[0] != _SEQUENCE:
        return False
    if data[1] < 0x80:
        return 2 + data[1] == len(data)
    octets = data[1] & 0x7F
    if not 1 <= octets <= 4 or len(data) < 2 + octets:
        return False
    return 2 + octets + int.from_bytes(data[2 : 2 + octets], "big") == len(data)


def request_from_path(raw_path: str) -> bytes | None:
    """The DER request a GET path carries after any prefix, or None (RFC 6960 A.1).

    The base64 may itself hold `/`, so each way of splitting prefix from request is tried,
    shortest prefix first, and the first that decodes to one whole DER SEQUENCE is taken.
    """
    segments = raw_path.partition("?")[0].split("/")
    for start in range(1, min(len(segments), MAX_PREFIX_SEGMENTS + 2)):
        text = urllib.parse.unquote("/".join(segments[start:]))
        if not text.startswith("M"):  # base64 of a SEQUENCE (0x30) starts with M
            continue
        try:
            der = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            continue
        if _is_one_der_sequence(der):
            return der
    return None


async def _request_body(request: web.BaseRequest) -> bytes | None:
    """The body, or None when it is empty or larger than MAX_REQUEST_BYTES."""
    if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
        return None
    body = bytearray()
    while chunk := await request.content.read(MAX_REQUEST_BYTES + 1 - len(body)):
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            return None
    return bytes(body) or None


class _HttpLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log: a client's malformed HTTP (answered 400) is one line, no traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            self.info("bad HTTP request: %s", exc_info.message)
        else:
            self.error(msg, *args, exc_info=exc_info, **kwargs)


class _Refuse(asyncio.Protocol):
    """A connection past the limit: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class _ConnectionLimit:
    """aiohttp's protocol factory, handing out at most `limit` live connections."""

    def __init__(self, server: web.Server, limit: int) -> None:
        self.server = server
        self.limit = limit

    def __call__(self) -> asyncio.BaseProtocol:
        if len(self.server.connections) >= self.limit:
            log.warning("OCSP: %d connections open, one more refused", self.limit)
            return _Refuse()
        return self.server()


class OCSPHandler:
    """The one HTTP handler: GET or POST in, an OCSP response (always status 200) out."""

    def __init__(self, responder: OCSPResponder, limits: ServerLimits) -> None:
        self.responder = responder
        self.limits = limits

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "GET":
            answer = await self._answer(request_from_path(request.raw_path))
            return self._response(answer, cacheable=True)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "GET, POST"})
        try:
            async with asyncio.timeout(self.limits.request_timeout):
                body = await _request_body(request)
        except TimeoutError:
            body = None
            log.info(
                "OCSP: a request body took over %s s; connection closed",
                self.limits.request_timeout,
            )
        response = self._response(await self._answer(body), cacheable=False)
        if body is None:
            response.force_close()  # what is left of the body is not read
        return response

    async def _answer(self, der: bytes | None) -> Answer:
        return await self.responder.answer(der) if der else Answer(MALFORMED_REQUEST)

    def _response(self, answer: Answer, cacheable: bool) -> web.Response:
        headers = {"Content-Type": OCSP_RESPONSE_TYPE, "Server": SERVER_NAME}
        if cacheable and answer.max_age is not None:  # RFC 5019 6.2: until it is renewed
            headers["Cache-Control"] = (
                f"max-age={answer.max_age}, public, no-transform, must-revalidate"
            )
        return web.Response(body=answer.body, headers=headers)


async def serve(
    responder: OCSPResponder,
    host: str,
    port: int,
    stop: asyncio.Event,
    ready: Callable[[str, int], None],
    limits: ServerLimits | None = None,
    figures_ttl: float = DEFAULT_TTL_SECONDS,
) -> None:
    """Answer on host:port until `stop` is set; `ready(host, port)` once listening. The
    figures written meanwhile lapse `figures_ttl` seconds after the last write.

    A port that cannot be had is a ConfigurationError naming it.
    """
    limits = limits or ServerLimits()
    async with responder.running():
        http = web.Server(
            OCSPHandler(responder, limits),
            keepalive_timeout=limits.request_timeout,
            max_line_size=MAX_LINE_BYTES,
            # After an answer to a body cut short, what is left of it is read for at most this
            # long (so the answer is not lost to a reset), then the connection is closed.
            lingering_time=LINGERING_SECONDS,
            access_log=None,
            logger=_HttpLog(logging.getLogger("casign.ocsp.http")),
        )
        loop = asyncio.get_running_loop()
        try:
            listener = await loop.create_server(
                _ConnectionLimit(http, limits.max_connections), host, port
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"port {port} on {host} is in use by another program; choose another --port"
                ) from None
            raise ConfigurationError(
                f"cannot listen on {host} port {port}: {exc.strerror or exc}"
            ) from None
        try:
            bound = listener.sockets[0].getsockname()
            publisher = FiguresPublisher(
                responder.store.ocsp_figures,
                host_port_name(int(bound[1])),
                lambda: responder.figures().to_json(),
                figures_ttl,
                whose="the OCSP responder's",
            )
            async with publisher.running():
                ready(str(bound[0]), int(bound[1]))
                await stop.wait()
        finally:
            listener.close()
            await http.shutdown(timeout=2.0)
            await listener.wait_closed()
