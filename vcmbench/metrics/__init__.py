"""Metrics: COCO mAP (pycocotools) and Bjontegaard deltas."""
