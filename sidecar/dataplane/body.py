"""A request body that may have to be sent more than once.

Whether a try may be repeated is decided in one place, `sidecar.core.retry`
(`replay_refusal`, from the `BodyReplay` state); this module only keeps the bytes
that make a repeat possible and reports which state the body is in:

* no body: `NONE`;
* a small body of known length, read whole before the first try: `BUFFERED`;
* a streamed body (chunked, or larger than `BUFFER_REQUEST_BODY`): `UNREAD` until a
  try pulls from it; then every chunk is kept while the total stays within
  `keep_bytes` (`retry.retry_buffer_bytes`): `KEPT`; past it the kept chunks are
  dropped and the body is `LOST`: the bytes already sent cannot be sent again,
  so the first answer stands.

A repeat of a `KEPT` body sends the kept chunks, then goes on reading the client's
stream where the failed try left it (the try may have failed before the client
finished sending).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sidecar.core.retry import BodyReplay

__all__ = ["BUFFER_REQUEST_BODY", "RequestBody"]

# Bodies of known length up to this size are read whole before forwarding: one write
# upstream, and the request stays replayable.
BUFFER_REQUEST_BODY = 64 * 1024


class RequestBody:
    """The body of one proxied request, for one or more tries.

    source: the client's body as it arrives (None for a whole or absent body).
    whole: the body when it was read whole (or None).
    keep_bytes: how much of a streamed body is kept for a repeat.
    """

    __slots__ = ("_source", "_whole", "_keep", "_kept", "_kept_bytes", "state")

    def __init__(self, *, whole: bytes | None = None,
                 source: AsyncIterator[bytes] | None = None, keep_bytes: int = 0) -> None:
        self._whole = whole
        self._source = source
        self._keep = keep_bytes
        self._kept: list[bytes] = []
        self._kept_bytes = 0
        self.state = (BodyReplay.UNREAD if source is not None
                      else BodyReplay.BUFFERED if whole else BodyReplay.NONE)

    def for_try(self) -> bytes | AsyncIterator[bytes] | None:
        """What the next try sends. For a streamed body, a new iterator over the kept
        chunks and the rest of the stream."""
        if self._source is None:
            return self._whole
        return _TryBody(self, self._source)

    def _sent(self, chunk: bytes) -> None:
        """A chunk of the client's stream went to a try: keep it for a repeat while the
        total stays within `keep_bytes`."""
        if self.state is not BodyReplay.LOST:
            self._kept_bytes += len(chunk)
            if self._kept_bytes <= self._keep:
                self._kept.append(chunk)
                self.state = BodyReplay.KEPT
            else:
                self._kept.clear()  # past the limit: keeping the rest is pointless
                self.state = BodyReplay.LOST


class _TryBody:
    """One try's body: the chunks earlier tries sent, then the client's stream from
    where they left it. (A class, not an async generator: mypyc compiles classes.)"""

    __slots__ = ("_body", "_repeat", "_next", "_source")

    def __init__(self, body: RequestBody, source: AsyncIterator[bytes]) -> None:
        self._body = body
        self._repeat = tuple(body._kept)  # a repeat: what earlier tries sent
        self._next = 0
        self._source = source.__aiter__()

    def __aiter__(self) -> _TryBody:
        return self

    async def __anext__(self) -> bytes:
        index = self._next
        if index < len(self._repeat):
            self._next = index + 1
            return self._repeat[index]
        chunk = await self._source.__anext__()  # StopAsyncIteration at the end
        self._body._sent(chunk)
        return chunk
