"""Scoring masks with the DAVIS semi-supervised protocol: the region (J) and boundary (F) measures and
per-sequence statistics, over folders of predictions.
"""
