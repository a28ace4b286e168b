"""Block library shared by client and server: chunking, block ids, codec, keys, stores.

Layer rule: no networking, no FUSE, no HTTP routes. Imported by `server`, `syncd` and
`mountfs`; imports none of them.
"""
