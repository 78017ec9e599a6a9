"""`python -m sidecar` is `sidecar`."""

from .cli import main

raise SystemExit(main())
