"""Failover (L3): active health checks and passive outlier ejection (both run in the
control process and publish to ``shm.health``), and the retry policy and budget the
proxy consults (docs/resilience.md)."""
