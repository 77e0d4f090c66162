"""Wireless M-Bus (EN 13757-4, the OMS profile): water and heat meters heard by radio.

Sans-I/O layers so far: :mod:`~citygate.drivers.wmbus.frame` (link layer, formats A and
B), :mod:`~citygate.drivers.wmbus.transport` (ELL, AFL, TPL headers),
:mod:`~citygate.drivers.wmbus.security` (OMS security modes 5 and 7, ELL AES-CTR) and
:mod:`~citygate.drivers.wmbus.decode` (bytes → the wired decoder's ``Telegram``).
"""
