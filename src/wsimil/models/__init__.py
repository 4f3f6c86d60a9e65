"""wsimil.models."""
