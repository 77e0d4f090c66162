-- citygate sink: the PostgreSQL schema (applied by `citygate sink` at every connection to the
-- database; idempotent, so it can also be applied by hand: psql -f schema.sql).
--
-- One row per reading (mqtt.md, "Data messages"). Delivery is at least once: the primary key
-- (gateway, seq, quantity) — seq numbers a gateway's samples, a quantity appears once per
-- sample — makes a re-delivered message insert nothing (INSERT ... ON CONFLICT DO NOTHING).
-- Exactly one of value / value_text / value_bool is set (SenML v / vs / vb).
-- stored_at is when the sink wrote the row (end-to-end latency = stored_at - time).

BEGIN;
-- Two sinks starting together must not race on CREATE ... IF NOT EXISTS.
SELECT pg_advisory_xact_lock(7316405281);

CREATE TABLE IF NOT EXISTS readings (
    gateway     text             NOT NULL,
    device      text             NOT NULL,
    quantity    text             NOT NULL,
    time        timestamptz      NOT NULL,
    value       double precision,
    value_text  text,
    value_bool  boolean,
    unit        text,
    seq         bigint           NOT NULL,
    stored_at   timestamptz      NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (gateway, seq, quantity)
);

-- Time-range queries of one series: WHERE gateway = $1 AND device = $2 AND quantity = $3
-- AND time >= $4 AND time < $5 (ORDER BY time) is one index range scan, whatever the table's size.
CREATE INDEX IF NOT EXISTS readings_series ON readings (gateway, device, quantity, time);

-- Messages that are not data messages of the contract (bad JSON/CBOR, no bn or seq, wrong
-- types, too large) or that the database refused: kept for inspection, then acknowledged.
CREATE TABLE IF NOT EXISTS dead_letter (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic         text        NOT NULL,
    payload       bytea       NOT NULL,  -- the first 64 KiB
    payload_size  integer     NOT NULL,  -- the whole payload's size in bytes
    error         text        NOT NULL,  -- "<kind>: <detail>"
    received_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_received_at ON dead_letter (received_at);

COMMIT;
