"""`/events`: WatchStatus as server-sent events, for the status page.

Each stream is a `Watcher` of its own hub (`admin.watch`), so it has WatchStatus's
guarantees and bounds: a snapshot first, then every event after it exactly once; a
browser that reads too slowly has its queue dropped and gets a fresh snapshot, so
memory stays bounded whatever the client does; at most `hub.max_watchers` streams at
once (more get 503). The page's hub is not the gRPC one, so browsers can never use up
the streams that `sidecarctl` and other WatchStatus clients need.

Framing (https://html.spec.whatwg.org/multipage/server-sent-events.html): one
message per WatchStatusResponse,

    id: <sequence>            the snapshot's or the event's sequence number
    event: snapshot | <kind>  the kind is the event's oneof field, e.g. breaker_changed
    data: <JSON>              the WatchStatusResponse as proto JSON, on one line

and a comment line (`: heartbeat`) after `heartbeat` seconds of silence, which keeps
proxies from closing an idle stream and finds out, by failing, when the client has
gone. A stream ends when the client goes away (at once when the server cancels
handlers of lost connections, as the sidecar's does; else at the next write) or the
hub closes (the admin HTTP server shutting down), so shutdown never waits for an open
page.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from sidecar.events import Event

from . import convert
from .watch import TooManyWatchers, WatchHub

__all__ = ["DEFAULT_HEARTBEAT", "DEFAULT_STREAM_QUEUE", "EventStream", "message_dict",
           "sse_frame"]

#: Seconds of silence before a heartbeat comment.
DEFAULT_HEARTBEAT = 15.0
#: Events a stream holds for a slow browser before it is sent a fresh snapshot.
DEFAULT_STREAM_QUEUE = 256


def message_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as proto JSON (camelCase names, enum names, RFC 3339 times),
    every field included: the same shape on the page, in /api and on /events."""
    result: dict[str, Any] = MessageToDict(message, always_print_fields_with_no_presence=True)
    return result


def sse_frame(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    """One server-sent event. Compact JSON has no newline (json escapes those inside
    strings), so `data` is one line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


class EventStream:
    """Serves `/events` from `hub`.

    Parameters:
        hub: where streams are opened (and bounded); closing it ends every stream.
        observe: what was observed of an endpoint now (breaker, health), added to the
            endpoints of each snapshot, as WatchStatus does.
        heartbeat: seconds of silence before a heartbeat comment.
    """

    def __init__(self, hub: WatchHub, observe: convert.ObserveFn, *,
                 heartbeat: float = DEFAULT_HEARTBEAT) -> None:
        self.hub = hub
        self._observe = observe
        self._heartbeat = heartbeat
        #: Streams being served now.
        self.streams = 0
        self._changed = asyncio.Event()

    def _count(self, delta: int) -> None:
        self.streams += delta
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_streams(self, count: int) -> None:
        """Wait until exactly `count` streams are being served."""
        while self.streams != count:
            await self._changed.wait()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            watcher = self.hub.open()
        except TooManyWatchers:
            return web.json_response(
                {"error": {"code": "too_many_streams",
                           "message": f"{self.hub.max_watchers} status page streams are open "
                                      "already; close a page or try later"}},
                status=503, headers={"Retry-After": "10"})
        self._count(+1)
        try:
            response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-store",
                # Buffering proxies (nginx) would hold events back.
                "X-Accel-Buffering": "no",
            })
            await response.prepare(request)
            # The browser's EventSource reconnects 2 s after a stream ends.
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(watcher.next(), self._heartbeat)
                except TimeoutError:
                    await response.write(b": heartbeat\n\n")
                    continue
                if item is None:  # the hub closed: the server is shutting down
                    break
                if isinstance(item, Event) and item.kind not in convert.STREAMED_KINDS:
                    continue
                # Converted at once, with no await since the snapshot was taken, so the
                # endpoints' observed state is of the snapshot's moment.
                message = convert.watch_response(item, self._observe)
                await response.write(self._frame(message))
        except ConnectionError:  # the browser went away (aiohttp raises a subclass)
            pass
        finally:  # also when aiohttp cancels the handler: the browser went away
            watcher.close()
            self._count(-1)
        return response

    @staticmethod
    def _frame(message: Any) -> bytes:
        if message.HasField("snapshot"):
            return sse_frame("snapshot", message_dict(message), message.snapshot.sequence)
        kind = message.event.WhichOneof("change")
        return sse_frame(str(kind), message_dict(message), message.event.sequence)

