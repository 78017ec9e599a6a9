// The library ships inside the Python package (sidecar/config/sidecar.libsonnet), so
// `sidecar config render` finds it after a plain `pip install`. This file re-exports it
// for the stock `jsonnet` CLI: `jsonnet -J configs configs/examples/gateway.jsonnet`.
import '../sidecar/config/sidecar.libsonnet'
