"""Executors run the independent pieces of a grid (encodes, decodes) in parallel."""
