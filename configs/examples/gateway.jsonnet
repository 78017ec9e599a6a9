// A gateway in front of two services, as in the earlier design's example:
// /api/users goes to user_service (two endpoints), /api/orders to order_service.
//
// The earlier addressing also works without a route: a request for
// /orchestrator/{cluster}/{path} goes to {cluster} with /orchestrator/{cluster}
// stripped, e.g. GET /orchestrator/order_service/orders/7 -> order_service
// GET /orders/7. That is listener.orchestrator_prefix, '/orchestrator/' by
// default; set it to null to turn it off.
//
//   jsonnet -J configs configs/examples/gateway.jsonnet
//   sidecar config validate configs/examples/gateway.jsonnet
local sidecar = import 'sidecar.libsonnet';

sidecar.config({
  listener: sidecar.listener(address='0.0.0.0:8000'),
  clusters: [
    sidecar.cluster(
      'user_service',
      ['http://127.0.0.1:8001', 'http://127.0.0.1:8002'],
      lb_policy='least_request',
      connect_timeout=sidecar.ms(500),
      timeout=sidecar.s(5),
      // An endpoint failing 3 checks in a row gets no requests until it passes 2.
      health_check=sidecar.healthCheck('/healthz'),
      // A (re)started endpoint warms up: its share ramps up over 30s.
      slow_start=sidecar.s(30),
    ),
    sidecar.cluster(
      'order_service',
      [sidecar.endpoint('http://127.0.0.1:8003', labels={ zone: 'a' })],
      timeout=sidecar.s(10),
    ),
  ],
  routes: [
    // /api/users/42 -> user_service /users/42. When user_service cannot answer,
    // a GET gets the last good answer to the same URL (up to 5 minutes old),
    // anything else a 503 in JSON.
    sidecar.route('/api/users', 'user_service', name='users', prefix_rewrite='/users',
                  fallback=sidecar.fallbackCache() + sidecar.fallbackStatic(
                    503, '{"error": "users are unavailable, try again later"}\n',
                    { 'Content-Type': 'application/json' })),
    // /api/orders/7 -> order_service /api/orders/7; other methods get 405.
    // Orders are slow: each try gets 10s and one retry (GET only: POST is not
    // idempotent) within the route's 30s.
    sidecar.route('/api/orders', 'order_service', name='orders', methods=['GET', 'POST'],
                  timeout=sidecar.s(30),
                  retry=sidecar.retry(max_retries=1, per_try_timeout=sidecar.s(10))),
  ],
})
