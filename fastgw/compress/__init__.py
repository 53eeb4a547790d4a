"""Content codings (L2): Accept-Encoding negotiation (``negotiate``) and the gzip, br and
zstd codecs (``codecs``): streaming encoders for responses, bounded decoders for request
bodies.  Pure: no config, no I/O, no pipeline."""
