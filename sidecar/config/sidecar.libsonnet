// sidecar.libsonnet: write sidecar configurations in Jsonnet.
//
//   local sidecar = import 'sidecar.libsonnet';
//
//   sidecar.config({
//     clusters: [sidecar.cluster('users', ['http://127.0.0.1:8001'])],
//     routes: [sidecar.route('/api/users', 'users')],
//   }) + sidecar.localApp(8080)
//
// Render with the stock CLI (`jsonnet -J configs FILE`) or with the sidecar,
// which finds this library by itself (`sidecar config render FILE`); check the
// result with `sidecar config validate FILE`.
//
// Conventions
// - Parameters are named like the JSON fields they set (snake_case): what you
//   read in the rendered JSON is what you pass here.
// - A constructor writes every field it has a parameter for, with the sidecar's
//   own default (stated beside each parameter; sidecar/config/model.py and
//   sidecar/config/resilience.py hold the same values and tests/unit/test_config.py
//   checks that they agree), so the rendered JSON shows the values in effect.
//   Optional fields whose default is "nothing" (null, {}) are left out unless you
//   set them; _config leaves them out too, and the constructors read them with
//   std.get, so `_config+:: { cluster+: { slow_start: '30s' } }` works.
// - A field without a parameter is added with `+`:
//     sidecar.route('/', 'app') + { host: 'example.com' }
//   `sidecar config validate` rejects unknown fields, with their path.
// - Library-wide defaults live in the hidden `_config` object (kubernetes-mixin
//   style). Override them once for a whole file:
//     local sidecar = (import 'sidecar.libsonnet') + {
//       _config+:: { cluster+: { timeout: '5s' } },
//     };
// - Durations are strings with a unit ('250ms', '1.5s', '2m', '1h') or numbers
//   of seconds; ms(), s(), m() and h() write them.
// - Environments: one external variable, `env` (dev, staging or prod), read with
//   sidecar.env(std.extVar('env')) by the files that need it. Jsonnet has no
//   default for an unset external variable, so such files must be rendered with
//   `--ext-str env=NAME`. See configs/README.md.
//
// Keep this file within Jsonnet 0.18 (Debian's CLI): check any std function you
// add with /usr/bin/jsonnet (0.18 lacks std.trim, std.contains, std.isEmpty...).

local withoutNulls(o) = { [k]: o[k] for k in std.objectFields(o) if o[k] != null };

local duration(n, unit) =
  assert std.isNumber(n) && n > 0 :
         '%s(): expected a positive number, got %s' % [unit, std.toString(n)];
  std.toString(n) + unit;

local configFields = ['admin', 'cluster_defaults', 'clusters', 'listener', 'logging', 'routes'];

// What a breaker counts as a failure and a retry retries, by default.
local defaultFailures = ['connect_failure', 'reset', 'timeout', 'gateway_error'];

{
  _config+:: {
    // Defaults of every cluster() and of clusters created by run-time
    // registration (config() writes them as `cluster_defaults`). Same values as
    // ClusterSettings in sidecar/config/model.py. Unset, with a null default:
    //   health_check  null  active health checks off; see healthCheck()
    //   slow_start    null  a new endpoint gets its full weight at once
    cluster: {
      lb_policy: 'round_robin',  // round_robin | least_request | random
      connect_timeout: '1s',  // time to open a connection
      timeout: '15s',  // whole upstream exchange; a route may override it
      preserve_host: true,  // send the client's Host upstream (false: the endpoint's)
      max_idle_connections: 64,  // idle keep-alive connections kept per endpoint
      idle_timeout: '60s',  // idle connections are closed after this
      tls: { verify: true },  // verification of https:// endpoints; see tls()
      // Resilience (sidecar/config/resilience.py); see circuitBreaker(), retry(),
      // retryBudget(), limits() for what each field means.
      circuit_breaker: {
        enabled: true,
        consecutive_failures: 5,
        failure_rate: 0.5,
        min_requests: 20,
        window: '10s',
        open_duration: '5s',
        max_open_duration: '60s',
        half_open_requests: 1,
        close_after: 2,
        failure_on: defaultFailures,
      },
      retry: {
        enabled: true,
        retry_on: defaultFailures,
        retriable_status_codes: [],
        max_retries: 2,
        // per_try_timeout: unset (null): the timeout bounds all tries together
        backoff_base: '25ms',
        backoff_max: '250ms',
        retry_buffer_bytes: 65536,
      },
      retry_budget: { enabled: true, ratio: 0.2, min_concurrent: 3, interval: '10s', min_retry_rate: 10 },
      limits: { enabled: true, max_requests: 1024, max_pending: 1024 },
      panic_threshold: 0.5,  // share of healthy endpoints below which checks are ignored
      local_app: false,  // true: /ready is 503 while no endpoint is healthy
    },
    // healthCheck(path): every field but path (HealthCheckConfig).
    health_check: {
      interval: '5s',
      jitter: '500ms',
      timeout: '1s',
      healthy_threshold: 2,
      unhealthy_threshold: 3,
      expected_statuses: ['200-399'],
    },
    // fallbackCache() (CacheFallbackConfig).
    fallback_cache: { max_entries: 1000, max_body_bytes: 65536, max_age: '5m' },
    // localApp(): the application container beside the sidecar.
    local_app: {
      name: 'local_app',  // name of its cluster and of its catch-all route
      host: '127.0.0.1',
    },
    // The names env() accepts.
    envs: ['dev', 'staging', 'prod'],
  },

  // Durations: ms(250) -> '250ms', s(1.5) -> '1.5s', m(2) -> '2m', h(1) -> '1h'.
  ms(n):: duration(n, 'ms'),
  s(n):: duration(n, 's'),
  m(n):: duration(n, 'm'),
  h(n):: duration(n, 'h'),

  // env(name): checks an environment name, usually std.extVar('env'), against
  // _config.envs and returns it.
  env(name)::
    assert std.member($._config.envs, name) :
           "env: expected one of %s, got '%s' (render with --ext-str env=NAME)"
           % [std.join(', ', $._config.envs), std.toString(name)];
    name,

  // config(spec): a whole configuration. `spec` sets any of admin,
  // cluster_defaults, clusters, listener, logging, routes; unset ones get:
  //   listener          listener()
  //   admin             admin()
  //   logging           logging()
  //   cluster_defaults  _config.cluster (its null fields left out)
  //   clusters, routes  []
  // Add more clusters and routes with `+`: config({...}) + localApp(8080).
  config(spec={})::
    local unknown = std.setDiff(std.set(std.objectFields(spec)), configFields);
    assert unknown == [] :
           'config: unknown field(s) %s; expected some of %s'
           % [std.join(', ', unknown), std.join(', ', configFields)];
    {
      listener: $.listener(),
      admin: $.admin(),
      logging: $.logging(),
      cluster_defaults: withoutNulls($._config.cluster),
      clusters: [],
      routes: [],
    } + spec,

  // listener(): where the sidecar accepts requests, and its limits.
  //   address                 '127.0.0.1:8000'   HOST:PORT
  //   orchestrator_prefix     '/orchestrator/'   the earlier design's addressing:
  //                           PREFIX{cluster}/{path} goes to {cluster} with
  //                           PREFIX{cluster} stripped; null turns it off
  //   max_uri_bytes           8190               longer request targets get 414
  //   max_header_bytes        8190               longer header lines get 431
  //   max_headers             100                more request headers get 431
  //   drain_timeout           '30s'              on SIGTERM, time given to requests
  //                                              in flight before exiting
  //   max_request_body_bytes  10485760           larger bodies get 413 (10 MiB); a
  //                                              route may override it
  //   request_header_timeout  '10s'              a head must arrive whole within
  //                                              this, else 408 and close
  //   request_body_timeout    '30s'              longest pause between body reads,
  //                                              else 408 and close
  //   idle_timeout            '75s'              idle keep-alive connections close
  //   max_connections         10000              connections over it are closed
  //                                              as soon as they are accepted
  //   max_requests            10000              requests in flight; over it 503
  //                                              with Retry-After
  //   trace_sampled           false              the sampled flag of a traceparent
  //                                              the sidecar starts (none came)
  listener(address='127.0.0.1:8000',
           orchestrator_prefix='/orchestrator/',
           max_uri_bytes=8190,
           max_header_bytes=8190,
           max_headers=100,
           drain_timeout='30s',
           max_request_body_bytes=10485760,
           request_header_timeout='10s',
           request_body_timeout='30s',
           idle_timeout='75s',
           max_connections=10000,
           max_requests=10000,
           trace_sampled=false):: {
    address: address,
    orchestrator_prefix: orchestrator_prefix,
    max_uri_bytes: max_uri_bytes,
    max_header_bytes: max_header_bytes,
    max_headers: max_headers,
    drain_timeout: drain_timeout,
    max_request_body_bytes: max_request_body_bytes,
    request_header_timeout: request_header_timeout,
    request_body_timeout: request_body_timeout,
    idle_timeout: idle_timeout,
    max_connections: max_connections,
    max_requests: max_requests,
    trace_sampled: trace_sampled,
  },

  // admin(): the admin plane.
  //   grpc_address       '127.0.0.1:9901'  AdminService (gRPC): HOST:PORT, or
  //                                        unix:PATH for a Unix socket (mode 0600);
  //                                        a non-loopback address needs tls and auth
  //   http_address       '127.0.0.1:9902'  /metrics, /live and /ready
  //   state_file         null              file keeping endpoints registered at run
  //                                        time across restarts; null keeps none
  //   auth               null              adminAuth(): tokens, JWT, roles; null:
  //                                        every local caller is admin
  //   tls                null              adminTls(): TLS, or mTLS
  //   max_watchers       64                WatchStatus streams at once; more get
  //                                        RESOURCE_EXHAUSTED
  //   max_message_bytes  4194304           largest request message (4 MiB)
  //   audit_log          true              one JSON line per mutating call on the
  //                                        logger sidecar.audit
  admin(grpc_address='127.0.0.1:9901', http_address='127.0.0.1:9902', state_file=null,
        auth=null, tls=null, max_watchers=64, max_message_bytes=4194304, audit_log=true)::
    withoutNulls({
      grpc_address: grpc_address,
      http_address: http_address,
      state_file: state_file,
      auth: auth,
      tls: tls,
      max_watchers: max_watchers,
      max_message_bytes: max_message_bytes,
      audit_log: audit_log,
    }),

  // adminAuth(): who may call the admin API. Give tokens, jwt or client_cert_role.
  //   tokens            []     adminToken()s
  //   jwt               null   adminJwt()
  //   client_cert_role  null   'read' | 'admin': role of a caller with a verified
  //                            client certificate and no token; null: token needed
  //   open_reflection   false  server reflection without credentials
  adminAuth(tokens=[], jwt=null, client_cert_role=null, open_reflection=false)::
    withoutNulls({
      tokens: tokens,
      jwt: jwt,
      client_cert_role: client_cert_role,
      open_reflection: open_reflection,
    }),

  // adminToken(name): a bearer token, read from token_file or token_env (never
  // written in the configuration).
  //   name        required  who holds it (the audit log's `who`)
  //   token_file  null      file holding the token; give this or token_env
  //   token_env   null      environment variable holding the token
  //   role        'read'    'read' | 'admin'
  adminToken(name=error 'adminToken: name is required', token_file=null, token_env=null,
             role='read')::
    withoutNulls({
      name: name,
      token_file: token_file,
      token_env: token_env,
      role: role,
    }),

  // adminJwt(issuer, audience): JWT bearer tokens verified against key_file (PEM
  // public key) or jwks_file (JSON Web Key Set); give one.
  //   role_claim  'role'   claim holding 'read' or 'admin' (or a list of them);
  //                        dots reach into objects: 'realm_access.roles'
  //   leeway      '30s'    clock skew allowed for exp and nbf
  //   algorithms  RS256, RS384, RS512, PS256, ES256, ES384, EdDSA
  adminJwt(issuer=error 'adminJwt: issuer is required',
           audience=error 'adminJwt: audience is required', key_file=null, jwks_file=null,
           role_claim='role', leeway='30s',
           algorithms=['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA'])::
    withoutNulls({
      issuer: issuer,
      audience: audience,
      key_file: key_file,
      jwks_file: jwks_file,
      role_claim: role_claim,
      leeway: leeway,
      algorithms: algorithms,
    }),

  // adminTls(cert_file, key_file): TLS for the admin gRPC server.
  //   client_ca_file  null  CAs of client certificates: mTLS, every client must
  //                         present one and its subject is the caller's identity
  adminTls(cert_file=error 'adminTls: cert_file is required',
           key_file=error 'adminTls: key_file is required', client_ca_file=null)::
    withoutNulls({
      cert_file: cert_file,
      key_file: key_file,
      client_ca_file: client_ca_file,
    }),

  // logging():
  //   level       'info'  debug | info | warning | error
  //   access_log  false   one JSON line per request on stderr
  logging(level='info', access_log=false):: {
    level: level,
    access_log: access_log,
  },

  // endpoint(url): one upstream of a cluster.
  //   url     required  http://host:port or https://host:port
  //   weight  1         1..1000
  //   id      null      unique in the cluster; null means 'host:port'; letters,
  //                     digits, '_', '.', ':', '[', ']', '-', at most 128
  //   labels  {}        free-form string labels: at most 64, keys 1-63
  //                     characters, values at most 255
  endpoint(url=error 'endpoint: url is required', weight=1, id=null, labels={})::
    withoutNulls({
      url: url,
      weight: weight,
      id: id,
      labels: if labels == {} then null else labels,
    }),

  // cluster(name, endpoints): a named group of endpoints. Defaults come from
  // _config.cluster:
  //   name                  required        letters, digits, '_', '.', '-'
  //   endpoints             []              endpoint() objects or URL strings
  //   lb_policy             'round_robin'   round_robin | least_request | random
  //   connect_timeout       '1s'
  //   timeout               '15s'           whole exchange; routes may override
  //   preserve_host         true
  //   max_idle_connections  64
  //   idle_timeout          '60s'
  //   tls                   tls()           how https:// endpoints are verified
  //   circuit_breaker       circuitBreaker()  per endpoint; on
  //   health_check          null            active checks off; healthCheck(path)
  //   retry                 retry()         on: 2 retries; a route may replace it
  //   retry_budget          retryBudget()   on: 0.2 retries per request, 3 at once, 10/s
  //   limits                limits()        on: 1024 in flight, 1024 pending
  //   panic_threshold       0.5             0..1: when fewer than this share of
  //                                         the endpoints pass their health
  //                                         checks, the checks are ignored
  //   slow_start            null            e.g. '30s': a new endpoint's weight
  //                                         ramps from 10% to 100% over it
  //   local_app             false           true: /ready is 503 while no endpoint
  //                                         of this cluster is healthy
  cluster(name=error 'cluster: name is required',
          endpoints=[],
          lb_policy=$._config.cluster.lb_policy,
          connect_timeout=$._config.cluster.connect_timeout,
          timeout=$._config.cluster.timeout,
          preserve_host=$._config.cluster.preserve_host,
          max_idle_connections=$._config.cluster.max_idle_connections,
          idle_timeout=$._config.cluster.idle_timeout,
          tls=$._config.cluster.tls,
          circuit_breaker=$._config.cluster.circuit_breaker,
          health_check=std.get($._config.cluster, 'health_check', null),
          retry=$._config.cluster.retry,
          retry_budget=$._config.cluster.retry_budget,
          limits=$._config.cluster.limits,
          panic_threshold=$._config.cluster.panic_threshold,
          slow_start=std.get($._config.cluster, 'slow_start', null),
          local_app=$._config.cluster.local_app)::
    assert std.isArray(endpoints) :
           'cluster %s: endpoints must be an array of endpoint() or URL strings' % name;
    withoutNulls({
      name: name,
      endpoints: [if std.isString(e) then $.endpoint(e) else e for e in endpoints],
      lb_policy: lb_policy,
      connect_timeout: connect_timeout,
      timeout: timeout,
      preserve_host: preserve_host,
      max_idle_connections: max_idle_connections,
      idle_timeout: idle_timeout,
      tls: tls,
      circuit_breaker: circuit_breaker,
      health_check: health_check,
      retry: retry,
      retry_budget: retry_budget,
      limits: limits,
      panic_threshold: panic_threshold,
      slow_start: slow_start,
      local_app: local_app,
    }),

  // tls(): verification of a cluster's https:// endpoints (http:// ignores it).
  //   ca_file      null   PEM file of the CAs to trust; null = the system's CAs
  //   server_name  null   SNI and certificate name; null = the endpoint's host
  //   verify       true   false accepts any certificate (tests only)
  tls(ca_file=null, server_name=null, verify=true)::
    withoutNulls({ ca_file: ca_file, server_name: server_name, verify: verify }),

  // circuitBreaker(): a cluster's per-endpoint circuit breaker. An endpoint's
  // breaker opens after `consecutive_failures` in a row, or when `failure_rate`
  // of the requests in `window` failed (with at least `min_requests` of them);
  // open, the endpoint gets no requests for `open_duration` (doubled after each
  // failed probe, up to `max_open_duration`); then `half_open_requests` probes
  // go through, and `close_after` successes close it. Defaults from
  // _config.cluster.circuit_breaker:
  //   enabled               true   false: never open
  //   consecutive_failures  5      1..1000
  //   failure_rate          0.5    (0, 1]
  //   min_requests          20
  //   window                '10s'
  //   open_duration         '5s'   +-10% jitter
  //   max_open_duration     '60s'  not below open_duration
  //   half_open_requests    1
  //   close_after           2
  //   failure_on            ['connect_failure', 'reset', 'timeout', 'gateway_error']
  //                         gateway_error: a 502, 503 or 504 answer; add '5xx'
  //                         for any 500-599
  circuitBreaker(enabled=$._config.cluster.circuit_breaker.enabled,
                 consecutive_failures=$._config.cluster.circuit_breaker.consecutive_failures,
                 failure_rate=$._config.cluster.circuit_breaker.failure_rate,
                 min_requests=$._config.cluster.circuit_breaker.min_requests,
                 window=$._config.cluster.circuit_breaker.window,
                 open_duration=$._config.cluster.circuit_breaker.open_duration,
                 max_open_duration=$._config.cluster.circuit_breaker.max_open_duration,
                 half_open_requests=$._config.cluster.circuit_breaker.half_open_requests,
                 close_after=$._config.cluster.circuit_breaker.close_after,
                 failure_on=$._config.cluster.circuit_breaker.failure_on):: {
    enabled: enabled,
    consecutive_failures: consecutive_failures,
    failure_rate: failure_rate,
    min_requests: min_requests,
    window: window,
    open_duration: open_duration,
    max_open_duration: max_open_duration,
    half_open_requests: half_open_requests,
    close_after: close_after,
    failure_on: failure_on,
  },

  // healthCheck(path): active HTTP checks of every endpoint of a cluster: GET
  // `path` every `interval`. Off unless a cluster has one. Defaults from
  // _config.health_check:
  //   path                 required     e.g. '/healthz'
  //   interval             '5s'         between checks of one endpoint
  //   jitter               '500ms'      +- on each interval; below interval
  //   timeout              '1s'         an unanswered check fails
  //   healthy_threshold    2            passes in a row to become healthy (a new
  //                                     endpoint needs only its first)
  //   unhealthy_threshold  3            failures in a row to become unhealthy
  //   expected_statuses    ['200-399']  codes (404) or ranges ('200-299')
  //   host                 null         Host header; null = endpoint's host:port
  healthCheck(path=error 'healthCheck: path is required',
              interval=$._config.health_check.interval,
              jitter=$._config.health_check.jitter,
              timeout=$._config.health_check.timeout,
              healthy_threshold=$._config.health_check.healthy_threshold,
              unhealthy_threshold=$._config.health_check.unhealthy_threshold,
              expected_statuses=$._config.health_check.expected_statuses,
              host=std.get($._config.health_check, 'host', null))::
    withoutNulls({
      path: path,
      interval: interval,
      jitter: jitter,
      timeout: timeout,
      healthy_threshold: healthy_threshold,
      unhealthy_threshold: unhealthy_threshold,
      expected_statuses: expected_statuses,
      host: host,
    }),

  // retry(): when a failed attempt is tried again, on another endpoint when
  // there is one. A cluster's applies to its routes; a route's replaces it as a
  // whole. Requests other than GET, HEAD, OPTIONS, TRACE, PUT and DELETE are
  // retried only on routes with retry_non_idempotent=true. Defaults from
  // _config.cluster.retry:
  //   enabled                 true     false: one attempt only
  //   retry_on                ['connect_failure', 'reset', 'timeout', 'gateway_error']
  //                           also '5xx', 'retriable_status_codes'
  //   retriable_status_codes  []       e.g. [409]; with 'retriable_status_codes'
  //                                    in retry_on
  //   max_retries             2        0..10, after the first try
  //   per_try_timeout         null     time for one try; null: the route's
  //                                    timeout bounds all tries together; not
  //                                    over that timeout
  //   backoff_base            '25ms'   first retry waits up to this, doubling
  //   backoff_max             '250ms'  cap of the backoff
  //   retry_buffer_bytes      65536    a streamed request body larger than this
  //                                    is not retried
  retry(enabled=$._config.cluster.retry.enabled,
        retry_on=$._config.cluster.retry.retry_on,
        retriable_status_codes=$._config.cluster.retry.retriable_status_codes,
        max_retries=$._config.cluster.retry.max_retries,
        per_try_timeout=std.get($._config.cluster.retry, 'per_try_timeout', null),
        backoff_base=$._config.cluster.retry.backoff_base,
        backoff_max=$._config.cluster.retry.backoff_max,
        retry_buffer_bytes=$._config.cluster.retry.retry_buffer_bytes)::
    withoutNulls({
      enabled: enabled,
      retry_on: retry_on,
      retriable_status_codes: retriable_status_codes,
      max_retries: max_retries,
      per_try_timeout: per_try_timeout,
      backoff_base: backoff_base,
      backoff_max: backoff_max,
      retry_buffer_bytes: retry_buffer_bytes,
    }),

  // retryBudget(): how many retries a cluster may make. A retry may go when
  // retries in flight are below max(min_concurrent, ratio x active requests), or
  // retries over the last `interval` are below ratio x its requests, or fewer than
  // min_retry_rate retries were made in the last second. Defaults from
  // _config.cluster.retry_budget:
  //   enabled         true   false: only max_retries bounds retries
  //   ratio           0.2    retries per request
  //   min_concurrent  3      retries always allowed at once
  //   interval        '10s'  window of the ratio
  //   min_retry_rate  10     retries a second always allowed (0: none)
  retryBudget(enabled=$._config.cluster.retry_budget.enabled,
              ratio=$._config.cluster.retry_budget.ratio,
              min_concurrent=$._config.cluster.retry_budget.min_concurrent,
              interval=$._config.cluster.retry_budget.interval,
              min_retry_rate=$._config.cluster.retry_budget.min_retry_rate):: {
    enabled: enabled,
    ratio: ratio,
    min_concurrent: min_concurrent,
    interval: interval,
    min_retry_rate: min_retry_rate,
  },

  // limits(): admission per cluster; over a limit a request gets 503 at once.
  // Defaults from _config.cluster.limits:
  //   enabled       true  false: no limits
  //   max_requests  1024  requests in flight to the cluster
  //   max_pending   1024  requests waiting for a connection
  limits(enabled=$._config.cluster.limits.enabled,
         max_requests=$._config.cluster.limits.max_requests,
         max_pending=$._config.cluster.limits.max_pending):: {
    enabled: enabled,
    max_requests: max_requests,
    max_pending: max_pending,
  },

  // A route's fallback: what answers when its cluster cannot (no healthy
  // endpoint, breakers open, over limits, or the last try failed). Combine
  // them with `+`; the sidecar tries them in the order cache, cluster, static
  // whatever the order written:
  //   fallback=sidecar.fallbackCache() + sidecar.fallbackStatic(503, 'try later')
  //
  // fallbackCache(): the last good 200 answer to the same GET. Defaults from
  // _config.fallback_cache:
  //   max_entries     1000   responses kept
  //   max_body_bytes  65536  larger responses are not kept
  //   max_age         '5m'   older responses are not used
  fallbackCache(max_entries=$._config.fallback_cache.max_entries,
                max_body_bytes=$._config.fallback_cache.max_body_bytes,
                max_age=$._config.fallback_cache.max_age):: {
    cache: { max_entries: max_entries, max_body_bytes: max_body_bytes, max_age: max_age },
  },

  // fallbackCluster(name): send the request to another cluster instead.
  //   name  required  a declared cluster other than the route's own
  fallbackCluster(name=error 'fallbackCluster: name is required'):: {
    cluster: name,
  },

  // fallbackStatic(): a fixed answer.
  //   status   503  200..599
  //   body     ''
  //   headers  {}   e.g. { 'Content-Type': 'application/json' }; not
  //                 Content-Length, Transfer-Encoding or Connection
  fallbackStatic(status=503, body='', headers={})::
    assert std.isObject(headers) : 'fallbackStatic: headers must be an object';
    {
      static: withoutNulls({
        status: status,
        body: body,
        headers: if headers == {} then null else headers,
      }),
    },

  // securityHeaders(): security headers set on a route's responses (the
  // upstream's own values replaced); each a header value, or null to leave it:
  //   hsts                  'max-age=31536000; includeSubDomains'
  //   content_type_options  'nosniff'
  //   frame_options         'DENY'
  //   referrer_policy       'no-referrer'
  // Use as: sidecar.route('/', 'app') + { security_headers: sidecar.securityHeaders() }
  securityHeaders(hsts='max-age=31536000; includeSubDomains',
                  content_type_options='nosniff',
                  frame_options='DENY',
                  referrer_policy='no-referrer'):: {
    hsts: hsts,
    content_type_options: content_type_options,
    frame_options: frame_options,
    referrer_policy: referrer_policy,
  },

  // route(prefix, cluster): requests whose path starts with `prefix` (longest
  // prefix wins) go to `cluster`.
  //   prefix          required  starts with '/'
  //   cluster         required  a cluster's name
  //   methods         null      allowed methods, e.g. ['GET', 'POST']; null = any
  //                             (others get 405)
  //   name            null      metric label; null means the prefix
  //   host            null      only this Host; '*.example.com' matches subdomains
  //   prefix_rewrite  null      replaces the matched prefix before forwarding
  //   timeout         null      overrides the cluster's timeout
  //   retry           null      retry(): replaces the cluster's retry as a whole
  //   retry_non_idempotent  false  true: also retry POST, PATCH...
  //   fallback        null      fallbackCache() + fallbackCluster(name) +
  //                             fallbackStatic(...): answers when the cluster
  //                             cannot
  //   max_request_body_bytes  null  larger bodies get 413; null: the listener's
  //   rate_limit      null      rateLimit(...): 429 over it; null: none
  //   (security_headers: add with `+ { security_headers: securityHeaders() }`)
  route(prefix=error 'route: prefix is required',
        cluster=error 'route: cluster is required',
        methods=null,
        name=null,
        host=null,
        prefix_rewrite=null,
        timeout=null,
        retry=null,
        retry_non_idempotent=false,
        fallback=null,
        max_request_body_bytes=null,
        rate_limit=null)::
    assert methods == null || std.isArray(methods) :
           "route %s: methods must be an array like ['GET'], or null for any" % prefix;
    withoutNulls({
      prefix: prefix,
      cluster: cluster,
      methods: methods,
      name: name,
      host: host,
      prefix_rewrite: prefix_rewrite,
      timeout: timeout,
      retry: retry,
      retry_non_idempotent: retry_non_idempotent,
      fallback: fallback,
      max_request_body_bytes: max_request_body_bytes,
      rate_limit: rate_limit,
    }),

  // rateLimit(requests_per_second): a route's local rate limit, a token bucket
  // per key; a request that finds it empty gets 429 with Retry-After and
  // RateLimit-Limit, -Remaining, -Reset.
  //   requests_per_second  required  tokens added a second
  //   burst                0         bucket size; 0: requests_per_second
  //                                  rounded up (at least 1)
  //   key                  'none'    'none' (one bucket), 'client_ip', or
  //                                  'header:NAME'
  //   max_keys             10000     buckets kept (least recently used go)
  rateLimit(requests_per_second=error 'rateLimit: requests_per_second is required',
            burst=0, key='none', max_keys=10000):: {
    requests_per_second: requests_per_second,
    burst: burst,
    key: key,
    max_keys: max_keys,
  },

  // localApp(port): the application beside the sidecar, as a fragment to add
  // to config(): a cluster named _config.local_app.name ('local_app') with the
  // one endpoint http://127.0.0.1:PORT, and a catch-all route '/' to it.
  //   port          required  1..65535
  //   host          '127.0.0.1' (_config.local_app.host)
  //   name          'local_app' (_config.local_app.name)
  //   health_check  null      e.g. healthCheck('/healthz'); null: no active checks
  //   local_app     false     true: the sidecar's /ready is 503 while the app's
  //                           endpoint is not healthy (the cluster's local_app)
  //   cluster       {}        merged into the cluster, e.g. { timeout: '30s' }
  //   route         {}        merged into the route, e.g. { methods: ['GET'] }
  localApp(port=error 'localApp: port is required',
           host=$._config.local_app.host,
           name=$._config.local_app.name,
           health_check=null,
           local_app=false,
           cluster={},
           route={})::
    assert std.isNumber(port) && port == std.floor(port) && port >= 1 && port <= 65535 :
           'localApp: port must be an integer in 1..65535, got %s' % std.toString(port);
    {
      clusters+: [$.cluster(name,
                            [$.endpoint('http://%s:%d' % [host, port])],
                            health_check=health_check,
                            local_app=local_app) + cluster],
      routes+: [$.route('/', name, name=name) + route],
    },
}
