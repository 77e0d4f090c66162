"""``citygate cmd``: the operator's side of the command channel (mqtt.md, Commands).

One MQTT 5 request with a Response Topic (a fresh subscription on a unique topic under the
gateway's ``P/G/cmd/<name>/reply/``, which the reference ACL lets the gateway write) and
Correlation Data; the reply is printed as JSON. Exit 0 when the reply says ``ok``, 1 when it
does not (or the broker cannot be reached), 2 on a usage error, 3 when no reply came in time.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3


def parse_arg(text: str) -> tuple[str, Any]:
    """``k=v``: v as JSON when it parses (``230.5``, ``true``, ``"x"``), else the string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--arg {text!r}: expected KEY=VALUE")
    try:
        value = json.loads(raw, parse_constant=_refuse)
    except ValueError:
        value = raw
    return key, value


def _refuse(text: str) -> Any:
    raise ValueError(text)


def _usage(message: str) -> int:
    print(f"citygate cmd: {message}", file=sys.stderr)
    return EXIT_USAGE


def send_command(args: argparse.Namespace) -> int:
    """Send the request ``args`` describe; print the reply; the exit status."""
    try:
        arguments = dict(parse_arg(a) for a in args.arg)
    except ValueError as exc:
        return _usage(str(exc))
    url = urlsplit(args.broker)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname:
        return _usage(f"--broker {args.broker!r}: expected mqtt://HOST[:PORT] or mqtts://…")
    try:
        port = url.port or (8883 if url.scheme == "mqtts" else 1883)
    except ValueError:
        return _usage(f"--broker {args.broker!r}: bad port")
    if not args.timeout > 0:
        return _usage("--timeout must be positive")
    password = None
    if args.password_file is not None:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            return _usage(f"--password-file: {exc}")

    base = f"{args.prefix}/{args.gateway}/cmd/{args.name}"
    token = secrets.token_hex(8)
    reply_topic = f"{base}/reply/{token}"
    request: dict[str, Any] = {"id": f"cli-{token}"}
    if args.device is not None:
        request["device"] = args.device
    if arguments:
        request["args"] = arguments
    request["expires"] = round(time.time() + args.timeout, 3)

    replied = threading.Event()
    subscribed = threading.Event()
    reply: list[bytes] = []
    failure: list[str] = []
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"citygate-cmd-{token}",
        protocol=paho.MQTTv5,
    )
    if args.username is not None:
        client.username_pw_set(args.username, password)
    if url.scheme == "mqtts":
        client.tls_set()

    def on_connect(c: paho.Client, u: Any, f: Any, reason: ReasonCode, p: Any) -> None:
        if reason.is_failure:
            failure.append(f"connection refused: {reason.getName()}")
            replied.set()
            return
        c.subscribe(reply_topic, qos=1)

    def on_subscribe(c: paho.Client, u: Any, mid: int, codes: list[ReasonCode], p: Any) -> None:
        if codes and codes[0].is_failure:
            failure.append(f"subscription to {reply_topic} refused: {codes[0].getName()}")
            replied.set()
            return
        subscribed.set()

    def on_message(c: paho.Client, u: Any, message: paho.MQTTMessage) -> None:
        correlation = getattr(message.properties, "CorrelationData", None)
        if message.topic == reply_topic and correlation == token.encode():
            reply.append(bytes(message.payload))
            replied.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    deadline = time.monotonic() + args.timeout
    try:
        client.connect(url.hostname, port, keepalive=max(5, round(args.timeout)))
    except OSError as exc:
        print(f"citygate cmd: cannot reach {args.broker}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    client.loop_start()
    try:
        if not subscribed.wait(max(0.0, deadline - time.monotonic())):
            if failure:
                print(f"citygate cmd: {failure[0]}", file=sys.stderr)
                return EXIT_FAILED
            print(f"citygate cmd: no connection within {args.timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = reply_topic
        props.CorrelationData = token.encode()
        payload = json.dumps(request, separators=(",", ":")).encode()
        client.publish(base, payload, qos=1, properties=props)
        if not replied.wait(max(0.0, deadline - time.monotonic())):
            print(f"citygate cmd: no reply within {args.timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        if failure:
            print(f"citygate cmd: {failure[0]}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        client.disconnect()
        client.loop_stop()
    try:
        document = json.loads(reply[0])
    except ValueError:
        print(f"citygate cmd: the reply is not JSON: {reply[0][:200]!r}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(document, indent=2))
    return EXIT_OK if isinstance(document, dict) and document.get("ok") is True else EXIT_FAILED
