"""Studies of one method's choices, outside the experiments (docs/methods.md)."""
