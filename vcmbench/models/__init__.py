"""Neural network models: learned image codecs (``tcm.py``, ``lic.py``) and task models."""
