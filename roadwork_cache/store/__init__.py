"""Layer 4, the feature cache: the only package that knows Zarr."""
