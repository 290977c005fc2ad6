"""The package version (one place; lcp/__init__ and the run folder format read it)."""

__version__ = "0.1.0"
