"""Middlewares (L6): one file each, importing only L0-L4 (never another middleware,
the engine or the protocol).  ``registry`` lists them in the gateway's fixed order."""
