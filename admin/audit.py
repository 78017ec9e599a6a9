"""The audit log: one JSON line per mutating admin call, on the logger `sidecar.audit`.

Each line says who called (token name, JWT subject or certificate subject, and how
they authenticated), what (the RPC), with which request (as proto JSON, redacted),
from where (the peer), and how it ended (the gRPC status code name). Calls refused
by authentication or authorization are recorded too.

Redaction: fields that may hold secrets or bulk (`REDACTED_FIELDS`) are replaced by
their size, user information in URLs is masked, and long strings are cut.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

if TYPE_CHECKING:
    from .auth import Identity

__all__ = ["AUDIT_LOGGER", "MAX_STRING", "REDACTED_FIELDS", "AuditLog", "redact"]

AUDIT_LOGGER = "sidecar.audit"
MAX_STRING = 256
#: Request fields never logged as they are: bulk text, and anything secret-like.
REDACTED_FIELDS = frozenset({"configJson", "config_json", "token", "password", "secret"})
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)[^/@]*@")


def _clean(value: Any, key: str = "") -> Any:
    if key in REDACTED_FIELDS:
        size = len(value) if isinstance(value, str | bytes | list | dict) else 0
        return f"<redacted {size} characters>" if isinstance(value, str) else "<redacted>"
    if isinstance(value, dict):
        return {k: _clean(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, str):
        value = _USERINFO.sub(r"\1***@", value)
        if len(value) > MAX_STRING:
            return value[:MAX_STRING] + f"...<{len(value) - MAX_STRING} more>"
    return value


def redact(request: Any) -> Any:
    """The request as it may be logged: proto JSON with secrets and bulk removed."""
    if request is None:
        return None
    if isinstance(request, Message):
        return _clean(MessageToDict(request, preserving_proto_field_name=True))
    return _clean(str(request))


class AuditLog:
    """Writes audit records to `logger` (default `sidecar.audit`) at INFO."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(AUDIT_LOGGER)
        # Not subject to logging.level: an audit trail is not verbosity.
        self._log.setLevel(logging.INFO)

    def record(self, identity: Identity | None, method: str, request: Any,
               code: grpc.StatusCode, peer: str) -> None:
        self._log.info("admin call", extra={
            "audit": True,
            "who": identity.name if identity is not None else "-",
            "auth": identity.method if identity is not None else "-",
            "subject": identity.subject if identity is not None else "",
            "rpc": method.rpartition("/")[2],
            "method": method,
            "request": redact(request),
            "result": code.name,
            "peer": peer,
        })
