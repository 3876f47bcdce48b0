"""An OCSP responder serving from a thread of the test process (its counters stay in reach)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from ocsp.lifetime import ResponseLifetime
from ocsp.responder import OCSPResponder
from ocsp.server import ServerLimits, serve
from store.results import ResultsStore

POLL_SECONDS = 0.2
_T = TypeVar("_T")


class RunningResponder:
    """A responder serving on 127.0.0.1 from an event loop in a thread of its own."""

    def __init__(self, responder: OCSPResponder, limits: ServerLimits) -> None:
        self.responder = responder
        self.limits = limits
        self.port = 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await serve(self.responder, "127.0.0.1", 0, self._stop, self._bound, self.limits)

    def _bound(self, host: str, port: int) -> None:
        self.port = port
        self._ready.set()

    def call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run `coroutine` on the responder's loop (its cache belongs to that thread)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def __enter__(self) -> RunningResponder:
        self._thread.start()
        assert self._ready.wait(timeout=30), "the responder did not start"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)


def running_responder(
    ca_root: Path,
    store: ResultsStore,
    lifetime: ResponseLifetime | None = None,
    limits: ServerLimits | None = None,
) -> RunningResponder:
    """A responder for the CA at `ca_root` polling every POLL_SECONDS; use it with `with`."""
    responder = OCSPResponder(ca_root, store, lifetime, poll_interval=POLL_SECONDS)
    return RunningResponder(responder, limits or ServerLimits())
