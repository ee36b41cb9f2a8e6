"""The package version (a leaf, so every layer may read it)."""

__version__ = "0.1.0"
