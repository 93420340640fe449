"""Synthetic road scenes in the exact NATIX parquet format: demo and test data.

layout.py decides what a video shows, scene.py draws a frame of it, dataset.py plans videos
and writes the parquet shards (`write_synthetic`)."""
