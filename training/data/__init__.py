"""Readers for the data formats users hold, splits, and the pre-training / downstream datasets."""
