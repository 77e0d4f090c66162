"""The ``mbus`` driver: wired M-Bus water and heat meters (EN 13757-2/-3).

Its config model lives in :mod:`citygate.drivers.mbus.config` (``FIELDS``, ``configure``,
``DEFAULT_INTERVAL``).
"""
