"""`sidecarctl` (and `python -m admin`): the admin API's command-line client."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run sidecarctl with `argv` (default: the process's arguments); returns the exit code."""
    from .ctl import main as ctl_main

    return ctl_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
