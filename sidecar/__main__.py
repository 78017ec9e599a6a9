"""`python -m sidecar` is `sidecar`."""

from sidecar.cli import main

raise SystemExit(main())
