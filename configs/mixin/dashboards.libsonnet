// The sidecar's Grafana dashboard (`grafanaDashboards`), written as plain JSON (no
// grafonnet): routes (rate, errors, duration), clusters and endpoints (status,
// breakers, retries, limits, health checks) and configuration loads.
//
// Variables: `datasource` (any Prometheus data source), `job` and `instance` (label
// names from `_config.jobLabel` / `_config.instanceLabel`, values read from the
// series that `_config.sidecarSelector` selects).
local util = import 'util.libsonnet';

{
  _config+:: {
    sidecarSelector: error 'must provide sidecarSelector: the label matchers of the sidecar scrape job, e.g. job="sidecar"',
  },

  local c = self._config,
  local g = c.grafana,
  local datasource = { type: 'prometheus', uid: '${datasource}' },

  // The selector of every panel query: the sidecar selector, then the chosen job and instances.
  local sel(extra='') = util.selector(
    util.selector(c.sidecarSelector, '%s=~"$job", %s=~"$instance"' % [c.jobLabel, c.instanceLabel]),
    extra,
  ),
  local rate(metric, extra='') = 'rate(%s{%s}[$__rate_interval])' % [metric, sel(extra)],

  local target(expr, legend) = { datasource: datasource, expr: expr, legendFormat: legend },

  local timeseries(title, description, unit, targets, extra={}) = {
    type: 'timeseries',
    title: title,
    description: description,
    datasource: datasource,
    fieldConfig: {
      defaults: { unit: unit, custom: { fillOpacity: 10, showPoints: 'never' } },
      overrides: [],
    },
    options: {
      legend: { displayMode: 'table', placement: 'bottom', calcs: ['mean', 'max'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
    targets: [targets[i] { refId: std.char(std.codepoint('A') + i) } for i in std.range(0, std.length(targets) - 1)],
  } + extra,

  // Rows of panels, `perLine` panels of height 8 to a line; ids and grid positions assigned.
  local layout(rows) =
    local step(acc, row) =
      local width = 24 / row.perLine;
      local count = std.length(row.panels);
      local header = { type: 'row', title: row.title, collapsed: false, panels: [], gridPos: { x: 0, y: acc.y, w: 24, h: 1 } };
      local placed = [
        row.panels[i] { gridPos: { x: (i % row.perLine) * width, y: acc.y + 1 + std.floor(i / row.perLine) * 8, w: width, h: 8 } }
        for i in std.range(0, count - 1)
      ];
      { y: acc.y + 1 + std.ceil(count / row.perLine) * 8, panels: acc.panels + [header] + placed };
    local all = std.foldl(step, rows, { y: 0, panels: [] }).panels;
    [all[i] { id: i + 1 } for i in std.range(0, std.length(all) - 1)],

  local quantiles = [
    target('histogram_quantile(%g, sum by (route, le) (%s))' % [q, rate('sidecar_request_duration_seconds_bucket')], '{{route}} p%g' % (q * 100))
    for q in c.latencyQuantiles
  ],

  local variable(name, label, labelName, matchers) = {
    name: name,
    label: label,
    type: 'query',
    datasource: datasource,
    query: 'label_values(sidecar_config_loads_total{%s}, %s)' % [matchers, labelName],
    definition: self.query,
    refresh: 2,
    sort: 1,
    hide: 0,
    multi: true,
    includeAll: true,
    allValue: '.+',
    current: {},
    options: [],
    regex: '',
  },

  grafanaDashboards+:: {
    [g.dashboardFile]: {
      uid: g.dashboardUid,
      title: g.dashboardTitle,
      description: 'Requests, errors and latency per route; endpoints, breakers, retries and limits per cluster; configuration loads of the sidecar proxy.',
      tags: g.dashboardTags,
      timezone: g.timezone,
      refresh: g.refresh,
      time: { from: 'now-1h', to: 'now' },
      editable: true,
      graphTooltip: 1,
      schemaVersion: 39,
      version: 1,
      links: [],
      templating: {
        list: [
          {
            name: 'datasource',
            label: 'Data source',
            type: 'datasource',
            query: 'prometheus',
            regex: g.datasourceRegex,
            current: {},
            hide: 0,
            options: [],
          },
          variable('job', 'Job', c.jobLabel, c.sidecarSelector),
          variable('instance',
                   'Instance',
                   c.instanceLabel,
                   util.selector(c.sidecarSelector, '%s=~"$job"' % c.jobLabel)),
        ],
      },
      annotations: {
        list: [
          {
            name: 'Annotations & Alerts',
            builtIn: 1,
            datasource: { type: 'grafana', uid: '-- Grafana --' },
            enable: true,
            hide: true,
            iconColor: 'rgba(0, 211, 255, 1)',
            type: 'dashboard',
          },
          {
            name: 'Configuration loads',
            datasource: datasource,
            enable: true,
            hide: false,
            iconColor: 'blue',
            expr: 'changes(sidecar_config_last_load_timestamp_seconds{%s}[$__interval]) > 0' % sel(),
            step: '1m',
            titleFormat: 'Configuration loaded',
            textFormat: '{{%s}}' % c.instanceLabel,
          },
        ],
      },
      panels: layout([
        {
          title: 'Routes',
          perLine: 3,
          panels: [
            timeseries('Request rate by route', 'Requests answered a second, by route.', 'reqps', [
              target('sum by (route) (%s)' % rate('sidecar_requests_total'), '{{route}}'),
            ]),
            timeseries('Errors by route (5xx share)', "Share of each route's requests answered with a 5xx status; the line is the SidecarRouteErrorRatioHigh threshold.", 'percentunit', [
              target('sum by (route) (%s)\n/\nsum by (route) (%s)' % [rate('sidecar_requests_total', 'code_class="5xx"'), rate('sidecar_requests_total')], '{{route}}'),
            ], {
              fieldConfig+: { defaults+: {
                min: 0,
                custom+: { thresholdsStyle: { mode: 'line' } },
                thresholds: { mode: 'absolute', steps: [{ color: 'green', value: null }, { color: 'red', value: c.routeErrorRatioThreshold }] },
              } },
            }),
            timeseries('Responses by status class', 'Requests answered a second, by status class (1xx to 5xx).', 'reqps', [
              target('sum by (code_class) (%s)' % rate('sidecar_requests_total'), '{{code_class}}'),
            ]),
            timeseries('Duration by route', 'Quantiles of the time from request received to response sent, by route.', 's', quantiles),
            timeseries('Fallback answers', "Answers given by a route's fallback a second, by route and kind (cache, cluster, static).", 'reqps', [
              target('sum by (route, kind) (%s)' % rate('sidecar_fallbacks_total'), '{{route}} {{kind}}'),
            ]),
            timeseries('Requests in flight', 'Requests in flight on the listener, per sidecar.', 'short', [
              target('sum by (%s) (sidecar_active_requests{%s})' % [c.instanceLabel, sel()], '{{%s}}' % c.instanceLabel),
            ]),
          ],
        },
        {
          title: 'Clusters and endpoints',
          perLine: 3,
          panels: [
            timeseries('Endpoints by status', 'Endpoints per cluster and status (active takes traffic; unhealthy, disabled and draining do not).', 'short', [
              target('sum by (cluster, status) (sidecar_endpoints{%s})' % sel(), '{{cluster}} {{status}}'),
            ]),
            timeseries('Breakers not closed', 'Endpoints whose circuit breaker is open or half-open, by cluster and state.', 'short', [
              target('sum by (cluster, state) (sidecar_breaker_state{%s})' % sel('state!="closed"'), '{{cluster}} {{state}}'),
            ]),
            timeseries('Breaker transitions', 'Circuit breaker transitions, by cluster and the state entered.', 'short', [
              target('sum by (cluster, state) (increase(sidecar_breaker_transitions_total{%s}[$__rate_interval]))' % sel(), '{{cluster}} to {{state}}'),
            ]),
            timeseries('Retries', 'Retries made, and retries refused because the retry budget was spent, a second, by cluster.', 'ops', [
              target('sum by (cluster) (%s)' % rate('sidecar_retries_total'), '{{cluster}} retried'),
              target('sum by (cluster) (%s)' % rate('sidecar_retries_refused_total'), '{{cluster}} refused'),
            ]),
            timeseries('Upstream errors', 'Failed upstream tries a second, by cluster and kind (connect, reset, timeout, protocol, stale).', 'ops', [
              target('sum by (cluster, kind) (%s)' % rate('sidecar_upstream_errors_total'), '{{cluster}} {{kind}}'),
            ]),
            timeseries('Cluster limits', 'Requests admitted and in flight, and waiting for a connection, per cluster; overflows are requests refused by a limit.', 'short', [
              target('sum by (cluster) (sidecar_cluster_active_requests{%s})' % sel(), '{{cluster}} active'),
              target('sum by (cluster) (sidecar_cluster_pending_requests{%s})' % sel(), '{{cluster}} pending'),
              target('sum by (cluster, limit) (%s)' % rate('sidecar_overflows_total'), '{{cluster}} overflow {{limit}}/s'),
            ]),
            timeseries('Health checks', 'Active health checks a second, by cluster and result (passed, failed, timeout, error).', 'ops', [
              target('sum by (cluster, result) (%s)' % rate('sidecar_health_checks_total'), '{{cluster}} {{result}}'),
            ]),
            timeseries('Health check latency', 'Mean time an active health check took, by cluster.', 's', [
              target('sum by (cluster) (%s)\n/\nsum by (cluster) (%s)' % [rate('sidecar_health_check_duration_seconds_sum'), rate('sidecar_health_check_duration_seconds_count')], '{{cluster}}'),
            ]),
            timeseries('Panic mode', 'Sidecars whose cluster ignores its failing health checks (too few endpoints pass), by cluster.', 'short', [
              target('sum by (cluster) (sidecar_panic_mode{%s})' % sel(), '{{cluster}}'),
            ]),
          ],
        },
        {
          title: 'Configuration',
          perLine: 2,
          panels: [
            timeseries('Configuration loads', 'Configuration loads and reloads, by result; a failed reload leaves the last good configuration serving.', 'short', [
              target('sum by (result) (increase(sidecar_config_loads_total{%s}[$__rate_interval]))' % sel(), '{{result}}'),
            ], { fieldConfig+: { defaults+: { custom+: { drawStyle: 'bars', fillOpacity: 60 } } } }),
            {
              type: 'table',
              title: 'Serving configuration',
              description: 'The configuration each sidecar serves: version (12 hex digits) and source.',
              datasource: datasource,
              fieldConfig: { defaults: {}, overrides: [] },
              options: { showHeader: true },
              targets: [
                target('max by (%s, version, source) (sidecar_config_info{%s})' % [c.instanceLabel, sel()], '') + {
                  refId: 'A',
                  format: 'table',
                  instant: true,
                },
              ],
              transformations: [
                { id: 'organize', options: { excludeByName: { Time: true, Value: true } } },
              ],
            },
          ],
        },
      ]),
    },
  },
}
