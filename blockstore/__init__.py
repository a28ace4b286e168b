"""Block library shared by client and server: chunking, block ids, codec, keys, stores.

Layer rule: no FUSE, no HTTP routes, and no networking but the S3 block store's
object-store client (obstore). Imported by `server`, `syncd` and
`mountfs`; imports none of them.
"""
