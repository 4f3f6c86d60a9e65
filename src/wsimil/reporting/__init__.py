"""wsimil.reporting."""
