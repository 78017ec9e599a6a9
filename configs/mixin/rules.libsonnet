// Recording rules (`prometheusRules`): each route's request rate, success ratio and
// latency quantiles over 5 minutes, summed over the sidecars of a fleet
// (`_config.fleetLabels`), for dashboards and SLO work over many sidecars.
//
// Success means "not answered 5xx": a 4xx is the client's error, not the route's.
local util = import 'util.libsonnet';

{
  _config+:: {
    sidecarSelector: error 'must provide sidecarSelector: the label matchers of the sidecar scrape job, e.g. job="sidecar"',
    fleetLabels: error 'must provide fleetLabels: the labels that name one fleet of sidecars, e.g. job',
  },

  local c = self._config,
  local sel(extra='') = util.selector(c.sidecarSelector, extra),
  local by(others) = util.byLabels(c.fleetLabels, others),

  prometheusRules+:: {
    groups+: [{
      name: 'sidecar.rules',
      rules: [
        {
          record: 'route:sidecar_requests:rate5m',
          expr: 'sum by (%s) (rate(sidecar_requests_total{%s}[5m]))' % [by(['route']), sel()],
        },
        {
          record: 'route_code_class:sidecar_requests:rate5m',
          expr: 'sum by (%s) (rate(sidecar_requests_total{%s}[5m]))' % [by(['route', 'code_class']), sel()],
        },
        {
          record: 'route:sidecar_requests:success_ratio_rate5m',
          // `or 0 * ...`: a route whose every request failed has no non-5xx series;
          // its success ratio is 0, not missing.
          expr: |||
            (
              sum by (%(by)s) (rate(sidecar_requests_total{%(ok)s}[5m]))
              or
              0 * sum by (%(by)s) (rate(sidecar_requests_total{%(all)s}[5m]))
            )
            /
            sum by (%(by)s) (rate(sidecar_requests_total{%(all)s}[5m]))
          ||| % { by: by(['route']), ok: sel('code_class!="5xx"'), all: sel() },
        },
        {
          record: 'route_le:sidecar_request_duration_seconds_bucket:rate5m',
          expr: 'sum by (%s) (rate(sidecar_request_duration_seconds_bucket{%s}[5m]))' % [by(['route', 'le']), sel()],
        },
      ] + [
        {
          record: 'route_quantile:sidecar_request_duration_seconds:histogram_quantile5m',
          expr: 'histogram_quantile(%g, route_le:sidecar_request_duration_seconds_bucket:rate5m)' % q,
          labels: { quantile: '%g' % q },
        }
        for q in c.latencyQuantiles
      ],
    }],
  },
}
