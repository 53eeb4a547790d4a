"""Observability: the metrics registry, Prometheus rendering, the log buffer."""
