"""The SDK's version, also the distribution's (pyproject.toml reads it here)."""

__version__ = "0.1.0"
