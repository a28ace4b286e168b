"""The FUSE mount: the only package that imports pyfuse3.

Layer rule: may import `syncd` and `blockstore`; never `server`.
"""
