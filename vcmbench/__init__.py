"""vcmbench: a benchmark harness for image and video coding for machines."""

__version__ = "0.1.0"
