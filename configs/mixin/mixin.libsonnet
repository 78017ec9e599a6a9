// The sidecar's monitoring mixin: `prometheusAlerts`, `prometheusRules` and
// `grafanaDashboards`, with every default in `_config` below. Override what differs:
//
//   (import 'mixin.libsonnet') + { _config+:: { sidecarSelector: 'job="mesh-sidecar"' } }
//
// render.libsonnet writes the files to load; README.md says how.
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards.libsonnet') +
{
  _config+:: {
    // Label matchers that select the sidecar's series; every query starts with them.
    sidecarSelector: 'job="sidecar"',
    // The labels that name one fleet of sidecars: the route error ratio, the retry
    // budget alert and the recording rules sum over the sidecars of a fleet by these.
    // Add e.g. 'namespace' when one job scrapes several fleets.
    fleetLabels: ['job'],
    // Label names of the dashboard's job and instance variables.
    jobLabel: 'job',
    instanceLabel: 'instance',

    // SidecarBreakerOpen: an endpoint's breaker has not closed for this long.
    breakerOpenFor: '5m',
    // SidecarClusterNoHealthyEndpoint: a cluster has endpoints, none active, this long.
    noHealthyEndpointFor: '2m',
    // SidecarRouteErrorRatioHigh: the 5xx share of a route over `routeErrorRatioWindow`
    // is above the threshold for `routeErrorRatioFor`, while the route serves at least
    // `routeErrorMinRequestRate` requests a second (so that one failure in three
    // requests at night does not page).
    routeErrorRatioThreshold: 0.05,
    routeErrorRatioWindow: '5m',
    routeErrorRatioFor: '5m',
    routeErrorMinRequestRate: 0.1,
    // SidecarRetryBudgetExhausted: retries refused for this long.
    retryBudgetExhaustedFor: '10m',
    // SidecarConfigReloadFailing: a load failed within this window (fires at once).
    configReloadFailureWindow: '10m',
    // SidecarNotReady: the sidecar could not be scraped for this long.
    sidecarDownFor: '5m',
    // SidecarMetricsAbsent: no sidecar target at all for this long.
    sidecarAbsentFor: '15m',
    // '' or a pattern with one %s (the alert name, lower case) for a runbook_url annotation,
    // e.g. 'https://git.example.com/ops/runbooks/-/blob/main/sidecar.md#%s'.
    runbookURLPattern: '',

    // Latency quantiles recorded by the rules and drawn by the dashboard.
    latencyQuantiles: [0.5, 0.9, 0.99],

    grafana: {
      dashboardFile: 'sidecar-overview.json',
      dashboardUid: 'sidecar-overview',
      dashboardTitle: 'Sidecar',
      dashboardTags: ['sidecar'],
      refresh: '30s',
      timezone: 'utc',
      // Only data sources whose name matches this regex are offered ('' for all).
      datasourceRegex: '',
    },
  },
}
