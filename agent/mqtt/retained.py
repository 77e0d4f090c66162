"""The gateway's retained topics under an earlier topic prefix: cleared, not left behind.

A reload or a restart with another ``mqtt.topic_prefix`` moves the gateway's retained topics
(``P/G/status``, ``P/G/info``, ``P/G/D/status``) to the new prefix. Those under the old one
would stay on the broker for good: a gateway that looks ``offline`` (or ``online``) forever to
whoever still subscribes there. ``<data_dir>/retained.json`` records the topic base ``P/G`` and
the devices that have a retained status under it. When the agent starts under another base *of
the same gateway id*, the old topics become the record's clear list; the session empties each
(an empty retained message deletes it) and the list shrinks as the broker answers, so a cut or
a crash part-way goes on where it stopped. A refused clear (an ACL that no longer lets the
gateway write the old prefix) is logged once and given up: the operator can clear the topic by
hand. Another gateway id is left alone: a data_dir copied with an SD-card image must not wipe
the topics of the gateway it was copied from.

Home Assistant's retained topics (discovery, ``P/G/D/state``) have their own record,
agent/homeassistant.py.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from citygate.safefile import write_atomic

log = logging.getLogger(__name__)

RETAINED_FILE = "retained.json"
"""The record, in ``data_dir``."""
MAX_TOPICS = 10_000
"""At most this many devices (and topics to clear) are kept: a bound for a hostile file."""
MAX_FILE_BYTES = 4 * 1024 * 1024


def _valid_topic_name(text: object) -> bool:
    """A topic name one may publish to (no wildcard, no NUL, at most 65,535 UTF-8 bytes)."""
    return (
        isinstance(text, str)
        and 0 < len(text.encode("utf-8", "surrogatepass")) <= 65535
        and not set(text) & set("+#\0")
    )


class RetainedRecord:
    """What the gateway keeps retained under its topic base, and what is left to clear."""

    def __init__(self, data_dir: Path, topic_base: str, gateway_id: str) -> None:
        self._path = data_dir / RETAINED_FILE
        self._base = topic_base
        self._gateway_id = gateway_id
        self._devices: dict[str, None] = {}  # with a retained status under the base
        self._clear: dict[str, None] = {}  # topics to empty, in order
        self._saved: bytes | None = None
        # A topic of this gateway under any base: P/G/status, P/G/info, P/G/D/status.
        g = re.escape(gateway_id)
        self._own_topic = re.compile(rf".+/{g}/(?:status|info|[^/]+/status)")
        self._load()
        self._save()

    @property
    def to_clear(self) -> list[str]:
        """The topics still to empty, oldest first."""
        return list(self._clear)

    def _load(self) -> None:
        try:
            with self._path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s (%s); starting afresh", self._path, exc)
            return
        try:
            if len(raw) > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s is damaged (%s); starting afresh", self._path, exc)
            return
        if not isinstance(data, dict) or data.get("gateway") != self._gateway_id:
            return  # another gateway's record (a copied data_dir): none of our business
        base = data.get("base")
        devices = data.get("devices")
        clear = data.get("clear")
        ids = [d for d in devices if self._device_id(d)] if isinstance(devices, list) else []
        topics = [t for t in clear if self._ours(t)] if isinstance(clear, list) else []
        self._clear = dict.fromkeys(topics[:MAX_TOPICS])
        if not _valid_topic_name(base) or base == self._base:
            self._devices = dict.fromkeys(ids[:MAX_TOPICS])
            return
        assert isinstance(base, str)
        for topic in [f"{base}/status", f"{base}/info", *(f"{base}/{d}/status" for d in ids)]:
            if len(self._clear) < MAX_TOPICS and self._ours(topic):
                self._clear[topic] = None
        for device_id in ids:  # a base left and come back to: nothing of it to clear
            self._clear.pop(f"{self._base}/{device_id}/status", None)
        self._clear.pop(f"{self._base}/status", None)
        self._clear.pop(f"{self._base}/info", None)
        log.info(
            "mqtt.topic_prefix changed (%s → %s): clearing %d retained topics under the old one",
            base,
            self._base,
            len(self._clear),
        )

    @staticmethod
    def _device_id(text: object) -> bool:
        return _valid_topic_name(text) and "/" not in str(text)

    def _ours(self, topic: object) -> bool:
        return _valid_topic_name(topic) and self._own_topic.fullmatch(str(topic)) is not None

    def _save(self) -> None:
        document = {
            "gateway": self._gateway_id,
            "base": self._base,
            "devices": list(self._devices),
            "clear": list(self._clear),
        }
        data = json.dumps(document).encode()
        if data == self._saved:
            return
        try:
            write_atomic(self._path, data, durable=False)
        except OSError as exc:
            log.warning("cannot write %s: %s", self._path, exc)
            return
        self._saved = data

    def status_published(self, device_id: str) -> None:
        """``P/G/<device_id>/status`` was published (retained) under the current base."""
        if device_id not in self._devices and len(self._devices) < MAX_TOPICS:
            self._devices[device_id] = None
            self._save()

    def cleared(self, topic: str) -> None:
        """The broker answered the clear of ``topic`` (accepted or refused: not tried again)."""
        if topic in self._clear:
            del self._clear[topic]
            self._save()
