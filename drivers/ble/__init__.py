"""The ``ble`` driver: environmental sensors heard through their adverts.

Its config model lives in :mod:`citygate.drivers.ble.config` (``FIELDS``, ``configure``,
``DEFAULT_INTERVAL``).
"""
