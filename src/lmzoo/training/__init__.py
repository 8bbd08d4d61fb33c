"""Training: the Lightning module that wraps any model, its data, optimizer, callbacks and run."""
