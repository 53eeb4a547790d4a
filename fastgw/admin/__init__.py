"""The admin API (``/admin/*`` on ``monitoring.admin``): router, HTTP server, endpoints.

Layer: between ``runtime`` (the control process serves it) and the middlewares; it
imports only ``config``, ``http`` wire helpers and ``obs``.  See ``api.py`` for the
endpoints and how to add one.
"""
