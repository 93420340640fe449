"""Readers of the inputs of stage one, metadata parsing and the synthetic data generator."""
