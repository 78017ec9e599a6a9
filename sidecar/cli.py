"""Command line: `sidecar run` and `sidecar config render|validate|schema`.

Flag names, defaults and exit codes are a public interface: keep them stable.
Exit codes: 0 success, 1 a config was rejected or a port was taken, 2 usage error
(an unknown argument, a malformed flag value, or flags that cannot be combined;
reported like argparse does, naming the flag and what it expects).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

log = logging.getLogger("sidecar")
# Errors of binding an address (the others come from files the config names).
_ADDRESS_ERRORS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})

__all__ = ["build_parser", "check_run_flags", "main", "parse_args", "parse_key_value",
           "quick_config", "run_from_args"]

MAX_TIMEOUT = 86_400.0  # the config model's bound on a duration


class _VersionAction(argparse.Action):
    """`--version`: worked out only when asked (it imports the data path's modules to
    see whether they load compiled)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from sidecar.compiled import state, version

        print(f"{parser.prog} {version()} (data path: {state()})")
        parser.exit()


def parse_key_value(value: str) -> tuple[str, str]:
    """argparse type of `--ext-str KEY=VALUE`."""
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def _add_ext(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ext-str", metavar="KEY=VALUE", type=parse_key_value, action="append",
                        default=[], help="Jsonnet external variable (std.extVar); repeatable")
    parser.add_argument("-J", "--jpath", metavar="DIR", action="append", default=[],
                        help="extra Jsonnet library directory; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sidecar", description="HTTP sidecar gateway.")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="show the version, and whether the data path is compiled")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the sidecar",
        description="Run the sidecar on --config FILE, on --upstream URL (quick mode), or, "
                    "with neither, on the embedded demo. The other flags override the "
                    "config's values.")
    source = run.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE",
                        help="configuration (.jsonnet or .json); default: the embedded demo")
    source.add_argument("--upstream", metavar="URL",
                        help="quick mode, instead of --config: one cluster 'upstream' with "
                             "this endpoint (http://host:port), one catch-all route")
    run.add_argument("--listen", metavar="HOST:PORT",
                     help="data-plane address (default 127.0.0.1:8000; port 0 picks one)")
    run.add_argument("--timeout", metavar="SECONDS",
                     help="upstream timeout of every cluster, in seconds (default 15)")
    run.add_argument("--admin-grpc", metavar="HOST:PORT",
                     help="admin gRPC address (default 127.0.0.1:9901)")
    run.add_argument("--admin-http", metavar="HOST:PORT",
                     help="/metrics, /live, /ready address (default 127.0.0.1:9902)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="level of the sidecar's own logs (default info, or the config's); "
                          "libraries log warnings and errors only, unless "
                          "$SIDECAR_LIBRARY_LOG_LEVEL says otherwise")
    run.add_argument("--no-watch", action="store_true",
                     help="do not reload the config file when it changes")
    _add_ext(run)

    config = sub.add_parser("config", help="render, validate or describe configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    render = config_sub.add_parser("render", help="print the rendered config as JSON")
    render.add_argument("file", metavar="FILE")
    _add_ext(render)
    validate = config_sub.add_parser("validate", help="validate configs; exit 1 on any error")
    validate.add_argument("files", metavar="FILE", nargs="+")
    _add_ext(validate)
    config_sub.add_parser("schema", help="print the JSON Schema of the configuration")
    return parser


_Commands = argparse._SubParsersAction  # argparse's type of add_subparsers()


def _subparser_actions(
        parser: argparse.ArgumentParser) -> Iterator[_Commands[argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield action
            for child in dict.fromkeys(action.choices.values()):
                yield from _subparser_actions(child)


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args`, except that an unknown argument is named as such.

    argparse checks required arguments (the COMMAND) before it reports unknown ones, so
    `sidecar --frobnicate` would say "a COMMAND is required". A first pass without those
    checks finds the unknown arguments; the second is argparse's own.
    """
    commands = [action for action in _subparser_actions(parser) if action.required]
    for action in commands:
        action.required = False
    try:
        _, unknown = parser.parse_known_args(argv)
    finally:
        for action in commands:
            action.required = True
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return parser.parse_args(argv)


def _host_port_problem(flag: str, value: str, example: str) -> str | None:
    from sidecar.core.addresses import parse_host_port

    try:
        parse_host_port(value, allow_zero_port=True)
    except ValueError as exc:
        expected = f"expected HOST:PORT, e.g. {example}"
        reason = str(exc)
        return (f"{flag} {value}: {expected}" if reason.startswith("expected ")
                else f"{flag} {value}: {reason}; {expected}")
    return None


def _upstream_problem(value: str) -> str | None:
    from sidecar.core.addresses import parse_upstream_url

    try:
        parse_upstream_url(value)
    except ValueError as exc:
        if "://" not in value:  # "127.0.0.1:8085", "localhost:8085", "app"
            return f"--upstream {value}: expected a URL like http://{value or '127.0.0.1:8080'}"
        return f"--upstream {value}: {exc}"
    return None


def _timeout_problem(value: str) -> str | None:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # also refuses nan
        return (f"--timeout {value}: expected a positive number of seconds "
                f"(at most {MAX_TIMEOUT:g}), e.g. 5 or 0.25")
    return None


def check_run_flags(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags of `sidecar run`, in their own terms; None if nothing.

    Checked before any config is loaded, so that a bad flag is reported against the
    flag, not against the config path it would have overridden.
    """
    if args.config and args.upstream:  # argparse refuses this too; run_from_args may not
        return ("--upstream cannot be combined with --config: --upstream is quick mode, "
                "instead of a config file")
    problems = [_upstream_problem(args.upstream) if args.upstream is not None else None]
    problems += [_host_port_problem(flag, value, example)
                 for flag, value, example in (("--listen", args.listen, "127.0.0.1:8000"),
                                              ("--admin-grpc", args.admin_grpc, "127.0.0.1:9901"),
                                              ("--admin-http", args.admin_http, "127.0.0.1:9902"))
                 if value is not None]
    problems.append(_timeout_problem(str(args.timeout)) if args.timeout is not None else None)
    return next((problem for problem in problems if problem), None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if args.command == "run":
        problem = check_run_flags(args)
        if problem:  # like argparse: the run usage, the problem, exit 2
            next(_subparser_actions(parser)).choices["run"].error(problem)
        return run_from_args(args)
    from sidecar.config import commands as configcli

    handler = {"render": configcli.cmd_render, "validate": configcli.cmd_validate,
               "schema": configcli.cmd_schema}[args.config_command]
    return handler(args, sys.stdout, sys.stderr)


# ---------------------------------------------------------------- sidecar run


def _overrides(args: argparse.Namespace) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(data: dict[str, Any]) -> dict[str, Any]:
        if args.listen:
            data.setdefault("listener", {})["address"] = args.listen
        if args.admin_grpc:
            data.setdefault("admin", {})["grpc_address"] = args.admin_grpc
        if args.admin_http:
            data.setdefault("admin", {})["http_address"] = args.admin_http
        if args.log_level:
            data.setdefault("logging", {})["level"] = args.log_level
        if args.timeout is not None:
            timeout = float(args.timeout)
            data.setdefault("cluster_defaults", {})["timeout"] = timeout
            for cluster in data.get("clusters") or []:
                if isinstance(cluster, dict):
                    cluster["timeout"] = timeout
        return data

    return apply


def quick_config(upstream: str) -> dict[str, Any]:
    """`--upstream URL`: one cluster, one catch-all route."""
    return {"clusters": [{"name": "upstream", "endpoints": [{"url": upstream}]}],
            "routes": [{"name": "default", "prefix": "/", "cluster": "upstream"}]}


async def _run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from sidecar.app import Sidecar, bound_port
    from sidecar.core.addresses import parse_host_port
    from sidecar.errors import ConfigError
    from sidecar.observe.logs import setup_logging
    from sidecar.reload import ConfigSource

    demo_runner: web.AppRunner | None = None
    overrides = _overrides(args)
    if args.config:
        source = ConfigSource(path=args.config, ext_vars=dict(args.ext_str), jpath=args.jpath,
                              overrides=overrides)
    elif args.upstream:
        source = ConfigSource(data=quick_config(args.upstream), overrides=overrides)
    else:
        from sidecar.demo import demo_app, demo_config

        demo_runner = web.AppRunner(demo_app(), access_log=None)
        await demo_runner.setup()
        site = web.TCPSite(demo_runner, "127.0.0.1", 0)
        await site.start()
        source = ConfigSource(data=demo_config(f"http://127.0.0.1:{bound_port(site._server)}"),
                              overrides=overrides, label="<embedded>")
    try:
        config = source.load()
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{exc.source}: {issue}", file=sys.stderr)
        return 1
    setup_logging(config.logging.level)
    sidecar = Sidecar(source, config)
    try:
        await sidecar.start()
    except OSError as exc:
        if exc.filename is None and (exc.errno in _ADDRESS_ERRORS or "cannot listen" in str(exc)):
            log.error("cannot listen", extra={
                "error": str(exc),
                "hint": "another process has the port; choose others with --listen, "
                        "--admin-grpc, --admin-http (port 0 picks a free one)"})
        else:  # a file the config names (TLS key, token file...) could not be used
            log.error("cannot start", extra={"error": str(exc)})
        await sidecar.stop(0)
        return 1
    sidecar.install_signal_handlers()
    sidecar.start_background(watch=not args.no_watch)
    if demo_runner is not None:
        port = sidecar.ports["listener"]
        host = parse_host_port(config.listener.address, allow_zero_port=True).host
        print(f"\nsidecar demo is up. Try:\n"
              f"  curl -i http://{host}:{port}/hello\n"
              f"  curl -i 'http://{host}:{port}/api/users?id=7'    (rewritten to /v1/users)\n"
              f"  curl -s http://127.0.0.1:{sidecar.ports['admin_http']}/metrics | grep sidecar_\n"
              f"  .venv/bin/sidecarctl endpoints list\n"
              f"  .venv/bin/sidecarctl watch\n", file=sys.stderr, flush=True)
    await sidecar.wait_stopped()
    if demo_runner is not None:
        await demo_runner.cleanup()
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """`sidecar run` with parsed arguments; returns the exit code."""
    problem = check_run_flags(args)
    if problem:
        print(f"sidecar run: error: {problem}", file=sys.stderr)
        return 2
    # gRPC's C core reads this once, when grpc is imported (sidecar.app imports it):
    # errors only, unless the operator asks for more.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from sidecar.dataplane.malloc import tune_malloc

    tune_malloc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(args))
    return uvloop.run(_run(args))
