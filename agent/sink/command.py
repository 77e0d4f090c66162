"""The ``citygate sink`` command line (../shared/spec/cli.md): options to :class:`SinkSettings`.

Imports nothing heavy: the parser is built for every ``citygate`` command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit

from citygate import logs

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_WILDCARDS = frozenset("+#/\x00")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``citygate sink``."""
    p.add_argument(
        "--broker",
        action="append",
        required=True,
        metavar="URL",
        help="mqtt://HOST[:PORT] or mqtts://…; repeat for the nodes of a cluster",
    )
    p.add_argument(
        "--database",
        required=True,
        metavar="DSN",
        help="postgresql://USER@HOST[:PORT]/DB (password: PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--share", metavar="GROUP", help="a shared subscription: sinks split the load")
    p.add_argument(
        "--client-id",
        metavar="ID",
        help="the MQTT session's id (default: citygate-sink-<host name>[-<group>])",
    )
    p.add_argument("--topic-prefix", default="city", metavar="P", help="default %(default)s")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT version")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path)
    p.add_argument("--ca-file", type=Path, help="CA certificates for mqtts:// (default: system)")
    p.add_argument(
        "--batch-rows", type=int, default=5000, help="readings per transaction (%(default)s)"
    )
    p.add_argument(
        "--batch-ms",
        type=float,
        default=100.0,
        help="longest wait for a batch to fill, ms (%(default)s)",
    )
    p.add_argument(
        "--receive-maximum",
        type=int,
        default=500,
        help="unacknowledged messages the broker may have in flight to the sink (%(default)s)",
    )
    p.add_argument(
        "--stats-interval",
        type=float,
        default=60.0,
        help="seconds between counter lines in the log (%(default)s)",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run_sink(args: argparse.Namespace) -> int:
    """Check the options, run the sink until SIGTERM/SIGINT; the exit status."""
    try:  # here, not at the top: asyncpg comes with the optional extra
        from citygate.sink.service import (  # noqa: PLC0415
            Endpoint,
            SinkSettings,
            default_client_id,
            run,
        )
    except ImportError as exc:
        print(
            f"citygate sink: {exc.name or exc} is missing: install the extra, "
            "pip install 'citygate[sink]'",
            file=sys.stderr,
        )
        return EXIT_FAILURE

    def usage(message: str) -> int:
        print(f"citygate sink: {message}", file=sys.stderr)
        return EXIT_USAGE

    endpoints = []
    for url in args.broker:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            return usage(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://…")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            return usage(f"--broker {url!r}: bad port")
        endpoints.append(Endpoint(url, parts.hostname, port, parts.scheme == "mqtts"))
    if len({e.tls for e in endpoints}) > 1:
        return usage("--broker: all mqtt:// or all mqtts://")
    if not args.database.startswith(("postgresql://", "postgres://")):
        return usage("--database: expected postgresql://USER@HOST[:PORT]/DATABASE")
    if not args.topic_prefix or "+" in args.topic_prefix or "#" in args.topic_prefix:
        return usage("--topic-prefix: a topic without wildcards")
    if args.share is not None and (not args.share or _WILDCARDS & set(args.share)):
        return usage("--share: a group name without '/', '+' or '#'")
    if args.client_id is not None and not args.client_id:
        return usage("--client-id: empty")
    if args.batch_rows < 1 or not args.batch_ms >= 0 or not 1 <= args.receive_maximum <= 65535:
        return usage("--batch-rows ≥ 1, --batch-ms ≥ 0, --receive-maximum 1 to 65535")
    if not args.stats_interval > 0:
        return usage("--stats-interval must be positive")
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return usage(f"--password-file: {exc}")
    settings = SinkSettings(
        brokers=tuple(endpoints),
        database=args.database,
        client_id=args.client_id or default_client_id(args.share),
        topic_prefix=args.topic_prefix,
        share=args.share,
        protocol=args.protocol,
        username=args.username,
        password=password,
        ca_file=str(args.ca_file) if args.ca_file else None,
        batch_rows=args.batch_rows,
        batch_ms=args.batch_ms,
        receive_maximum=args.receive_maximum,
        stats_interval=args.stats_interval,
    )
    logs.setup(args.log_level)
    return run(settings)
