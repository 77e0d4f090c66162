"""Issue 18: the sink's time-range query on 100 M readings — ``python -m tests.fleet.plan100m``.

Fills a throw-away PostgreSQL cluster (tests/support/postgres.py) with the sink's schema and
100 M readings (1,000 gateways × 10 quantities × 10,000 one-minute samples, inserted in time
order as a fleet delivers them; the keys are built after the load, as a restore would), then
prints the plan of one day of one series, first from disk, then warm, then another series.
Needs ~25 GB of free disk under /tmp and about 11 minutes on a 2-core VM.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.support.postgres import Postgres

SCHEMA = Path(__file__).resolve().parents[2] / "agent" / "sink" / "schema.sql"
PSQL_FLAGS = ("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")
QUERY = """EXPLAIN (ANALYZE, BUFFERS) SELECT time, value FROM readings
WHERE gateway = '{gateway}' AND device = 'meter-1' AND quantity = '{quantity}'
  AND time >= '2025-11-25' AND time < '2025-11-26' ORDER BY time"""


def main() -> None:
    pg = Postgres().start()

    def sql(statement: str) -> str:
        started = time.monotonic()
        done = subprocess.run(  # no timeout: the load and the index builds take minutes
            [str(pg.bindir / "psql"), *PSQL_FLAGS, "-d", pg.dsn, "-c", statement],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        print(f"-- {time.monotonic() - started:.0f} s: {statement.splitlines()[0][:70]}")
        return done.stdout

    try:
        sql(SCHEMA.read_text())
        sql("ALTER TABLE readings DROP CONSTRAINT readings_pkey; DROP INDEX readings_series")
        sql("ALTER TABLE readings SET (autovacuum_enabled = false)")
        sql(
            "INSERT INTO readings (gateway, device, quantity, time, value, unit, seq)\n"
            "SELECT 'gw-' || lpad(g::text, 4, '0'), 'meter-1', 'q' || q,"
            " timestamptz '2025-11-20' + s * interval '1 minute', (g * 10 + q + s) % 1000 + 0.5,"
            " 'W', s FROM generate_series(0, 9999) s, generate_series(0, 999) g,"
            " generate_series(0, 9) q"
        )
        sql(
            "SET maintenance_work_mem = '2GB';"
            " ALTER TABLE readings ADD PRIMARY KEY (gateway, seq, quantity)"
        )
        sql(
            "SET maintenance_work_mem = '2GB';"
            " CREATE INDEX readings_series ON readings (gateway, device, quantity, time)"
        )
        sql("VACUUM ANALYZE readings")
        print(
            sql(
                "SELECT count(*), pg_size_pretty(pg_total_relation_size('readings')),"
                " pg_size_pretty(pg_relation_size('readings_series')) FROM readings"
            )
        )
        for label, gateway, quantity in (
            ("from disk", "gw-0100", "q3"),
            ("warm", "gw-0100", "q3"),
            ("another series, from disk", "gw-0777", "q7"),
        ):
            print(label)
            print(sql(QUERY.format(gateway=gateway, quantity=quantity)))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
