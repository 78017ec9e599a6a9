"""Operations through the API: what ValidateConfig, ReloadConfig, SetLogLevel,
GetServerInfo and Drain need from the running sidecar, behind one small interface.

`Operations` is what the servicer calls; `SidecarOperations` implements it over a
`sidecar.app.Sidecar` (its config source, reloader, lifecycle state and readiness),
so the servicer itself stays a translation layer and imports nothing of the app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Protocol

from sidecar.config.model import SidecarConfig, config_version
from sidecar.errors import ConfigError, ConfigIssue
from sidecar.observe.logs import set_level

if TYPE_CHECKING:
    from sidecar.app import Sidecar

__all__ = ["LOG_LEVELS", "DrainStarted", "LogLevelTimer", "NoConfigFile", "Operations",
           "ServerInfo", "SidecarOperations", "Validation",
           "current_log_level", "software_version"]

#: The levels SetLogLevel accepts, lowest first.
LOG_LEVELS = ("debug", "info", "warning", "error")


def current_log_level() -> str:
    """The level of the sidecar's own loggers, lower case."""
    name = logging.getLevelName(logging.getLogger("sidecar").getEffectiveLevel())
    return str(name).lower()


def software_version() -> str:
    try:
        return metadata.version("sidecar-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Validation:
    """ValidateConfig's answer: the version, or the issues (never both)."""

    issues: tuple[ConfigIssue, ...]
    version: str


@dataclass(frozen=True, slots=True)
class ServerInfo:
    pid: int
    start_time: float  # Unix time
    uptime: float  # seconds
    state: str  # starting | ready | draining | stopped
    state_reason: str


class Operations(Protocol):
    """What the operations RPCs need from the sidecar."""

    async def validate(self, config_json: str | None, path: str | None) -> Validation: ...
    async def reload(self) -> SidecarConfig: ...
    def info(self) -> ServerInfo: ...
    def drain(self, deadline: float | None) -> DrainStarted: ...


@dataclass(frozen=True, slots=True)
class DrainStarted:
    """Drain's answer."""

    started: bool  # False: a drain was under way already
    state: str
    deadline_time: float  # Unix time at which requests in flight are cut off


class SidecarOperations:
    """`Operations` over a running `Sidecar`."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self._start_wall = time.time()
        self._start = time.monotonic()

    async def validate(self, config_json: str | None, path: str | None) -> Validation:
        source = self._sidecar.source
        if path is not None:
            candidate = dataclasses.replace(source, path=path, data=None)
        else:
            try:
                data = json.loads(config_json or "")
            except ValueError as exc:
                return Validation((ConfigIssue("", f"not JSON: {exc}"),), "")
            candidate = dataclasses.replace(source, path=None, data=data, label="config_json")
        try:
            config = await asyncio.to_thread(candidate.load)
        except ConfigError as exc:
            return Validation(tuple(exc.issues), "")
        return Validation((), config_version(config))

    async def reload(self) -> SidecarConfig:
        if self._sidecar.source.path is None:
            raise NoConfigFile("this sidecar runs without a configuration file (it was "
                               "started from flags or the embedded demo)")
        return await self._sidecar.reload("ReloadConfig RPC")

    def info(self) -> ServerInfo:
        ready, reason = self._sidecar.readiness()
        return ServerInfo(pid=os.getpid(), start_time=self._start_wall,
                          uptime=time.monotonic() - self._start, state=self._sidecar.state,
                          state_reason=reason)


    def drain(self, deadline: float | None) -> DrainStarted:
        started, deadline_time = self._sidecar.drain(deadline, "Drain RPC")
        return DrainStarted(started, self._sidecar.state, deadline_time)


class NoConfigFile(RuntimeError):
    """ReloadConfig on a sidecar without a configuration file."""


class LogLevelTimer:
    """SetLogLevel: set a level now, and put the previous one back after a while.

    A newer call replaces the pending revert; a reload sets the configured level
    (and a pending revert then puts back the level from before the call)."""

    def __init__(self) -> None:
        self._revert: asyncio.TimerHandle | None = None

    def set(self, level: str, duration: float | None) -> str:
        """Set `level`; returns the previous level."""
        previous = current_log_level()
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
        set_level(level)
        if duration is not None:
            self._revert = asyncio.get_running_loop().call_later(duration, self._back,
                                                                 previous)
        return previous

    def _back(self, level: str) -> None:
        self._revert = None
        set_level(level)
        logging.getLogger("sidecar").info("log level reverted", extra={"level": level})

    def cancel(self) -> None:
        if self._revert is not None:
            self._revert.cancel()
            self._revert = None
