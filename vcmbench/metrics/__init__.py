"""Metrics: COCO mAP (pycocotools' protocol; faster-coco-eval or pycocotools as backend), PQ and Bjontegaard deltas."""
