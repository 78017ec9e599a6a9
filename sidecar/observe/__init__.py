"""What operators look at: Prometheus metrics (a collector), structured JSON logs, and
rolling request statistics over the last 10 minutes (GetStats: `stats`, `window`)."""
