// The classic sidecar: the application container listens on 127.0.0.1:8080 and
// every request reaching the sidecar goes to it (a cluster `local_app` and a
// catch-all route, from sidecar.localApp()). The app is health-checked, and the
// sidecar reports not ready while it is down.
//
// The environment comes from the `env` external variable: dev, staging or prod.
// It is required (Jsonnet has no default for an unset std.extVar):
//
//   jsonnet -J configs --ext-str env=dev configs/examples/local-app.jsonnet
//   sidecar config validate --ext-str env=prod configs/examples/local-app.jsonnet
local sidecar = import 'sidecar.libsonnet';

local env = sidecar.env(std.extVar('env'));

// Everything that differs between environments, in one place.
local perEnv = {
  dev: {
    listen: '127.0.0.1:8000',  // reachable from the developer's machine only
    log_level: 'debug',
    access_log: true,
    timeout: sidecar.s(60),  // room for a debugger
  },
  staging: {
    listen: '0.0.0.0:8000',  // reachable from the rest of the cluster
    log_level: 'info',
    access_log: true,
    timeout: sidecar.s(15),
  },
  prod: {
    listen: '0.0.0.0:8000',
    log_level: 'info',
    access_log: false,
    timeout: sidecar.s(15),
  },
}[env];

sidecar.config({
  listener: sidecar.listener(address=perEnv.listen),
  // The admin plane (gRPC API, /metrics, /live, /ready) stays on 127.0.0.1.
  admin: sidecar.admin(state_file=if env == 'dev' then null else '/var/lib/sidecar/state.json'),
  logging: sidecar.logging(level=perEnv.log_level, access_log=perEnv.access_log),
}) + sidecar.localApp(
  8080,
  // The app answers GET /healthz. With local_app=true the sidecar's /ready is 503
  // while the app fails its checks, so the pod leaves the Service's endpoints
  // until the app is back.
  health_check=sidecar.healthCheck('/healthz', interval=sidecar.s(2)),
  local_app=true,
  cluster={
    connect_timeout: sidecar.ms(250),  // the app is local: failing to connect means it is down
    timeout: perEnv.timeout,
  },
)
