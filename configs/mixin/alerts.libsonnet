// The sidecar's alerts (`prometheusAlerts`), one rule group.
//
// Every alert carries `severity` and three annotations: `summary` (one line),
// `description` (what is wrong and what it breaks) and `runbook` (what to check and
// what to do, with the sidecarctl commands). `runbook_url` is added when
// `_config.runbookURLPattern` is set. Thresholds and durations come from `_config`
// (defaults in mixin.libsonnet); the selectors have no default here, as in
// kubernetes-mixin, so that a component imported alone says what it needs.
local util = import 'util.libsonnet';

{
  _config+:: {
    sidecarSelector: error 'must provide sidecarSelector: the label matchers of the sidecar scrape job, e.g. job="sidecar"',
    fleetLabels: error 'must provide fleetLabels: the labels that name one fleet of sidecars, e.g. job',
  },

  local c = self._config,
  local sel(extra='') = util.selector(c.sidecarSelector, extra),
  local alert(name, severity, expr, forDuration, summary, description, runbook) = {
    alert: name,
    expr: expr,
    [if forDuration != '' then 'for']: forDuration,
    labels: { severity: severity },
    annotations: {
      summary: summary,
      description: description,
      runbook: runbook,
    } + (if c.runbookURLPattern != '' then { runbook_url: c.runbookURLPattern % std.asciiLower(name) } else {}),
  },

  prometheusAlerts+:: {
    groups+: [{
      name: 'sidecar',
      rules: [
        alert(
          'SidecarBreakerOpen',
          'warning',
          // Not "state=open == 1": a breaker that keeps failing its probes alternates
          // between open and half_open (half_open until the next request when idle),
          // so "not closed" is what stays true while the endpoint is out.
          'sidecar_breaker_state{%s} == 0' % sel('state="closed"'),
          c.breakerOpenFor,
          'Endpoint {{ $labels.endpoint }} of cluster {{ $labels.cluster }} has been cut off by its circuit breaker for %s.' % c.breakerOpenFor,
          'The circuit breaker of endpoint {{ $labels.endpoint }} (cluster {{ $labels.cluster }}) on sidecar {{ $labels.instance }} has not closed for %s: it is open, or half-open with its probes failing, so the sidecar sends the endpoint almost no traffic and the cluster runs on its other endpoints.' % c.breakerOpenFor,
          |||
            Check: `sidecarctl breakers list --cluster {{ $labels.cluster }}` for the reason it opened and when; `sidecar_upstream_errors_total{cluster="{{ $labels.cluster }}"}` by `kind` (connect, reset, timeout) for how the endpoint fails; `sidecarctl health check {{ $labels.cluster }} {{ $labels.endpoint }}` for what it answers now; whether the endpoint's process and host are up.
            Do: fix or restart the endpoint; the breaker closes by itself after its probes succeed. If the endpoint is gone for good, remove it: `sidecarctl endpoints deregister {{ $labels.cluster }} {{ $labels.endpoint }}` (or `sidecarctl endpoints update {{ $labels.cluster }} {{ $labels.endpoint }} --status disabled`). Once it answers again, `sidecarctl breakers reset {{ $labels.cluster }} {{ $labels.endpoint }}` closes the breaker at once.
          |||,
        ),
        alert(
          'SidecarClusterNoHealthyEndpoint',
          'critical',
          |||
            sum without (status) (sidecar_endpoints{%s}) == 0
            and
            sum without (status) (sidecar_endpoints{%s}) > 0
          ||| % [sel('status="active"'), sel()],
          c.noHealthyEndpointFor,
          'Cluster {{ $labels.cluster }} has no endpoint that takes traffic on sidecar {{ $labels.instance }}.',
          "Every endpoint of cluster {{ $labels.cluster }} on sidecar {{ $labels.instance }} has been unhealthy (failing its health checks, or its breaker open), disabled or draining for %s. Requests routed to the cluster fail (503) or get the route's fallback. (In panic mode, `sidecar_panic_mode`, endpoints failing their health checks count as active and still take traffic.) When this cluster is the local app, the sidecar's /ready answers 503." % c.noHealthyEndpointFor,
          |||
            Check: `sidecarctl endpoints list --cluster {{ $labels.cluster }}` for each endpoint's status and the reason it changed; `sidecar_endpoints{cluster="{{ $labels.cluster }}"}` by `status`; `sidecar_health_checks_total{cluster="{{ $labels.cluster }}"}` by `result` (failed: the endpoint answers with an unexpected status; error or timeout: it does not answer); `sidecarctl health check {{ $labels.cluster }} ID` for one endpoint's answer.
            Do: bring the service back, or fix the health check (path, expected status, timeout) if the service is fine. If an operator left endpoints disabled or draining, set them active again: `sidecarctl endpoints update {{ $labels.cluster }} ID --status active`. Register replacement endpoints with `sidecarctl endpoints register {{ $labels.cluster }} URL`.
          |||,
        ),
        alert(
          'SidecarRouteErrorRatioHigh',
          'critical',
          |||
            (
              sum by (%(by)s) (rate(sidecar_requests_total{%(errors)s}[%(window)s]))
              /
              sum by (%(by)s) (rate(sidecar_requests_total{%(all)s}[%(window)s]))
            ) > %(threshold)s
            and
            sum by (%(by)s) (rate(sidecar_requests_total{%(all)s}[%(window)s])) >= %(minRate)s
          ||| % {
            by: util.byLabels(c.fleetLabels, ['route']),
            errors: sel('code_class="5xx"'),
            all: sel(),
            window: c.routeErrorRatioWindow,
            threshold: '%g' % c.routeErrorRatioThreshold,
            minRate: '%g' % c.routeErrorMinRequestRate,
          },
          c.routeErrorRatioFor,
          'Route {{ $labels.route }} answers {{ $value | humanizePercentage }} of its requests with 5xx.',
          'Over the last %s, {{ $value | humanizePercentage }} of the requests of route {{ $labels.route }} (summed over its sidecars) were answered with a 5xx status, above the %g%% threshold, for %s. Clients of the route see these errors.' % [c.routeErrorRatioWindow, c.routeErrorRatioThreshold * 100, c.routeErrorRatioFor],
          |||
            Check: the "Sidecar" dashboard, for when it started and which sidecars; `sidecarctl route resolve PATH` for the route's cluster; where the 5xx come from: the application answering 5xx, or the sidecar answering 502/503/504 itself, which shows as `sidecar_upstream_errors_total` (connect, reset, timeout), `sidecar_overflows_total` (cluster limits), open breakers (`sidecar_breaker_state`) or no healthy endpoint (`sidecar_endpoints`) for that cluster; recent deploys of the upstream and configuration reloads (`sidecar_config_info`).
            Do: roll back a bad deploy or configuration; restore the failing endpoints; raise `limits` if overflows cause the errors and the upstream has room; consider a `fallback` for the route if a degraded answer is better than an error.
          |||,
        ),
        alert(
          'SidecarRetryBudgetExhausted',
          'warning',
          'sum by (%s) (rate(sidecar_retries_refused_total{%s}[5m])) > 0' % [util.byLabels(c.fleetLabels, ['cluster']), sel()],
          c.retryBudgetExhaustedFor,
          'The retry budget of cluster {{ $labels.cluster }} has been refusing retries for %s.' % c.retryBudgetExhaustedFor,
          'The sidecars have been refusing retries to cluster {{ $labels.cluster }} ({{ printf "%%.2f" $value }} a second) for %s, because its retry budget is spent: the cluster fails often enough that retrying every failure would add more load than the budget allows. Clients now get the first failure instead of a retried answer.' % c.retryBudgetExhaustedFor,
          |||
            Check: `sidecar_retries_total` and `sidecar_retries_refused_total` for cluster {{ $labels.cluster }} by `reason` (which failures are retried); `sidecar_upstream_errors_total` by `kind`; the cluster's breakers and endpoints; the upstream's own health and load.
            Do: fix the upstream: the budget protects it from a retry storm while it is failing. Raise `retry_budget.ratio` (or `min_retry_rate`) only if the failures are isolated and retries do succeed (retried requests end in 2xx), not while the whole cluster is failing.
          |||,
        ),
        alert(
          'SidecarConfigReloadFailing',
          'warning',
          'increase(sidecar_config_loads_total{%s}[%s]) > 0' % [sel('result="failure"'), c.configReloadFailureWindow],
          '',
          'Sidecar {{ $labels.instance }} failed to load a new configuration.',
          'A configuration (re)load failed on sidecar {{ $labels.instance }} in the last %s. The sidecar keeps serving its last good configuration (version and source in `sidecar_config_info`), so the change that was pushed is not in effect. The alert clears %s after the last failure.' % [c.configReloadFailureWindow, c.configReloadFailureWindow],
          |||
            Check: the sidecar's log for the reload error (it names the field and the reason); `sidecarctl config get` for the configuration it serves; run `sidecar config validate FILE` on the file that was pushed, and `sidecarctl config diff FILE` for what it would change.
            Do: fix the configuration and push it again (a file change or SIGHUP reloads it); `sidecar_config_loads_total{result="success"}` rises and `sidecar_config_info` shows the new version once it is served.
          |||,
        ),
        alert(
          'SidecarNotReady',
          'critical',
          'up{%s} == 0' % sel(),
          c.sidecarDownFor,
          'Sidecar {{ $labels.instance }} cannot be scraped.',
          "Prometheus has not been able to scrape sidecar {{ $labels.instance }} for %s: the process is down or restarting, or its admin HTTP port is unreachable. The sidecar exports no readiness gauge, so this alert sees a sidecar that is down, not one that is up but answers 503 on /ready (starting, draining, or its local app unhealthy: see SidecarClusterNoHealthyEndpoint); the orchestrator's readiness probe covers those." % c.sidecarDownFor,
          |||
            Check: whether the process or pod is running and restarting (its exit status and last log lines: a configuration that fails to load at start stops it); `curl http://ADMIN/ready` and `/live` on the admin HTTP port; whether the scrape address in Prometheus (the target's page) is still the sidecar's admin port.
            Do: fix what stops it from starting (configuration, port already in use, certificates); correct the scrape configuration if the admin address moved.
          |||,
        ),
        alert(
          'SidecarMetricsAbsent',
          'warning',
          'absent(up{%s})' % sel(),
          c.sidecarAbsentFor,
          'No sidecar target has been scraped for %s.' % c.sidecarAbsentFor,
          'Prometheus has had no target matching {%s} for %s, so none of the sidecar alerts can fire.' % [c.sidecarSelector, c.sidecarAbsentFor],
          |||
            Check: Prometheus's target page and service discovery for the sidecar job; whether the workloads were scaled to zero or renamed.
            Do: fix the scrape configuration (job name, port, relabelling) or the mixin's `sidecarSelector`; silence this alert if the sidecars are gone on purpose.
          |||,
        ),
      ],
    }],
  },
}
