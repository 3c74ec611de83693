"""Test helpers that ship with slowtune: tiny model builders used by the test suite and `slowtune bench`.

Nothing here imports Qt, and the heavy libraries (mlx, mlx_lm, transformers) are only imported inside the
functions that need them, so importing this package stays cheap.
"""
