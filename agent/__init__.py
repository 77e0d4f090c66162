"""citygate: the edge gateway agent (runtime)."""

__version__ = "0.1.0"
