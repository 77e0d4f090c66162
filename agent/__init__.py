"""citygate: the edge gateway agent (runtime)."""

from citygate.drivers.api import __version__

__all__ = ["__version__"]
