"""Synthetic image dataset factory: make, curate, version and prove synthetic training data."""

__version__ = "0.1.0"
