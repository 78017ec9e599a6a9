"""Command line: `sidecar run` and `sidecar config render|validate|schema`.

Flag names, defaults and exit codes are a public interface: keep them stable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main", "parse_key_value"]


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
        from .app import run_from_args

        return run_from_args(args)
    from . import configcli

    handler = {"render": configcli.cmd_render, "validate": configcli.cmd_validate,
               "schema": configcli.cmd_schema}[args.config_command]
    return handler(args, sys.stdout, sys.stderr)
