"""Demo and test upstreams (not part of the data plane; nothing in fastgw imports this)."""
