"""Loading configuration files: Jsonnet or JSON in, a validated `SidecarConfig` out.

`render()` turns a file into JSON text; `load_config()` also validates it. Every
failure is a `ConfigError` whose `source` is the file and whose issues say where:
a Jsonnet location (`file:line:col`) for syntax and evaluation errors, a field
path (`routes[1].cluster`) for validation errors.

Theory of operation
-------------------
`.json` files are read as they are and only parsed. `.jsonnet` and `.libsonnet`
files are evaluated by the Jsonnet binding with our own import callback, which
searches like the stock CLI (the importing file's directory, then `-J`
directories, right-most first, then `$SIDECAR_JSONNET_PATH`, left-most first,
then the bundled library, `configs/` of this repository) so that both render a
file the same way, byte for byte. Unlike the CLI it is confined: an import is
read only if its real path (symlinks resolved) lies inside one of the config
file's directory, a `-J` directory, a `$SIDECAR_JSONNET_PATH` directory or the
bundled library. `importstr '/etc/passwd'`, `import '../../x'` escaping those
and symlinks pointing out of them are refused. A configuration can be loaded
by a running sidecar (hot reload, the admin RPC), where reading arbitrary files
would be a way to leak them through error messages or rendered output.

Evaluation is bounded (`RenderLimits`): a stack depth, so endless recursion and
deep nesting fail with "max stack frames exceeded" rather than crash; a size
for every file read; a size for the output. There is no time bound: Jsonnet
cannot be interrupted, so a file that loops for minutes takes minutes.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

# The Jsonnet binding (`_jsonnet`) is imported by `_evaluate`, only when a .jsonnet
# file is rendered: a sidecar run on JSON or on --upstream never loads it.
from sidecar.config.model import SidecarConfig, config_version, parse_config
from sidecar.errors import ConfigError, ConfigIssue

__all__ = [
    "BUNDLED_LIBRARY_DIR",
    "DEFAULT_LIMITS",
    "JSONNET_PATH_ENV",
    "LoadedConfig",
    "RenderLimits",
    "load_config",
    "render",
    "render_data",
]

#: The bundled Jsonnet library (`sidecar.libsonnet`), package data beside this module:
#: always importable, in a source checkout and after `pip install` alike.
BUNDLED_LIBRARY_DIR = Path(__file__).resolve().parent
#: More library directories, separated by os.pathsep; the left-most wins.
JSONNET_PATH_ENV = "SIDECAR_JSONNET_PATH"

_JSONNET_SUFFIXES = (".jsonnet", ".libsonnet")
_NO_VARS: Mapping[str, str] = MappingProxyType({})
_MAX_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """Bounds on one rendering.

    max_stack: Jsonnet stack frames. 500 is the stock CLI's default, so a file
        that renders in CI renders here too.
    max_source_bytes: the largest file read, the config itself or an import.
    max_output_bytes: the largest rendered JSON. Checked once Jsonnet is done:
        it cannot be stopped half way.
    max_trace: stack frames Jsonnet puts in an error (we show one or two).
    """

    max_stack: int = 500
    max_source_bytes: int = 4 * 1024 * 1024
    max_output_bytes: int = 16 * 1024 * 1024
    max_trace: int = 20


DEFAULT_LIMITS = RenderLimits()


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated configuration and where it came from."""

    config: SidecarConfig
    source: str
    #: `config_version(config)`: equal behaviour, equal version.
    version: str
    #: The JSON text the configuration was parsed from.
    rendered: str


def render(path: str, ext_vars: Mapping[str, str] = _NO_VARS, jpath: Sequence[str] = (),
           *, limits: RenderLimits = DEFAULT_LIMITS) -> str:
    """The JSON text of a `.jsonnet`, `.libsonnet` or `.json` file.

    Jsonnet output is what `jsonnet -J DIR... --ext-str K=V... FILE` prints (3-space
    indent, trailing newline); a `.json` file is returned as it is. Nothing is
    validated beyond being JSON. Raises ConfigError.
    """
    return _render(path, ext_vars, jpath, limits)[0]


def render_data(path: str, ext_vars: Mapping[str, str] = _NO_VARS, jpath: Sequence[str] = (),
                *, limits: RenderLimits = DEFAULT_LIMITS) -> Any:
    """The rendered file parsed as strict JSON (no duplicate keys, no NaN), not yet
    validated: for callers that adjust the data before validating it (`sidecar run`
    applies its flags). Raises ConfigError."""
    return _render(path, ext_vars, jpath, limits)[1]


def load_config(path: str, ext_vars: Mapping[str, str] = _NO_VARS, jpath: Sequence[str] = (),
                *, limits: RenderLimits = DEFAULT_LIMITS) -> LoadedConfig:
    """Render and validate a configuration file. Raises ConfigError.

    For data that is already parsed (an embedded config, one built from flags) use
    `sidecar.config.parse_config` directly.
    """
    rendered, data = _render(path, ext_vars, jpath, limits)
    config = parse_config(data, source=path)
    return LoadedConfig(config=config, source=path, version=config_version(config),
                        rendered=rendered)


# ---------------------------------------------------------------- rendering


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(source, [ConfigIssue("", message)])


def _render(path: str, ext_vars: Mapping[str, str], jpath: Sequence[str],
            limits: RenderLimits) -> tuple[str, Any]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix != ".json" and suffix not in _JSONNET_SUFFIXES:
        raise _fail(path, f"unsupported file type {suffix or '(none)'!r}: "
                          "use .jsonnet, .libsonnet or .json")
    try:
        text = _read_file(path, limits.max_source_bytes).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text (byte {exc.start})") from None
    except (OSError, ValueError) as exc:
        raise _fail(path, str(exc)) from None
    if suffix == ".json":
        return text, _parse_json(text, path)
    rendered = _evaluate(path, text, ext_vars, jpath, limits)
    return rendered, _parse_json(rendered, path)


def _read_file(path: str, max_bytes: int) -> bytes:
    """At most `max_bytes` of a regular file; OSError/ValueError with a short message."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang a reload; regular files ignore it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise OSError("no such file") from None
    except PermissionError:
        raise OSError("permission denied") from None
    except OSError as exc:
        raise OSError(f"cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ValueError("is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise OSError(f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if left <= 0:
        raise ValueError(f"larger than the limit of {max_bytes} bytes")
    return b"".join(chunks)


def _evaluate(path: str, text: str, ext_vars: Mapping[str, str], jpath: Sequence[str],
              limits: RenderLimits) -> str:
    import _jsonnet

    importer = _Importer(path, jpath, limits.max_source_bytes)
    try:
        # evaluate_snippet with the file's own name behaves as evaluate_file
        # (imports, std.thisFile and error locations are relative to `path`) but
        # lets us read the file once, size-bounded.
        rendered: str = _jsonnet.evaluate_snippet(
            path, text, max_stack=limits.max_stack, max_trace=limits.max_trace,
            ext_vars=dict(ext_vars), import_callback=importer)
    except RuntimeError as exc:
        raise ConfigError(path, [_jsonnet_issue(str(exc), path, limits)]) from None
    size = len(rendered.encode("utf-8"))
    if size > limits.max_output_bytes:
        raise _fail(path, f"rendered JSON is {size} bytes, larger than the limit of "
                          f"{limits.max_output_bytes} bytes")
    return rendered


def _parse_json(text: str, source: str) -> Any:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"duplicate key {key!r} in an object")
            obj[key] = value
        return obj

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as exc:
        raise _fail(source, f"invalid JSON at {source}:{exc.lineno}:{exc.colno}: "
                            f"{exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise _fail(source, f"invalid JSON: {exc}") from None


# ---------------------------------------------------------------- imports


class _ImportRefused(Exception):
    """Raised inside the import callback; Jsonnet reports `couldn't open import "x": ...`."""


def _with_slash(directory: str) -> str:
    return directory if directory.endswith("/") else directory + "/"


class _Importer:
    """Jsonnet import callback: the stock CLI's search order, confined to roots."""

    def __init__(self, path: str, jpath: Sequence[str], max_bytes: int) -> None:
        env_dirs = [d for d in os.environ.get(JSONNET_PATH_ENV, "").split(os.pathsep) if d]
        library = [str(BUNDLED_LIBRARY_DIR)] if BUNDLED_LIBRARY_DIR.is_dir() else []
        # The CLI tries -J directories right-most first, then JSONNET_PATH left-most
        # first; the bundled library comes last so a -J copy can replace it.
        self._search = [_with_slash(d) for d in [*reversed(jpath), *env_dirs, *library]]
        top = os.path.dirname(os.path.abspath(path))
        self._roots = list(dict.fromkeys(
            os.path.realpath(d) for d in [top, *jpath, *env_dirs, *library]))
        self._max_bytes = max_bytes

    def __call__(self, base: str, rel: str) -> tuple[str, bytes]:
        if os.path.isabs(rel):
            candidates = [rel]
        else:
            candidates = [base + rel, *(d + rel for d in self._search)]
        for candidate in candidates:
            if not os.path.isfile(candidate):
                continue
            real = os.path.realpath(candidate)
            if not self._allowed(real):
                raise _ImportRefused(
                    f"{real} is outside the directories imports may read "
                    f"({', '.join(self._roots)}); add its directory with -J")
            try:
                # Read what was checked, not the name, so a swapped symlink can't win.
                return candidate, _read_file(real, self._max_bytes)
            except (OSError, ValueError) as exc:
                raise _ImportRefused(f"{candidate}: {exc}") from None
        searched = ", ".join([base or "./", *self._search])
        raise _ImportRefused(f"not found (searched {searched})")

    def _allowed(self, real: str) -> bool:
        return any(real == root or real.startswith(_with_slash(root)) for root in self._roots)


# ---------------------------------------------------------------- error messages

_LOCATION = r"(?:\d+:\d+(?:-\d+)?|\(\d+:\d+\)-\(\d+:\d+\))"
_STATIC_ERROR = re.compile(rf"^STATIC ERROR: (?P<loc>.+?:{_LOCATION}): (?P<msg>.*)$", re.S)
_FRAME = re.compile(rf"^(?P<file>.+):{_LOCATION}$")
_STD_FILES = frozenset({"std.jsonnet", "<std>", "<builtin>"})


def _one_line(message: str) -> str:
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."


def _jsonnet_issue(error: str, source: str, limits: RenderLimits) -> ConfigIssue:
    """Jsonnet's error text as one line: message, where it was raised, where from.

    `RUNTIME ERROR: msg\\n\\tfile:1:2-3\\tfunction <f>\\n...` becomes
    `error at file:1:2-3: msg (from config.jsonnet:4:5-9)`: the innermost frame
    outside the standard library, and, when that is in another file (a library's
    `error`), the innermost frame in the config file itself.
    """
    error = error.strip()
    static = _STATIC_ERROR.match(error)
    if static:
        return ConfigIssue("", f"syntax error at {static['loc']}: {_one_line(static['msg'])}")

    message_lines: list[str] = []
    frames: list[tuple[str, str]] = []
    in_trace = False
    for line in error.removeprefix("RUNTIME ERROR: ").split("\n"):
        if line.startswith("\t"):
            in_trace = True
            location = line[1:].split("\t", 1)[0]
            match = _FRAME.match(location)
            if match and match["file"] not in _STD_FILES:
                frames.append((match["file"], location))
        elif not in_trace:
            message_lines.append(line)
    message = _one_line("\n".join(message_lines))
    lowered = message.lower()
    if lowered.startswith("undefined external variable"):
        name = message.partition(":")[2].strip()
        message += f" (pass --ext-str {name or 'NAME'}=VALUE)"
    elif lowered.startswith("max stack frames exceeded"):
        message = (f"{message.rstrip('.')} (limit {limits.max_stack}: endless recursion, "
                   "or values nested too deep)")
    if not frames:
        return ConfigIssue("", f"error: {message}")
    text = f"error at {frames[0][1]}: {message}"
    if frames[0][0] != source:
        caller = next((loc for file, loc in frames if file == source), None)
        if caller is not None:
            text += f" (from {caller})"
    return ConfigIssue("", text)
