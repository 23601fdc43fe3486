"""Pieces of benchmarks/transfer_study.py: target data, the segmentation model, one adaptation run."""
