"""wsimil.evaluation."""
