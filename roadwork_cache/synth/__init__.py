"""Synthetic road scenes in the exact NATIX parquet format: demo and test data."""
