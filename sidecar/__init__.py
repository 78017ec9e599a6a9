"""The sidecar gateway. `SIDECAR_INTERPRETED=1` runs its compiled modules from their
sources (`sidecar.compiled`)."""

import os as _os

if _os.environ.get("SIDECAR_INTERPRETED"):
    from sidecar.compiled import use_sources as _use_sources

    _use_sources()
