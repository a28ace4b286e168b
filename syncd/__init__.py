"""The sync daemon: remote client (the client's one HTTP module), uploader, follower.

Layer rule: imports `blockstore` only; never `server` or `mountfs`.
"""
