// Renders the mixin into the files to load, one JSON file each (Prometheus reads rule
// files as YAML, of which JSON is a part; Grafana imports the dashboard JSON):
//
//   jsonnet -J configs/mixin -m OUT configs/mixin/render.libsonnet
//
// writes OUT/sidecar-alerts.json, OUT/sidecar-rules.json and one file per dashboard.
// Override `_config` fields with a top-level argument:
//
//   jsonnet -J configs/mixin -m OUT --tla-code 'config={sidecarSelector: "job=\"mesh\""}' \
//     configs/mixin/render.libsonnet
//
// A .libsonnet, though it is an entry point: every *.jsonnet under configs/ is a sidecar
// configuration to the repository's tests (`sidecar config validate`), and this is not one.
//
// (The stock CLI's own JSON output is used, not std.manifestYamlDoc: jsonnet 0.18 takes
// seconds to manifest these strings in Jsonnet, and the output is the same data.)
function(config={})
  local mixin = (import 'mixin.libsonnet') + { _config+:: config };
  {
    'sidecar-alerts.json': mixin.prometheusAlerts,
    'sidecar-rules.json': mixin.prometheusRules,
  } + mixin.grafanaDashboards
