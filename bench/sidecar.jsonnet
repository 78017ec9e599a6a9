// The sidecar as a benchmark peer: every resilience default on (breakers, retries and
// their budget, limits), plus active health checks of the bench upstream.
//   sidecar run --config bench/sidecar.jsonnet --ext-str upstream=http://127.0.0.1:18080
local sidecar = import 'sidecar.libsonnet';

sidecar.config({
  clusters: [
    sidecar.cluster('upstream', [std.extVar('upstream')]) + {
      health_check: sidecar.healthCheck('/small'),
    },
  ],
  routes: [sidecar.route('/', 'upstream')],
})
