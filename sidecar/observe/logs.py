"""Structured JSON logs on stderr, one object per line.

Fields: `time` (RFC 3339, UTC), `level`, `logger`, `message`, the request id when
a log call happens inside a request (`request_id` and `trace_id`, from a contextvar), and any
`extra={...}` the call passed. Nothing is logged per request by default: the
access log is opt-in (`logging.access_log`).

Levels: the level asked for (`logging.level`, `--log-level`) is that of the sidecar's
own loggers (`sidecar.*`, `admin.*`). Libraries (grpc, asyncio, aiohttp, watchfiles...)
log warnings and errors only, since their debug output drowns ours; set
`SIDECAR_LIBRARY_LOG_LEVEL=debug` to see it. gRPC's C core logs on its own, to stderr,
as `GRPC_VERBOSITY` says; it is set to ERROR unless the environment sets it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from typing import Any, TextIO

from sidecar.core.headers import trace_id

__all__ = ["LIBRARY_LEVEL_ENV", "OWN_LOGGERS", "JsonFormatter", "access_logger",
           "request_context", "set_level", "setup_logging"]

OWN_LOGGERS = ("sidecar", "admin")  # take the configured level; everything else: WARNING
LIBRARY_LEVEL_ENV = "SIDECAR_LIBRARY_LOG_LEVEL"

#: The request being handled, for every line logged meanwhile: its request id and its
#: W3C traceparent (the client's, or the one the sidecar started; None: neither). One
#: variable set once per request; the trace id is read out of the traceparent only
#: when a line is actually logged.
request_context: contextvars.ContextVar[tuple[bytes, str | bytes | None] | None] = (
    contextvars.ContextVar("request_context", default=None))
access_logger = logging.getLogger("sidecar.access")

# Attributes every LogRecord has; anything else came from `extra=` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = request_context.get()
        if context is not None:
            request_id, traceparent = context
            entry["request_id"] = request_id.decode("latin-1")
            if isinstance(traceparent, bytes):
                traceparent = traceparent.decode("latin-1")
            trace = trace_id(traceparent)
            if trace is not None:
                entry["trace_id"] = trace
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every logger (ours, aiohttp's, grpc's) through one JSON handler."""
    # Read by gRPC's C core when grpc is first imported; `sidecar run` sets it earlier.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    # aiohttp logs every unhandled client error at ERROR with a traceback; the
    # sidecar reports those itself.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def set_level(level: str) -> None:
    """`level` for the sidecar's loggers; WARNING (or $SIDECAR_LIBRARY_LOG_LEVEL, or
    `level` when that is quieter) for every other logger."""
    own = logging.getLevelName(level.upper())
    if not isinstance(own, int):
        raise ValueError(f"unknown log level {level!r}")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)
    library = logging.getLevelName(os.environ.get(LIBRARY_LEVEL_ENV, "").strip().upper())
    if not isinstance(library, int):  # unset or not a level name
        library = max(logging.WARNING, own)
    logging.getLogger().setLevel(library)
