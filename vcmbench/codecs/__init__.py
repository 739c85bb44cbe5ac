"""Codec adapters (see :mod:`vcmbench.codecs.base` for the contract)."""
