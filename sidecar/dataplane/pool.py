"""The data plane's upstream HTTP/1.1 client: a keep-alive pool per endpoint.

``UpstreamPool`` owns the connections to one ``UpstreamAddress``; ``request()`` sends a
head the caller serialized (the pool adds no header, follows no redirect, decodes
nothing) and returns an ``UpstreamResponse`` once the response head is parsed. The
wire protocol lives in ``upstream_protocol``; this module decides which connection to
use and what happens to it afterwards.

Pool theory of operation
------------------------
* Idle connections sit in ``_idle``, a stack ordered by ``idle_since``: ``request()``
  pops the most recently used one (the one least likely to have hit the server's
  keep-alive timeout) and discards any that died while idle; the oldest sit at the
  bottom, where one timer per pool (``sweep_idle``) closes those idle for
  ``idle_timeout``. No timer is created per request.
* A connection is "active" from checkout until its response is released or aborted,
  or ``request()`` fails. ``release()`` pools it only when reusable (see
  ``upstream_protocol``) and the pool holds fewer than ``max_idle``.
* A reused connection that ends before any response byte (the server closed it while
  it was idle, and we had not noticed yet) raises ``StaleConnection`` (an
  ``UpstreamReset``). The pool never retries: whether to replay, and on which
  connection (``fresh=True`` skips the idle ones), is the proxy's attempt loop's
  decision (``sidecar.core.retry``).
* Cancellation (the caller's ``asyncio.timeout``) anywhere in ``request()`` or
  ``read()`` aborts the connection; it is never pooled again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable

from sidecar.config.model import UpstreamTLS
from sidecar.core.addresses import UpstreamAddress
from sidecar.dataplane.connection import UpstreamConnection, UpstreamResponse
from sidecar.dataplane.tls import client_context
from sidecar.errors import UpstreamConnectError

__all__ = ["UpstreamPool", "UpstreamResponse"]


class UpstreamPool:
    """Keep-alive connections to one endpoint (one UpstreamAddress).

    connect_timeout: seconds for TCP connect plus TLS handshake; exceeding it is an
        ``UpstreamConnectError`` (the request never reached the upstream).
    max_idle: idle connections kept; more are closed on release.
    idle_timeout: seconds an idle connection is kept before it is closed.
    tls: the cluster's TLS settings for ``https`` endpoints (CA file, SNI name,
        verification); kept as ``pool.tls`` so that a reload can tell whether they changed.
    ssl_context, server_name: explicit TLS context and SNI name instead of ``tls``
        (tests and tools); a default verifying context and the address's host if None.
    """

    def __init__(self, address: UpstreamAddress, *, connect_timeout: float,
                 max_idle: int = 64, idle_timeout: float = 60.0,
                 tls: UpstreamTLS | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 server_name: str | None = None) -> None:
        self.address = address
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        #: The TLS settings the pool was built with (compared on reload).
        self.tls = tls
        self._ssl: ssl.SSLContext | None = None
        if address.scheme == "https":
            if ssl_context is None:
                ssl_context = (client_context(tls) if tls is not None
                               else ssl.create_default_context())
            self._ssl = ssl_context
            if server_name is None and tls is not None:
                server_name = tls.server_name
        self._server_name = server_name or address.host
        self._idle: list[UpstreamConnection] = []
        self._active = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None

    def configure(self, *, connect_timeout: float, max_idle: int, idle_timeout: float) -> None:
        """New cluster settings (a config reload): used from the next connect, release or
        sweep on; connections open now are kept."""
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def active_count(self) -> int:
        return self._active

    @property
    def closed(self) -> bool:
        return self._closed

    async def request(self, head: bytes, body: bytes | AsyncIterator[bytes] | None = None, *,
                      chunked: bool = False, head_request: bool = False,
                      fresh: bool = False,
                      connected: Callable[[], None] | None = None) -> UpstreamResponse:
        """Send ``head`` (and ``body``) and return the response once its head is parsed.

        Raises UpstreamConnectError (the request never left), StaleConnection (a reused
        connection was already closed: the request never reached the application),
        UpstreamReset or UpstreamProtocolError (also when the framing breaks in the
        same read as the head: the caller has not committed to anything yet).
        ``fresh``: open a new connection instead of reusing an idle one.
        ``connected``: called once a new connection is open (not for a reused one):
        the caller's "waiting for a connection" is over.
        A streamed ``body`` stops being pulled once a final response arrives (e.g. an
        early 413); closing the iterator is the caller's business.
        """
        conn = None if fresh else self._checkout()
        if conn is None:
            conn = await self._connect()
            if connected is not None:
                connected()
        return await conn.roundtrip(head, body, chunked, head_request)

    def close(self) -> None:
        """Close idle connections now; connections in use are closed when released."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def sweep_idle(self, now: float | None = None) -> None:
        """Close connections idle since ``now - idle_timeout`` or earlier (tests pass now)."""
        if self._loop is None:
            return
        if now is None:
            now = self._loop.time()
        deadline = now - self._idle_timeout
        idle = self._idle
        expired = 0
        for conn in idle:  # oldest first
            if conn.idle_since > deadline:
                break
            expired += 1
        if expired:
            closing = idle[:expired]
            del idle[:expired]
            for conn in closing:
                conn.close()

    # ------------------------------------------------------------ internals

    def _checkout(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable():
                conn.in_use = True
                self._active += 1
                return conn
            conn.close()  # closed by the peer while idle and not yet reaped
        return None

    async def _connect(self) -> UpstreamConnection:
        if self._closed:
            raise UpstreamConnectError()
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        address = self.address
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop), address.host, address.port,
                    ssl=self._ssl, server_hostname=self._server_name if self._ssl else None)
        except OSError as exc:  # refused, unreachable, DNS, TLS (SSLError), TimeoutError
            error = UpstreamConnectError()
            error.__cause__ = exc  # also by hand: compiled, `from` loses it in a coroutine
            raise error from exc
        conn.in_use = True
        self._active += 1
        return conn

    def _checkin(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Called once per checkout, by the response's release()/abort() or a failure."""
        self._active -= 1
        if not reusable or self._closed or len(self._idle) >= self._max_idle:
            conn.abort()
            return
        assert self._loop is not None
        now = self._loop.time()
        conn.make_idle(now)
        self._idle.append(conn)
        if self._sweep_handle is None:
            self._sweep_handle = self._loop.call_at(now + self._idle_timeout, self._on_sweep)

    def _on_sweep(self) -> None:
        self._sweep_handle = None
        self.sweep_idle()
        if self._idle and self._loop is not None and not self._closed:
            when = self._idle[0].idle_since + self._idle_timeout
            self._sweep_handle = self._loop.call_at(when, self._on_sweep)

    def _lost(self, conn: UpstreamConnection) -> None:
        """An idle connection was closed by the peer: forget it now."""
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def __repr__(self) -> str:
        return (f"<UpstreamPool {self.address.url} idle={len(self._idle)} "
                f"active={self._active}>")
