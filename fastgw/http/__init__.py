"""HTTP/1.1 wire layer: prebuilt bytes, header helpers, path normalisation, the protocols."""
