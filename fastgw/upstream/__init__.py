"""Upstream side: peers, keep-alive pools, the client protocol."""
