"""``make bench``: the performance figures of issues 2 and 3, measured, never asserted.

Run ``python -m tests.bench [--quick] [PART ...]`` from the repository root; parts are
``e2e``, ``pipeline``, ``buffer``, ``backlog``, ``rtu``, ``ble``, ``sdwear``, ``wmbus`` …
(default: all; see ``__main__.PARTS``; a part is a module with ``run(quick) -> PartResult``).
Each part starts and stops its own processes (Mosquitto, the Modbus simulator, the agent)
on loopback, keeps its files under ``var/bench/`` and prints a table; every figure also
goes to ``var/bench/latest.json``.
"""
