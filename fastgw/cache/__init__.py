"""The response cache (L2): RFC 9111 rules, keys, the per-worker store, and the cache's own fetches (warming, background refresh)."""
