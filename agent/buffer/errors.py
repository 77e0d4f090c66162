"""The buffer's one public error."""

from __future__ import annotations

from citygate.drivers.api import CitygateError

__all__ = ["BufferError"]


class BufferError(CitygateError):
    """The buffer cannot go on: the agent must stop (see ``citygate.buffer``, "Errors")."""
