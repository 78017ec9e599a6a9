"""What operators look at: Prometheus metrics (a collector) and structured JSON logs."""
