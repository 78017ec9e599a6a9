"""Configuration changes: where a config comes from, and reloading it safely.

Theory of operation: a reload (file change, SIGHUP, the ReloadConfig RPC) renders
and validates the source off the event loop, compares its version (a content hash)
with the serving one, and only then hands the new snapshot to `apply`, which swaps
it in. Reloads run one at a time. A config that fails to render or validate raises
`ConfigError` naming the file and field, and the serving config stays; one that
renders to the same version is a no-op, logged at info so an operator's SIGHUP is
always answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.model import SidecarConfig, config_version, parse_config
from sidecar.dataplane.malloc import release_free_memory
from sidecar.dataplane.tls import tls_issues
from sidecar.errors import ConfigError, ConfigIssue
from sidecar.observe.metrics import CONFIG_FAILURE_REASONS

__all__ = ["LOAD_STAGES", "ConfigLoadError", "ConfigSource", "Reloader", "load_stage"]

log = logging.getLogger("sidecar")


#: Where loading a configuration can fail: the file could not be read, could not be
#: rendered (Jsonnet, JSON), or rendered to an invalid configuration. A bounded set
#: (the `reason` label of `sidecar_config_load_failures_total`).
LOAD_STAGES = CONFIG_FAILURE_REASONS


class ConfigLoadError(ConfigError):
    """A `ConfigError` that says at which of `LOAD_STAGES` the load failed."""

    def __init__(self, source: str, issues: list[ConfigIssue], stage: str) -> None:
        super().__init__(source, issues)
        self.stage = stage


def load_stage(error: ConfigError) -> str:
    """The stage a ConfigError happened at ("validate" unless it says otherwise)."""
    return error.stage if isinstance(error, ConfigLoadError) else "validate"


@dataclass
class ConfigSource:
    """Where the config comes from and how to (re)build it: a file plus flag overrides,
    or fixed data (embedded demo, quick mode)."""

    path: str | None = None
    data: dict[str, Any] | None = None
    ext_vars: dict[str, str] = field(default_factory=dict)
    jpath: list[str] = field(default_factory=list)
    overrides: Callable[[dict[str, Any]], dict[str, Any]] = lambda d: d
    label: str = "<flags>"

    @property
    def name(self) -> str:
        return self.path or self.label

    def load(self) -> SidecarConfig:
        """Render, override, validate. Raises ConfigLoadError (a ConfigError) naming the
        file, the field and the stage that failed."""
        if self.path is not None:
            from sidecar.config.loader import render_data

            try:
                with open(self.path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigLoadError(self.name, [ConfigIssue("", exc.strerror or str(exc))],
                                      "io") from None
            try:
                data = render_data(self.path, self.ext_vars, self.jpath)
            except ConfigError as exc:
                raise ConfigLoadError(exc.source, exc.issues, "render") from None
            release_free_memory()  # what the Jsonnet evaluator freed, back to the system
        else:
            data = json.loads(json.dumps(self.data or {}))
        if not isinstance(data, dict):
            raise ConfigLoadError(self.name,
                                  [ConfigIssue("", "the configuration must be an object")],
                                  "validate")
        try:
            config = parse_config(self.overrides(data), self.name)
        except ConfigError as exc:
            raise ConfigLoadError(exc.source, exc.issues, "validate") from None
        issues = tls_issues(config)
        if issues:
            raise ConfigLoadError(self.name, issues, "validate")
        return config


class Reloader:
    """Serialises reloads of one `ConfigSource` and applies the configs that changed.

    apply: swaps a validated config in (config, version, reason); it must not fail.
    serving_version: the version being served now.
    on_rejected: called with the error and the reload's reason when a config was
        refused (for the reload-failure metric and event); it must not fail.
    """

    def __init__(self, source: ConfigSource,
                 apply: Callable[[SidecarConfig, str, str], None],
                 serving_version: Callable[[], str],
                 on_rejected: Callable[[ConfigError, str], None]) -> None:
        self.source = source
        self._apply = apply
        self._serving_version = serving_version
        self._on_rejected = on_rejected
        self._lock = asyncio.Lock()

    async def reload(self, reason: str) -> SidecarConfig:
        """Load the source again and swap it in; on error keep serving the old config."""
        async with self._lock:
            try:
                config = await asyncio.get_running_loop().run_in_executor(None,
                                                                          self.source.load)
            except ConfigError as exc:
                log.error("config rejected, keeping the serving config",
                          extra={"reason": reason, "source": exc.source,
                                 "stage": load_stage(exc),
                                 "issues": [str(i) for i in exc.issues]})
                self._on_rejected(exc, reason)
                raise
            version = config_version(config)
            if version == self._serving_version():
                log.info("config unchanged", extra={"reason": reason,
                                                    "version": version[:12]})
                return config
            self._apply(config, version, reason)
            return config

    async def watch(self) -> None:
        """Reload when anything changes in the config file's directory or a -J directory.

        Not recursive (a config beside a virtualenv must not watch thousands of files),
        and not filtered by name: a Kubernetes ConfigMap update is a rename of the
        `..data` symlink, not a write to the file. A reload that renders the same
        config is a no-op.
        """
        if self.source.path is None:
            return
        from watchfiles import awatch

        directories = {os.path.dirname(os.path.abspath(self.source.path))}
        directories.update(os.path.abspath(d) for d in self.source.jpath if os.path.isdir(d))
        async for _changes in awatch(*sorted(directories), debounce=200, recursive=False):
            with contextlib.suppress(ConfigError):
                await self.reload("file changed")
