"""Task adapters: a vision model plus its standard metric."""
