"""Command line: `sidecar run` and `sidecar config render|validate|schema`.

Flag names, defaults and exit codes are a public interface: keep them stable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("sidecar")

__all__ = ["build_parser", "main", "parse_key_value", "quick_config", "run_from_args"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sidecar-gateway")
    except metadata.PackageNotFoundError:
        return "unknown"


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the sidecar")
    run.add_argument("--config", metavar="FILE",
                     help="configuration (.jsonnet or .json); default: the embedded demo")
    run.add_argument("--listen", metavar="HOST:PORT",
                     help="data-plane address (default 127.0.0.1:8000)")
    run.add_argument("--upstream", metavar="URL",
                     help="quick mode: one cluster 'upstream' with this endpoint, one catch-all "
                          "route")
    run.add_argument("--timeout", metavar="SECONDS", type=float,
                     help="upstream timeout of every cluster (default 15)")
    run.add_argument("--admin-grpc", metavar="HOST:PORT",
                     help="admin gRPC address (default 127.0.0.1:9901)")
    run.add_argument("--admin-http", metavar="HOST:PORT",
                     help="/metrics, /live, /ready address (default 127.0.0.1:9902)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                     help="log level (default info, or the config's)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
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
            data.setdefault("cluster_defaults", {})["timeout"] = args.timeout
            for cluster in data.get("clusters") or []:
                if isinstance(cluster, dict):
                    cluster["timeout"] = args.timeout
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
        log.error("cannot listen", extra={
            "error": str(exc),
            "hint": "another process has the port; choose others with --listen, "
                    "--admin-grpc, --admin-http (port 0 picks a free one)"})
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
    from sidecar.dataplane.malloc import tune_malloc

    tune_malloc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(args))
    return uvloop.run(_run(args))
