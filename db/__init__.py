"""Persistence: tables derived from the model, the write path, the object cache."""
