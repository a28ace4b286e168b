"""The drive server: accounts, metadata database, block service, change feed, HTTP API.

Layer rule: imports `blockstore` only; never `syncd` or `mountfs`.
"""
