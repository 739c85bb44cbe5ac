"""Training tools: masks for region-weighted codecs (masks.py), learned-codec training (lic.py),
and the light Mask R-CNN / Panoptic-DeepLab trained on synth (synth_tasks.py)."""
