"""The `drive` command: the composition root that wires server, mount and sync daemon.

It is the only package allowed to import both `server` and `mountfs`, and it does so lazily,
per subcommand, so `drive --help` stays fast.
"""
