// The container image's default config (the Dockerfile copies it to
// /etc/sidecar/sidecar.jsonnet; mount your own /etc/sidecar to replace it).
//
// The classic sidecar: the application listens on 127.0.0.1:8080 in the same
// network namespace (the same Kubernetes pod, or `docker run --network
// container:APP`), and every request reaching port 8000 goes to it. The admin
// plane (gRPC API, /metrics, /live, /ready) stays on 127.0.0.1, where the image's
// HEALTHCHECK reaches it.
//
//   sidecar config validate configs/docker.jsonnet
//   jsonnet -J configs configs/docker.jsonnet
local sidecar = import 'sidecar.libsonnet';

sidecar.config({
  listener: sidecar.listener(address='0.0.0.0:8000'),
  admin: sidecar.admin(grpc_address='127.0.0.1:9901', http_address='127.0.0.1:9902'),
}) + sidecar.localApp(8080)
