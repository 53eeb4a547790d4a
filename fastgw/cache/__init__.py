"""The response cache's store and RFC 9111 rules (L2): no I/O, no event loop."""
