"""wsimil.training."""
