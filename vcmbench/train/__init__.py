"""Training tools: the ``vcmbench masks`` / ``vcmbench train`` commands (commands.py; the mask sources
themselves are :mod:`vcmbench.masks`), learned-codec training (lic.py), the synth YOLOv8 models
(synth_yolo.py, ``vcmbench train-synth``) and the light Mask R-CNN / Panoptic-DeepLab trained on synth
(synth_tasks.py)."""
