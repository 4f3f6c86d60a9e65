"""wsimil.datasets."""
