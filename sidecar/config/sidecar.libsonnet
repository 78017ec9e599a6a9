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
//   own default (stated beside each parameter; sidecar/config.py holds the same
//   values and tests/unit/test_config.py checks that they agree), so the rendered
//   JSON shows the values in effect. Optional fields whose default is "nothing"
//   (null, {}) are left out unless you set them.
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

{
  _config+:: {
    // Defaults of every cluster() and of clusters created by run-time
    // registration (config() writes them as `cluster_defaults`). Same values as
    // ClusterSettings in sidecar/config.py.
    cluster: {
      lb_policy: 'round_robin',  // round_robin | least_request | random
      connect_timeout: '1s',  // time to open a connection
      timeout: '15s',  // whole upstream exchange; a route may override it
      preserve_host: true,  // send the client's Host upstream (false: the endpoint's)
      max_idle_connections: 64,  // idle keep-alive connections kept per endpoint
      idle_timeout: '60s',  // idle connections are closed after this
      tls: { verify: true },  // verification of https:// endpoints; see tls()
    },
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
  //   cluster_defaults  _config.cluster
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
      cluster_defaults: $._config.cluster,
      clusters: [],
      routes: [],
    } + spec,

  // listener(): where the sidecar accepts requests.
  //   address              '127.0.0.1:8000'   HOST:PORT
  //   orchestrator_prefix  '/orchestrator/'   the earlier design's addressing:
  //                        PREFIX{cluster}/{path} goes to {cluster} with
  //                        PREFIX{cluster} stripped; null turns it off
  //   max_uri_bytes        8190               longer request targets get 414
  //   max_header_bytes     8190               longer header lines get 431
  //   max_headers          100                more request headers get 431
  //   drain_timeout        '30s'              on SIGTERM, time given to requests
  //                                           in flight before exiting
  listener(address='127.0.0.1:8000',
           orchestrator_prefix='/orchestrator/',
           max_uri_bytes=8190,
           max_header_bytes=8190,
           max_headers=100,
           drain_timeout='30s'):: {
    address: address,
    orchestrator_prefix: orchestrator_prefix,
    max_uri_bytes: max_uri_bytes,
    max_header_bytes: max_header_bytes,
    max_headers: max_headers,
    drain_timeout: drain_timeout,
  },

  // admin(): the admin plane.
  //   grpc_address  '127.0.0.1:9901'  AdminService (gRPC)
  //   http_address  '127.0.0.1:9902'  /metrics, /live and /ready
  //   state_file    null              file keeping endpoints registered at run
  //                                   time across restarts; null keeps none
  admin(grpc_address='127.0.0.1:9901', http_address='127.0.0.1:9902', state_file=null)::
    withoutNulls({
      grpc_address: grpc_address,
      http_address: http_address,
      state_file: state_file,
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
  //   id      null      unique in the cluster; null means 'host:port'
  //   labels  {}        free-form string labels
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
  cluster(name=error 'cluster: name is required',
          endpoints=[],
          lb_policy=$._config.cluster.lb_policy,
          connect_timeout=$._config.cluster.connect_timeout,
          timeout=$._config.cluster.timeout,
          preserve_host=$._config.cluster.preserve_host,
          max_idle_connections=$._config.cluster.max_idle_connections,
          idle_timeout=$._config.cluster.idle_timeout,
          tls=$._config.cluster.tls)::
    assert std.isArray(endpoints) :
           'cluster %s: endpoints must be an array of endpoint() or URL strings' % name;
    {
      name: name,
      endpoints: [if std.isString(e) then $.endpoint(e) else e for e in endpoints],
      lb_policy: lb_policy,
      connect_timeout: connect_timeout,
      timeout: timeout,
      preserve_host: preserve_host,
      max_idle_connections: max_idle_connections,
      idle_timeout: idle_timeout,
      tls: tls,
    },

  // tls(): verification of a cluster's https:// endpoints (http:// ignores it).
  //   ca_file      null   PEM file of the CAs to trust; null = the system's CAs
  //   server_name  null   SNI and certificate name; null = the endpoint's host
  //   verify       true   false accepts any certificate (tests only)
  tls(ca_file=null, server_name=null, verify=true)::
    withoutNulls({ ca_file: ca_file, server_name: server_name, verify: verify }),

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
  route(prefix=error 'route: prefix is required',
        cluster=error 'route: cluster is required',
        methods=null,
        name=null,
        host=null,
        prefix_rewrite=null,
        timeout=null)::
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
    }),

  // localApp(port): the application beside the sidecar, as a fragment to add
  // to config(): a cluster named _config.local_app.name ('local_app') with the
  // one endpoint http://127.0.0.1:PORT, and a catch-all route '/' to it.
  //   port     required  1..65535
  //   host     '127.0.0.1' (_config.local_app.host)
  //   name     'local_app' (_config.local_app.name)
  //   cluster  {}        merged into the cluster, e.g. { timeout: '30s' }
  //   route    {}        merged into the route, e.g. { methods: ['GET'] }
  localApp(port=error 'localApp: port is required',
           host=$._config.local_app.host,
           name=$._config.local_app.name,
           cluster={},
           route={})::
    assert std.isNumber(port) && port == std.floor(port) && port >= 1 && port <= 65535 :
           'localApp: port must be an integer in 1..65535, got %s' % std.toString(port);
    {
      clusters+: [$.cluster(name, [$.endpoint('http://%s:%d' % [host, port])]) + cluster],
      routes+: [$.route('/', name, name=name) + route],
    },
}
