"""One module per command; each reads top to bottom and calls library functions."""
